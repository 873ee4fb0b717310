"""Tests for rules.state: day buckets, late events, duplicates, lifecycle, profile and serialisation."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.events import (
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
from rules.state import DEDUP_CLOSED_DAYS, DUPLICATE_MINUTES, Applied, Reason, SubscriberState, apply, day_start_ms, event_hash, local_day

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
    before = s.to_bytes()
    old = OPEN - timedelta(days=31)
    for event in (fee(old, 999), call(old, 50, 300), life("deactivated", at(old)), balance(at(old), 5)):
        assert run(s, event).outcome == "late_dropped"
    assert s.to_bytes() == before


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
    snapshot = s.to_bytes()
    assert run(s, e).outcome == "duplicate"
    later = Usage("cdr-1", MSISDN, e.ts_ms + DAY - 60_000, "voice", "out", 999, 999)
    assert run(s, later).outcome == "duplicate"
    assert s.to_bytes() == snapshot


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
    assert (r.outcome, r.lifecycle) == ("applied", "ported_out")
    assert s.port_out_request_ms is None and s.churned == "ported_out"


def test_deactivated_until_reactivated() -> None:
    s = SubscriberState()
    t = at(OPEN, 9)
    assert run(s, life("deactivated", t)).lifecycle == "deactivated"
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
    before = SubscriberState.from_bytes(s.to_bytes())
    for kind in ("complaint", "vas_trial_ending"):
        r = run(s, Lifecycle(f"e-{kind}", MSISDN, at(OPEN), kind, None, "music", date(2026, 11, 5)))
        assert (r.outcome, r.lifecycle, r.profile_changed) == ("applied", kind, False)
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
    r = run(s, profile(updated_at_ms=at(OPEN, 1)))
    assert r.profile_changed and s.has_profile
    assert (s.light, s.light_since_ms, s.region, s.brand) == ("green", at(OPEN, 1), "zunyi", "gotone")
    assert not run(s, profile(updated_at_ms=at(OPEN, 2))).profile_changed  # same content
    s.light = "yellow"
    assert run(s, profile(segment="valuable")).profile_changed
    assert s.light == "yellow"  # a profile update keeps the current light
    run(s, profile(photo=None))  # left the photographed base
    assert s.light is None and s.has_profile
    run(s, profile())
    run(s, fee(OPEN, 100))
    r = run(s, ProfileDeleted(MSISDN))
    assert r.profile_changed and not s.has_profile
    assert (s.light, s.photo, s.region, s.contract) == (None, None, None, None)
    assert s.window(OPEN + timedelta(days=1), 30) == (100, 0)  # events stay


def test_unprofiled_subscriber_has_no_light() -> None:
    s = SubscriberState()
    run(s, fee(OPEN, 100))
    assert s.light is None and not s.has_profile


def test_outcomes_are_applied_and_change_nothing() -> None:
    s = SubscriberState()
    run(s, profile())
    before = s.to_bytes()
    r = run(s, Outcome("task-1", MSISDN, at(OPEN), "sms", "delivered"))
    assert r == Applied("applied", None, None, None, False)
    assert s.to_bytes() == before


def test_mark_used() -> None:
    s = SubscriberState()
    assert s.mark_used("contract:2027-06-30:remaining_match")
    assert not s.mark_used("contract:2027-06-30:remaining_match")
    assert s.mark_used("birthday:2026")
    assert SubscriberState.from_bytes(s.to_bytes()).used == s.used


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
        s._remember(h, limit + minute)
    s.prune(open_day, TZ, 30)
    assert s._seen_pairs() == [(h, limit + m) for h, m in remembered if m > 0]  # in the order remembered
    assert not s.seen_off or min(s.seen_off) == 0  # offsets from the earliest kept


reason_values = st.one_of(st.none(), st.text(max_size=8), st.integers(-10**12, 10**12),
                          st.floats(allow_nan=False, allow_infinity=False))
maybe_ms = st.one_of(st.none(), st.integers(0, 4_102_444_800_000))


@st.composite
def states(draw: st.DrawFn) -> SubscriberState:
    s = SubscriberState()
    for e in draw(st.lists(usage_events(), max_size=15)):
        run(s, e)
    if draw(st.booleans()):
        contract = draw(st.one_of(st.none(), st.builds(
            Contract, st.dates(), st.integers(0, 10**9), st.integers(0, 10**9), st.one_of(st.none(), st.dates()))))
        photo = draw(st.one_of(st.none(), st.builds(Photo, st.just("2026-09"), st.integers(0, 10**7),
                                                    st.integers(0, 10**6))))
        run(s, profile(photo=photo, contract=contract, region=draw(st.text(min_size=1, max_size=10)),
                       segment=draw(st.one_of(st.none(), st.text(max_size=5))), prepaid=draw(st.booleans()),
                       birthday=draw(st.one_of(st.none(), st.just("02-29"))),
                       activated_on=draw(st.one_of(st.none(), st.dates()))))
        s.contract_spent_fen = draw(st.integers(-10**9, 10**9))
    s.light = draw(st.sampled_from([None, "green", "yellow", "red", "black"]))
    s.light_since_ms = draw(maybe_ms)
    s.churned = draw(st.sampled_from([None, "deactivated", "ported_out"]))
    s.churned_ms, s.port_out_request_ms, s.balance_ms = draw(maybe_ms), draw(maybe_ms), draw(maybe_ms)
    s.balance_fen = draw(st.one_of(st.none(), st.integers(-10**9, 10**9)))
    s.reasons = tuple(draw(st.lists(st.builds(Reason, st.text(min_size=1, max_size=16), reason_values,
                                              reason_values), max_size=4)))
    s.used = draw(st.sets(st.text(min_size=1, max_size=20), max_size=4))
    if draw(st.booleans()):  # the risk features' memory (format 3)
        ords = st.integers(0, 800_000)
        s.in_sec, s.in_ord, s.prev_fen, s.prev_sec, s.prev_ord, s.last_use_ord = (
            draw(st.integers(0, 10**9)), draw(ords), draw(st.integers(-10**9, 10**9)), draw(st.integers(0, 10**9)),
            draw(ords), draw(ords))
        s.topup_ord, s.topup_fen, s.topup_avg_fen = draw(ords), draw(st.integers(0, 10**9)), draw(
            st.integers(0, 10**9))
        s.complaint_ords = tuple(sorted(draw(st.lists(ords, max_size=8))))
        s.port_requests = draw(st.integers(0, 1000))
    if draw(st.booleans()):  # scored at a day close
        s.risk_bp = draw(st.integers(0, 10_000))
    return s


@given(states())
def test_state_round_trips_through_bytes(s: SubscriberState) -> None:
    assert SubscriberState.from_bytes(s.to_bytes()) == s


@pytest.mark.parametrize("data", [b"", b"\x09", b"\x01\x00", b"\x01\x1f" + b"\x00" * 40])
def test_garbage_is_not_a_state(data: bytes) -> None:
    with pytest.raises(ValueError):
        SubscriberState.from_bytes(data)


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(ValueError):
        SubscriberState.from_bytes(SubscriberState().to_bytes() + b"\x00")


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10**6))
def test_typical_subscriber_fits_in_1_kib(seed: int) -> None:
    """Photo, contract, ~10 events a day over 40 days of a running partition."""
    rnd = random.Random(seed)
    s = SubscriberState()
    start = OPEN - timedelta(days=40)
    run(s, profile(contract=Contract(date(2027, 6, 30), 300000, 120000, date(2025, 7, 1)),
                   updated_at_ms=at(start), region="zunyi", brand="gotone", segment="valuable"), open_day=start)
    s.light, s.reasons = "yellow", (Reason("arpu_below", 95.5, 120.0),)
    for i in range(41):
        day = start + timedelta(days=i)
        for k in range(10):
            hour = rnd.uniform(0, 23.9)
            ts = at(day, hour)
            eid = f"{rnd.getrandbits(128):032x}"  # realistic ids, as long as a UUID
            if k < 5:
                event: Event = Usage(eid, MSISDN, ts, "voice", rnd.choice(["out", "in"]), rnd.randint(10, 900),
                                     rnd.randint(0, 200))
            elif k < 8:
                event = Usage(eid, MSISDN, ts, "data", None, 0, rnd.randint(0, 300))
            else:
                event = Usage(eid, MSISDN, ts, "sms", "out", 0, 10)
            run(s, event, open_day=day)
        run(s, Billing(f"{rnd.getrandbits(128):032x}", MSISDN, at(day, 23.95), "balance", None, 8000), open_day=day)
    s.mark_used("contract:2027-06-30:remaining_match")
    s.mark_used("birthday:2026")
    s.risk_bp = 8765  # scored at the last close
    # Rare events, older than the dedup memory: a top-up, two complaints.
    run(s, Billing(f"{rnd.getrandbits(128):032x}", MSISDN, at(start, 9), "topup", 10000, 18000), open_day=start)
    for back in (5, 20):
        run(s, life("complaint", at(OPEN - timedelta(days=back))))
    data = s.to_bytes()
    assert s.last_use_ord and s.in_sec and s.prev_ord and s.topup_ord and len(s.complaint_ords) == 2
    assert data[0] == 3 and len(data) <= 1024, len(data)
    assert SubscriberState.from_bytes(data) == s


# A state written by the version-2 writer of 2026-12-01 (dicts of lists packed with struct): the
# changelog of a running deployment holds such records, and they must load and write back unchanged.
V2_STATE = bytes.fromhex(
    "02a1015b372c227a756e7969222c22676f746f6e65222c2268696768222c2230372d3134222c3733353539392c5b2232"
    "3032362d3038222c31353030302c393030305d2c5b3734303136322c3330303030302c313030302c3733393433335d2c"
    "383831302c3830302c313739303030303030353030302c6e756c6c2c6e756c6c2c313739303030303030303030302c5b"
    "5d2c5b2262697274686461793a32303236225d5d0e00a5942d00030405060708090a0b0c0d0e0f0a000000000000003c"
    "000000dc0000000e010000680100006c0200003a020000840300000c0300009c040000de030000380400000203000000"
    "0000003c000000ba00000006010000cf000000d80000002e010000ed0000004a01000002010000660100001701000020"
    "010000c50000002900f5f09c0e0000a4014803ec0490063408d8097c0b200dc40e68100c12b0135415f8169c18401ae4"
    "1b881d2c1fd02074221824bc2560270429a82a4c2cf02d942f3831dc3280342436c8376c39103bb43c583efc3f0000e2"
    "1a4de1cededbbfd56a4e3f684d9992aeda853274429b7a1f85c968a926e80353e131fa9c8f32cad14dd54ef4c12ce835"
    "9ea4e0139acf9c00d37d4dd5a219e027c67ea6d8aab3ce921ad12a3564266aae01c9e540dcf72c50fd32d964d5a0d9c2"
    "623a01081c27e372a423921eeb840f0efe292edf667d8b8a6ad8552c073c2610b5f1068985609620c074b55683176d9f"
    "90e28933a2280fe674b6e9138232de8797c12555c90f1b90675c3ecb06d9f4eded7466fef0448159cb86f0c78610fa99"
    "f12b53a8d88765841e5c8f675d72e636b531f205070987c9931415f18f06a2325901dd082279593b8eeb39e17de426ca"
    "e58c592f5b2696511c8680432152c2bbd1fbc5477d023bc6bc24ff7e1a4b33a0861f3e5e02932774ab14dbad45087c4b"
    "9764901e156a15ca364a825b87c26ff287ea36e3531f30861f19c447263db3dafc1e327e9a2e99"
)


def test_event_hashes_are_those_the_changelog_holds() -> None:
    # The dedup memory in the changelog holds these hashes (blake2b, 8 bytes, big-endian): another
    # function would miss every resend of an event remembered before an upgrade.
    assert [event_hash(e) for e in ("cdr-1", "u000000000000", "\u00e9-\u4e2d")] == [
        822703564735571947, 14194524589566253485, 1387603592955714128]


def test_a_state_written_by_the_earlier_writer_loads_and_is_written_back_byte_for_byte() -> None:
    s = SubscriberState.from_bytes(V2_STATE)
    assert (s.region, s.birthday, s.balance_fen, s.used) == ("zunyi", "07-14", 800, {"birthday:2026"})
    assert len(s.days) == 14 and len(s.seen) == 41
    assert s.to_bytes() == V2_STATE
    assert SubscriberState.from_bytes(s.to_bytes()) == s


# The same state as written by format 1, the writer of the first landed version (varints): a
# deployment of that version holds such records in its changelog.
V1_STATE = bytes.fromhex(
    "0107067a756e796907676f746f6e6505686967680630372d3134dfe5590108323032362d3038b0ea01d08c0101c2962d"
    "c0cf24d00fd3a15ad48901c10c91fe83c59868000081b083c59868000ea5942d14000300780178f40201b8038c04019c"
    "049e0301d005b00301d809dc0401f408da0301880e940501980c840401b812cc0501bc0fae0401f010c00401840c8a03"
    "29eae1b91c00c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806"
    "c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806c806992e9a7e321efcdabfdbdece"
    "e14d1ae292994d683f4e6ad57a9b42743285daae03e826a968c9851fca328f9cfa31e153e82cc1f44ed54dd19ccf9a13"
    "e0a49e35e019a2d54d7dd300ceb3aad8a67ec6276a2664352ad11a922cf7dc40e5c901aed9a0d564d932fd50e3271c08"
    "013a62c20f84eb1e9223a4728b7d66df2e29fe0e263c072c55d86a8a9660858906f1b5106d178356b574c0200f28a233"
    "89e2909fde328213e9b674e61b0fc95525c19787f4d906cb3e5c67908144f0fe6674ededfa1086c7f086cb596587d8a8"
    "532bf199e6725d678f5c1e8487090705f231b536a2068ff1151493c959792208dd01593226e47de139eb8e3b96265b2f"
    "598ce5cac252214380861c513b027d47c5fbd1bb334b1a7eff24bcc62793025e3e1f86a07c0845addb14ab74156a151e"
    "9064974b6fc2875b824a36ca301f53e336ea87f2b33d2647c4191f86010e62697274686461793a32303236"
)


def test_a_state_of_format_1_loads_as_it_was_and_is_written_back_in_format_2() -> None:
    s = SubscriberState.from_bytes(V1_STATE)
    assert s == SubscriberState.from_bytes(V2_STATE)
    assert SubscriberState.from_bytes(s.to_bytes()) == s and s.to_bytes()[0] == 2


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


def test_a_state_of_format_3_round_trips_and_an_empty_memory_is_written_as_format_2() -> None:
    s = SubscriberState.from_bytes(V2_STATE)
    run(s, call(date(2026, 8, 20), 3, direction="in"), open_day=None)
    data = s.to_bytes()
    assert data[0] == 3 and SubscriberState.from_bytes(data) == s
    assert SubscriberState().to_bytes()[0] == 2


def test_the_risk_score_is_kept_compactly_and_older_records_read_as_never_scored() -> None:
    s = SubscriberState.from_bytes(V2_STATE)
    assert s.risk_bp is None  # written before there was a score
    assert s.to_bytes() == V2_STATE
    s.risk_bp = 3712
    scored = s.to_bytes()
    assert SubscriberState.from_bytes(scored) == s and SubscriberState.from_bytes(scored).risk_bp == 3712
    assert len(scored) - len(V2_STATE) <= 6  # in the flags: "9" became "475145"
    run(s, call(date(2026, 8, 20), 3, direction="in"), open_day=None)  # format 3 keeps it the same way
    assert s.to_bytes()[0] == 3 and SubscriberState.from_bytes(s.to_bytes()).risk_bp == 3712
    only = SubscriberState()
    only.risk_bp = 0
    assert SubscriberState.from_bytes(only.to_bytes()).risk_bp == 0
    # Leaving the watched base forgets it: only the watched base is scored.
    run(s, profile(photo=None))
    assert s.risk_bp is None and s.light is None


def test_day_figures_take_16_bits_until_a_day_needs_more_and_then_32_or_64() -> None:
    s = SubscriberState()
    day = OPEN - timedelta(days=3)
    run(s, call(day, 30, 20_000), open_day=day)
    small = s.to_bytes()
    assert s.day_fen.typecode == "h" and SubscriberState.from_bytes(small) == s
    run(s, call(day, 30, 20_000, eid="more"), open_day=day)  # 400 CNY in a day: past 16 bits
    assert s.day_fen.typecode == "i" and s.days[day.toordinal()] == [40_000, 3_600]
    assert SubscriberState.from_bytes(s.to_bytes()) == s
    run(s, fee(day, 3 * 10**9, eid="huge"), open_day=day)  # 30M CNY: past 32 bits
    assert s.day_fen.typecode == "q" and SubscriberState.from_bytes(s.to_bytes()) == s
