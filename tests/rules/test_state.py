"""Tests for rules.state: day buckets, late events, duplicates, lifecycle, profile, the risk memory."""

from __future__ import annotations

import copy
import random
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.event_types import (
    Billing,
    Contract,
    Event,
    Lifecycle,
    LifecycleType,
    Outcome,
    Photo,
    Profile,
    ProfileDeleted,
    Usage,
)
from rules.ruleset import load_rule_set
from rules.localtime import day_start_ms, local_day
from rules.state import Applied, apply
from rules.subscriber import DEDUP_CLOSED_DAYS, DUPLICATE_MINUTES, SubscriberState, event_hash

TZ = ZoneInfo("Asia/Shanghai")
RULES = load_rule_set("cmcc-2010")
MSISDN = "13800000001"
OPEN = date(2026, 10, 31)  # the partition's open local day in most tests
H = 3_600_000
DAY = 24 * H
PHOTO = Photo("2026-09", 40000, 12000)


def at(day: date, hour: float = 12) -> int:
    """Return local `hour` o'clock of `day` as epoch ms."""
    return day_start_ms(day, TZ) + int(hour * H)


def call(day: date, minutes: float, charge_fen: int = 0, *, eid: str | None = None, hour: float = 12,
         direction: Literal["out", "in"] = "out") -> Usage:
    ts = at(day, hour)
    return Usage(eid or f"v-{ts}-{minutes}-{charge_fen}", MSISDN, ts, "voice", direction, int(minutes * 60), charge_fen)


def fee(day: date, fen: int, *, eid: str | None = None, kind: str = "fee", hour: float = 12) -> Billing:
    ts = at(day, hour)
    return Billing(eid or f"b-{ts}-{fen}", MSISDN, ts, kind, fen, None)  # type: ignore[arg-type]


def balance(ts: int, fen: int, eid: str | None = None) -> Billing:
    return Billing(eid or f"bal-{ts}", MSISDN, ts, "balance", None, fen)


def life(kind: LifecycleType, ts: int, contract: Contract | None = None) -> Lifecycle:
    return Lifecycle(f"l-{kind}-{ts}", MSISDN, ts, kind, contract)


def profile(photo: Photo | None = PHOTO, contract: Contract | None = None,
            updated_at_ms: int | None = None, **kw: object) -> Profile:
    fields: dict[str, object] = dict(region="zunyi", brand="gotone", segment="high", activated_on=date(2015, 3, 1),
                                     birthday="07-14", prepaid=False)
    fields.update(kw)
    return Profile(MSISDN, contract=contract, photo=photo, updated_at_ms=updated_at_ms,
                   **fields)  # type: ignore[arg-type]


def run(state: SubscriberState, event: Event, open_day: date | None = OPEN) -> Applied:
    return apply(state, event, open_day=open_day, tz=TZ, rules=RULES)


# --- window figures ------------------------------------------------------------------------------


def test_revenue_is_charges_fees_and_adjustments_and_mou_is_outgoing_voice() -> None:
    s = SubscriberState()
    d = OPEN - timedelta(days=1)
    run(s, call(d, 10, 150))                      # 10 min out, 1.50 CNY
    run(s, call(d, 7, 80, direction="in"))        # incoming: revenue, no MOU
    run(s, Usage("s1", MSISDN, at(d), "sms", "out", 0, 10))
    run(s, Usage("d1", MSISDN, at(d), "data", None, 0, 500))
    run(s, fee(d, 5000))
    run(s, fee(d, -700, kind="adjustment"))
    run(s, Billing("t1", MSISDN, at(d), "topup", 10000, 12000))  # cash, not revenue
    assert s.window(OPEN, 30) == (150 + 80 + 10 + 500 + 5000 - 700, 600)
    assert s.balance_fen == 12000


def test_window_is_the_last_complete_days_before_the_open_day() -> None:
    s = SubscriberState()
    for back in range(0, 31):  # the open day itself and 30 closed days
        run(s, fee(OPEN - timedelta(days=back), 100 + back))
    fen, _ = s.window(OPEN, 30)
    assert fen == sum(100 + back for back in range(1, 31))  # the open day is not in the window
    assert s.window(OPEN + timedelta(days=1), 30)[0] == sum(100 + back for back in range(0, 30))


def test_local_day_is_the_operator_day() -> None:
    # 23:30 UTC on Oct 30 is 07:30 on Oct 31 in Shanghai.
    ts = int(datetime(2026, 10, 30, 23, 30, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
    assert local_day(ts, TZ) == date(2026, 10, 31)
    s = SubscriberState()
    run(s, Billing("b", MSISDN, ts, "fee", 100, None))
    assert s.window(date(2026, 10, 31), 30) == (0, 0)
    assert s.window(date(2026, 11, 1), 30) == (100, 0)


# --- late events ---------------------------------------------------------------------------------


def test_late_event_inside_the_window_goes_to_its_closed_day() -> None:
    s = SubscriberState()
    first = OPEN - timedelta(days=30)  # the oldest day of the current window
    assert run(s, fee(first, 1234)).outcome == "applied"
    assert run(s, fee(OPEN - timedelta(days=5), 66)).outcome == "applied"
    assert s.window(OPEN, 30) == (1300, 0)
    # From the next close it has left the window with its day.
    assert s.window(OPEN + timedelta(days=1), 30) == (66, 0)


def test_event_older_than_the_window_is_late_dropped_and_changes_nothing() -> None:
    s = SubscriberState()
    run(s, profile(contract=Contract(date(2027, 6, 30), 300000, 1000)))
    before = copy.deepcopy(s)
    old = OPEN - timedelta(days=31)
    for event in (fee(old, 999), call(old, 50, 300), life("deactivated", at(old)), balance(at(old), 5)):
        assert run(s, event).outcome == "late_dropped"
    assert s == before


def test_nothing_is_late_before_the_partition_has_an_open_day() -> None:
    s = SubscriberState()
    assert run(s, fee(date(2020, 1, 1), 5), open_day=None).outcome == "applied"
    assert s.window(date(2020, 1, 2), 30) == (5, 0)


def test_old_buckets_are_pruned() -> None:
    s = SubscriberState()
    for back in reversed(range(0, 60)):
        run(s, fee(OPEN - timedelta(days=back), 1), open_day=OPEN - timedelta(days=back))
    assert min(s.days) == (OPEN - timedelta(days=30)).toordinal()
    assert len(s.days) == 31


# --- duplicates ----------------------------------------------------------------------------------


def test_duplicate_same_id_within_24h_is_ignored() -> None:
    s = SubscriberState()
    e = call(OPEN, 5, 100, eid="cdr-1")
    assert run(s, e).outcome == "applied"
    snapshot = copy.deepcopy(s)
    assert run(s, e).outcome == "duplicate"
    later = Usage("cdr-1", MSISDN, e.ts_ms + DAY - 60_000, "voice", "out", 999, 999)
    assert run(s, later).outcome == "duplicate"
    assert s == snapshot


def test_same_id_24h_apart_is_a_new_event() -> None:
    s = SubscriberState()
    run(s, fee(OPEN - timedelta(days=1), 100, eid="monthly"))
    assert run(s, fee(OPEN, 100, eid="monthly")).outcome == "applied"
    assert run(s, fee(OPEN, 100, eid="monthly", hour=13)).outcome == "duplicate"
    assert run(s, fee(OPEN - timedelta(days=1), 100, eid="monthly", hour=11)).outcome == "duplicate"
    assert s.window(OPEN + timedelta(days=1), 30) == (200, 0)


def test_duplicate_check_comes_before_anything_else() -> None:
    s = SubscriberState()
    run(s, balance(at(OPEN), 5000, eid="x"))
    assert run(s, balance(at(OPEN), 1, eid="x")) == Applied("duplicate", 5000, 5000)
    assert s.balance_fen == 5000


def test_dedup_memory_covers_the_open_day_and_recent_closed_days() -> None:
    s = SubscriberState()
    oldest = OPEN - timedelta(days=DEDUP_CLOSED_DAYS)
    events = [fee(oldest, 1, eid="old", hour=0.5), fee(OPEN, 1, eid="new", hour=23)]
    for e in events:
        run(s, e)
    # ten days of traffic later the memory holds only what can still match: one id a day of the
    # open day, the recent closed days and the day before them (within 24 h of the oldest)
    for i in range(1, 11):
        run(s, fee(OPEN + timedelta(days=i), 1), open_day=OPEN + timedelta(days=i))
    assert sum(len(m) for m in s.seen.values()) == DEDUP_CLOSED_DAYS + 2
    assert event_hash("old") not in s.seen and event_hash("new") not in s.seen
    s2 = SubscriberState()
    for e in events:
        run(s2, e)
    run(s2, fee(OPEN, 1), open_day=OPEN)
    assert [run(s2, e).outcome for e in events] == ["duplicate", "duplicate"]


# --- lifecycle -----------------------------------------------------------------------------------


def test_port_out_request_is_open_until_30_days() -> None:
    s = SubscriberState()
    t = at(OPEN, 9)
    run(s, life("port_out_request", t))
    assert s.port_out_open(t, 30)
    assert s.port_out_open(t + 30 * DAY - 1, 30)
    assert not s.port_out_open(t + 30 * DAY, 30)


def test_port_out_request_closed_by_cancel_or_ported_out() -> None:
    s = SubscriberState()
    t = at(OPEN, 9)
    run(s, life("port_out_request", t))
    run(s, life("port_out_cancelled", t - H))  # an older cancel belongs to an earlier request
    assert s.port_out_open(t + H, 30)
    run(s, life("port_out_cancelled", t + H))
    assert not s.port_out_open(t + 2 * H, 30)
    run(s, life("port_out_request", t + 3 * H))
    r = run(s, life("ported_out", t + 4 * H))
    assert r.outcome == "applied"
    assert s.port_out_request_ms is None and s.churned == "ported_out"


def test_deactivated_until_reactivated() -> None:
    s = SubscriberState()
    t = at(OPEN, 9)
    assert run(s, life("deactivated", t)).outcome == "applied"
    assert s.churned == "deactivated"
    run(s, life("reactivated", t - H))  # stale: an older event cannot undo a newer status
    assert s.churned == "deactivated"
    run(s, life("reactivated", t + H))
    assert s.churned is None


def test_contract_spend_is_profile_spent_plus_revenue_of_the_days_after_it_was_written() -> None:
    s = SubscriberState()
    day1, day2, day3 = OPEN + timedelta(days=1), OPEN + timedelta(days=2), OPEN + timedelta(days=3)
    run(s, fee(OPEN, 500))  # the profile's `spent` covers its own day so far
    run(s, profile(contract=Contract(date(2027, 6, 30), 300000, 120000), updated_at_ms=at(OPEN, 14)))
    run(s, fee(OPEN, 300, hour=20))  # the profile's day: not counted again
    run(s, fee(day1, 700))
    run(s, fee(day1, -200, kind="adjustment"))
    assert s.contract_spend(day1) == 120000
    assert s.contract_spend(day2) == 120500
    # A contract signed at local midnight counts its own day.
    run(s, life("contract_signed", day_start_ms(day2, TZ), Contract(date(2028, 6, 30), 500000, 0)))
    run(s, call(day2, 3, 90))
    assert s.contract is not None and s.contract.ends_on == date(2028, 6, 30)
    assert (s.contract_spend(day2), s.contract_spend(day3)) == (0, 90)


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(6)), st.integers(0, 40))
def test_contract_spend_does_not_depend_on_the_order_of_reading(order: list[int], days_later: int) -> None:
    """Issue 13: a profile read after some of its subscriber's usage, or before, gives one spend."""
    base = OPEN - timedelta(days=5)
    events: list[Event] = [
        profile(contract=Contract(date(2027, 6, 30), 300000, 1000), updated_at_ms=day_start_ms(base, TZ)),
        fee(base, 100), call(base + timedelta(days=1), 2, 40), fee(base + timedelta(days=2), 250),
        call(base - timedelta(days=1), 2, 999), fee(base + timedelta(days=3), -50, kind="adjustment"),
    ]
    s = SubscriberState()
    for i in order:
        run(s, events[i], open_day=base - timedelta(days=2))
    later = base + timedelta(days=4 + days_later)
    s.prune(later, TZ, RULES.window_days)  # days leaving the window stay in the spend
    assert s.contract_spend(later) == 1000 + 100 + 40 + 250 - 50


def test_other_lifecycle_events_are_signals_only() -> None:
    s = SubscriberState()
    run(s, profile())
    before = copy.deepcopy(s)
    for kind in ("complaint", "vas_trial_ending"):
        r = run(s, Lifecycle(f"e-{kind}", MSISDN, at(OPEN), kind, None, "music", date(2026, 11, 5)))
        assert r.outcome == "applied"
    # Equal but for the event ids remembered and the complaint's day (a risk feature).
    assert s.seen and s.seen != before.seen
    assert s.complaint_ords == (OPEN.toordinal(),)
    s.forget_seen()
    before.forget_seen()
    s.complaint_ords = ()
    assert s == before


# --- balance ---------------------------------------------------------------------------------------


def test_balance_signals() -> None:
    s = SubscriberState()
    first = run(s, balance(at(OPEN, 8), 900))
    assert (first.balance_before_fen, first.balance_after_fen) == (None, 900)
    assert not first.balance_crossed_below(1000)  # an unknown previous balance is not a crossing
    up = run(s, Billing("t", MSISDN, at(OPEN, 9), "topup", 5000, 5900))
    assert (up.balance_before_fen, up.balance_after_fen) == (900, 5900)
    down = run(s, balance(at(OPEN, 10), 999))
    assert down.balance_crossed_below(1000)
    assert not run(s, balance(at(OPEN, 11), 500)).balance_crossed_below(1000)
    stale = run(s, balance(at(OPEN, 7), 80000))  # an older reading does not overwrite a newer one
    assert (stale.outcome, s.balance_fen) == ("applied", 500)


# --- profile ---------------------------------------------------------------------------------------


def test_photographed_profile_starts_green_and_deleted_profile_clears() -> None:
    s = SubscriberState()
    assert run(s, profile(updated_at_ms=at(OPEN, 1))).outcome == "applied" and s.has_profile
    assert (s.light, s.light_since_ms, s.region, s.brand) == ("green", at(OPEN, 1), "zunyi", "gotone")
    s.light = "yellow"
    run(s, profile(segment="valuable"))
    assert s.segment == "valuable"
    assert s.light == "yellow"  # a profile update keeps the current light
    run(s, profile(photo=None))  # left the photographed base
    assert s.light is None and s.has_profile
    run(s, profile())
    run(s, fee(OPEN, 100))
    assert run(s, ProfileDeleted(MSISDN)).outcome == "applied" and not s.has_profile
    assert (s.light, s.photo, s.region, s.contract) == (None, None, None, None)
    assert s.window(OPEN + timedelta(days=1), 30) == (100, 0)  # events stay


def test_unprofiled_subscriber_has_no_light() -> None:
    s = SubscriberState()
    run(s, fee(OPEN, 100))
    assert s.light is None and not s.has_profile


def test_outcomes_are_applied_and_change_nothing() -> None:
    s = SubscriberState()
    run(s, profile())
    before = copy.deepcopy(s)
    r = run(s, Outcome("task-1", MSISDN, at(OPEN), "sms", "delivered"))
    assert r == Applied("applied", None, None)
    assert s == before


def test_mark_used() -> None:
    s = SubscriberState()
    assert s.mark_used("contract:2027-06-30:remaining_match")
    assert not s.mark_used("contract:2027-06-30:remaining_match")
    assert s.mark_used("birthday:2026")


# --- properties ------------------------------------------------------------------------------------

DAYS_BACK = st.integers(min_value=0, max_value=29)


@st.composite
def usage_events(draw: st.DrawFn) -> Usage | Billing:
    back = draw(DAYS_BACK)
    hour = draw(st.floats(min_value=0, max_value=23.99))
    ts = at(OPEN - timedelta(days=back), hour)
    eid = draw(st.text(alphabet="abcdef0123456789", min_size=4, max_size=12))
    kind = draw(st.sampled_from(["voice", "sms", "data", "fee", "adjustment", "topup", "balance"]))
    if kind in ("voice", "sms", "data"):
        direction = None if kind == "data" else draw(st.sampled_from(["out", "in"]))
        seconds = draw(st.integers(0, 7200)) if kind == "voice" else 0
        return Usage(eid, MSISDN, ts, kind, direction, seconds, draw(st.integers(0, 5000)))  # type: ignore[arg-type]
    amount = draw(st.integers(-5000 if kind == "adjustment" else 1, 20000))
    bal = draw(st.integers(0, 100000)) if kind in ("topup", "balance") else None
    return Billing(eid, MSISDN, ts, kind, None if kind == "balance" else amount, bal)  # type: ignore[arg-type]


def with_contract() -> SubscriberState:
    s = SubscriberState()
    run(s, profile(contract=Contract(date(2027, 6, 30), 300000, 1000)))
    return s


@given(st.lists(usage_events(), max_size=30, unique_by=lambda e: e.event_id), st.randoms())
def test_order_of_events_inside_the_window_does_not_change_the_figures(events: list[Usage | Billing],
                                                                      rnd: random.Random) -> None:
    a, b = with_contract(), with_contract()
    for e in events:
        run(a, e)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    for e in shuffled:
        run(b, e)
    assert a.window(OPEN, 30) == b.window(OPEN, 30)
    assert a.window(OPEN + timedelta(days=1), 30) == b.window(OPEN + timedelta(days=1), 30)
    assert a.contract_spent_fen == b.contract_spent_fen
    assert a.days == b.days


@given(st.lists(usage_events(), max_size=20), st.integers(0, DEDUP_CLOSED_DAYS))
def test_applying_an_event_twice_equals_applying_it_once(events: list[Usage | Billing], back: int) -> None:
    # Resends are recognised for the open day and DEDUP_CLOSED_DAYS closed days before it.
    recent = [e for e in events if local_day(e.ts_ms, TZ) >= OPEN - timedelta(days=back)]
    once, twice = with_contract(), with_contract()
    for e in recent:
        run(once, e)
        run(twice, e)
        assert run(twice, e).outcome == "duplicate"
    assert once == twice


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(-300, 300) | st.integers(-20_000, 20_000)),
                min_size=1, max_size=12), st.integers(-8, 8))
def test_the_dedup_prune_keeps_exactly_the_entries_that_can_still_match(
        remembered: list[tuple[int, int]], days: int) -> None:
    # Minutes given around the newest that can match none to come (the prune's limit).
    open_day = OPEN + timedelta(days=days)
    limit = day_start_ms(open_day - timedelta(days=DEDUP_CLOSED_DAYS), TZ) // 60_000 - DUPLICATE_MINUTES
    s = SubscriberState()
    for h, minute in remembered:
        s.remember(h, limit + minute)
    s.prune(open_day, TZ, 30)
    assert s._seen_pairs() == [(h, limit + m) for h, m in remembered if m > 0]  # in the order remembered
    assert not s.seen_off or min(s.seen_off) == 0  # offsets from the earliest kept


def test_event_hashes_are_those_the_changelog_holds() -> None:
    # The dedup memory in the changelog holds these hashes (blake2b, 8 bytes, big-endian): another
    # function would miss every resend of an event remembered before an upgrade.
    assert [event_hash(e) for e in ("cdr-1", "u000000000000", "\u00e9-\u4e2d")] == [
        822703564735571947, 14194524589566253485, 1387603592955714128]


@settings(max_examples=500)
@given(ts_ms=st.integers(0, 4_102_444_800_000), zone=st.sampled_from([
    "Asia/Shanghai", "America/New_York", "Europe/London", "Asia/Kathmandu", "Australia/Lord_Howe",
    "America/St_Johns", "Pacific/Chatham", "Africa/Monrovia"]))
def test_the_remembered_local_day_is_the_calendar_s(ts_ms: int, zone: str) -> None:
    tz = ZoneInfo(zone)
    expected = datetime.fromtimestamp(ts_ms / 1000, tz).date()
    # The second look-up is answered from what the first remembered.
    assert local_day(ts_ms, tz) == expected == local_day(ts_ms, tz)
    # So is the rest of its quarter hour, on both sides of a midnight or an offset change inside it.
    start = ts_ms - ts_ms % 900_000
    for t in (start, start + 899_999):
        assert local_day(t, tz) == datetime.fromtimestamp(t / 1000, tz).date()


# --- the risk features' memory (format 3) ------------------------------------------------------------


def test_incoming_minutes_and_the_last_usage_day_are_remembered() -> None:
    s = SubscriberState()
    run(s, call(OPEN - timedelta(days=3), 10, direction="in"))
    run(s, call(OPEN - timedelta(days=3), 5, direction="in"))
    run(s, Usage("d-1", MSISDN, at(OPEN - timedelta(days=1)), "data", None, 0, 0))  # free data still is usage
    assert (s.in_sec, s.in_ord) == (900, (OPEN - timedelta(days=3)).toordinal())
    assert s.last_use_ord == (OPEN - timedelta(days=1)).toordinal()
    assert s.window(OPEN, 30) == (0, 0)  # incoming minutes are not MOU


def test_days_leaving_the_window_make_the_previous_window() -> None:
    s = SubscriberState()
    for back in range(60):  # 60 days of 1 CNY and 1 minute
        run(s, call(OPEN - timedelta(days=60 - back), 1, 100), open_day=OPEN - timedelta(days=59 - back))
    assert s.window(OPEN, 30) == (3000, 1800)
    # The 30 days before the window, decayed with a mean life of 30 days: about 30 days' worth less
    # the decay of the earliest ones, never more than the 30 days.
    assert 1200 < s.prev_fen < 3000 and 720 < s.prev_sec < 1800
    assert s.prev_ord == (OPEN - timedelta(days=31)).toordinal()


def test_topups_complaints_and_port_out_requests_are_remembered() -> None:
    s = SubscriberState()
    for i, fen in enumerate((5000, 5000, 2000)):
        run(s, Billing(f"t{i}", MSISDN, at(OPEN - timedelta(days=20 - 5 * i)), "topup", fen, None))
    assert (s.topup_fen, s.topup_avg_fen, s.topup_ord) == (2000, 5000, (OPEN - timedelta(days=10)).toordinal())
    run(s, Billing("t-late", MSISDN, at(OPEN - timedelta(days=25)), "topup", 1000, None))  # older: earlier ones
    assert (s.topup_fen, s.topup_avg_fen) == (2000, 3800)
    for back in (100, 50, 3):
        run(s, life("complaint", at(OPEN - timedelta(days=back))), open_day=None)
    assert s.complaint_ords == tuple((OPEN - timedelta(days=b)).toordinal() for b in (50, 3))  # 90 days kept
    run(s, life("port_out_request", at(OPEN)))
    run(s, life("port_out_request", at(OPEN)))  # a resend
    assert s.port_requests == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(739_000, 739_040), st.integers(0, 3600)), max_size=60))
def test_usage_remembered_ahead_is_one_sum_a_day_in_day_order(usage: list[tuple[int, int]]) -> None:
    s = SubscriberState()
    want: dict[int, int] = {}
    for day, seconds in usage:
        s.remember_ahead(day, seconds)
        want[day] = want.get(day, 0) + seconds
    assert s.use_ahead == tuple(sorted(want.items()))
