"""Tests for rules.lights: the CONTRACT §5 lights, warm-up, boundaries and changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.event_types import Billing, Event, Lifecycle, LifecycleType, Photo, Profile, ProfileDeleted, Usage
from rules.lights import (
    LIGHTS, Judgement, LightChange, Reason, change, evaluate, is_worsening, judged, steady_before_window,
)
from rules.ruleset import RuleSet, load_rule_set
from rules.localtime import day_start_ms
from rules.state import apply
from rules.subscriber import SubscriberState

TZ = ZoneInfo("Asia/Shanghai")
CMCC = load_rule_set("cmcc-2010")
SEED4 = load_rule_set("seed-004")
MSISDN = "13800000001"
OPEN = date(2026, 11, 30)
FIRST = OPEN - timedelta(days=40)  # the partition has seen the whole window
H = 3_600_000
DAY = 24 * H
NOW = day_start_ms(OPEN, TZ)  # a day-close evaluation carries local 00:00 of the opening day
PHOTO = Photo("2026-09", 15000, 7200)  # 150 CNY, 120 min


def watched(photo: Photo | None = PHOTO, rules: RuleSet = CMCC) -> SubscriberState:
    s = SubscriberState()
    feed(s, Profile(MSISDN, "zunyi", "gotone", photo=photo), rules=rules)
    return s


def feed(s: SubscriberState, *events: Event, rules: RuleSet = CMCC) -> None:
    for e in events:
        assert apply(s, e, open_day=OPEN, tz=TZ, rules=rules).outcome == "applied"


def usage(s: SubscriberState, fen: int, seconds: int, rules: RuleSet = CMCC, back: int = 10) -> None:
    """Add `fen` revenue and `seconds` outgoing voice on one day of the window."""
    ts = day_start_ms(OPEN - timedelta(days=back), TZ) + 12 * H
    feed(s, Usage(f"u-{ts}-{fen}-{seconds}-{len(s.seen)}", MSISDN, ts, "voice", "out", seconds, fen), rules=rules)


def life(s: SubscriberState, kind: LifecycleType, ts: int) -> None:
    feed(s, Lifecycle(f"l-{kind}-{ts}", MSISDN, ts, kind))


def judge(s: SubscriberState, rules: RuleSet = CMCC, at_ms: int = NOW, first_day: date | None = FIRST,
          open_day: date = OPEN) -> Judgement:
    j = evaluate(s, at_ms=at_ms, open_day=open_day, first_day=first_day, rules=rules)
    assert j is not None
    return j


def codes(j: Judgement) -> list[str]:
    return [r.code for r in j.reasons]


# --- who is judged -------------------------------------------------------------------------------


def test_never_photographed_subscriber_gets_no_judgement() -> None:
    nobody = SubscriberState()
    assert evaluate(nobody, at_ms=NOW, open_day=OPEN, first_day=FIRST, rules=CMCC) is None
    unwatched = watched(photo=None)
    usage(unwatched, 0, 0)
    assert unwatched.has_profile and unwatched.light is None
    assert evaluate(unwatched, at_ms=NOW, open_day=OPEN, first_day=FIRST, rules=CMCC) is None
    gone = watched()
    feed(gone, ProfileDeleted(MSISDN))
    assert evaluate(gone, at_ms=NOW, open_day=OPEN, first_day=FIRST, rules=CMCC) is None


def test_warm_up_keeps_thresholds_off_until_the_whole_window_is_seen() -> None:
    s = watched()  # no revenue and no minutes at all
    assert judge(s, first_day=None).light == "green"
    assert judge(s, first_day=OPEN - timedelta(days=29)).light == "green"
    assert not judged(OPEN, OPEN - timedelta(days=29), 30)
    assert judged(OPEN, OPEN - timedelta(days=30), 30)
    j = judge(s, first_day=OPEN - timedelta(days=30))
    assert (j.light, codes(j)) == ("red", ["arpu_below", "mou_below", "arpu_decline", "mou_decline"])


def test_warm_up_still_shows_black_and_port_out_red() -> None:
    s = watched()
    life(s, "port_out_request", NOW - H)
    assert (judge(s, first_day=None).light, codes(judge(s, first_day=None))) == ("red", ["port_out_request"])
    life(s, "deactivated", NOW - 1)
    assert judge(s, first_day=None) == Judgement("black", (Reason("churned", "deactivated"),), 0, 0)


# --- thresholds ------------------------------------------------------------------------------------


def test_healthy_subscriber_is_green() -> None:
    s = watched()
    usage(s, 12000, 6000)
    assert judge(s) == Judgement("green", (), 12000, 6000)


@pytest.mark.parametrize(
    ("fen", "seconds", "light", "reasons"),
    [
        (11999, 6000, "yellow", [Reason("arpu_below", 119.99, 120.0)]),
        (12000, 5999, "yellow", [Reason("mou_below", 99.98, 100.0)]),
        (11999, 5999, "red", [Reason("arpu_below", 119.99, 120.0), Reason("mou_below", 99.98, 100.0)]),
    ],
)
def test_one_broken_condition_is_yellow_both_are_red(fen: int, seconds: int, light: str,
                                                     reasons: list[Reason]) -> None:
    s = watched()
    usage(s, fen, seconds)
    j = judge(s)
    assert (j.light, list(j.reasons), j.arpu_fen, j.mou_seconds) == (light, reasons, fen, seconds)


@given(st.integers(0, 40000), st.integers(6000, 10**6))
def test_arpu_boundary_is_exact(fen: int, seconds: int) -> None:
    s = watched(Photo("2026-09", 0, 0))
    usage(s, fen, seconds)
    light = judge(s).light
    assert light == ("green" if fen >= 12000 else "yellow")  # 120.00 passes, 119.99 does not


@given(st.integers(0, 40000), st.integers(0, 10**6))
def test_seed_004_arpu_over_80_and_no_minutes_condition(fen: int, seconds: int) -> None:
    s = watched(Photo("2026-09", 0, 10**7), rules=SEED4)  # a huge minutes photo: minutes are not watched
    usage(s, fen, seconds, rules=SEED4)
    j = judge(s, rules=SEED4)
    assert j.light == ("green" if fen > 8000 else "yellow")  # 80.00 fails, 80.01 passes; never red
    assert "mou_below" not in codes(j) and "mou_decline" not in codes(j)


def test_seed_004_boundary_examples() -> None:
    for fen, light in ((8000, "yellow"), (8001, "green")):
        s = watched(rules=SEED4)
        usage(s, fen, 0, rules=SEED4)
        assert judge(s, rules=SEED4).light == light


def test_window_is_the_30_closed_days_before_the_open_day() -> None:
    today = watched()
    usage(today, 12000, 6000, back=0)  # the open day counts from the next close
    assert judge(today).light == "red"
    assert judge(today, open_day=OPEN + timedelta(days=1), at_ms=NOW + DAY).light == "green"
    oldest = watched()
    usage(oldest, 12000, 6000, back=30)  # the first day of the window leaves it at the next close
    assert judge(oldest).light == "green"
    assert judge(oldest, open_day=OPEN + timedelta(days=1), at_ms=NOW + DAY).light == "red"


# --- decline against the photo ---------------------------------------------------------------------


def test_decline_below_half_of_the_photo_is_yellow() -> None:
    s = watched(Photo("2026-09", 40000, 12000))  # 400 CNY, 200 min
    usage(s, 15000, 12000)  # 150 CNY: above 120 but below 200
    j = judge(s)
    assert (j.light, list(j.reasons)) == ("yellow", [Reason("arpu_decline", 150.0, 200.0)])
    s2 = watched(Photo("2026-09", 40000, 12000))
    usage(s2, 20000, 5999 + 1)  # exactly half of the photo is not below it; 100 min passes
    assert judge(s2).light == "green"
    s3 = watched(Photo("2026-09", 40000, 30000))  # 500 min photo
    usage(s3, 40000, 14999)
    assert list(judge(s3).reasons) == [Reason("mou_decline", 249.98, 250.0)]


def test_decline_off_when_ratio_is_null() -> None:
    s = watched(Photo("2026-09", 40000, 12000))
    usage(s, 15000, 12000)
    assert judge(s, rules=replace(CMCC, decline_ratio=None)).light == "green"


# --- lifecycle -----------------------------------------------------------------------------------


def test_port_out_request_is_red_until_30_days_or_cancel() -> None:
    s = watched()
    usage(s, 20000, 9000)
    t = NOW - 2 * DAY
    life(s, "port_out_request", t)
    j = judge(s, at_ms=NOW)
    assert (j.light, list(j.reasons)) == ("red", [Reason("port_out_request", 2, 30)])
    assert judge(s, at_ms=t + 30 * DAY - 1).light == "red"
    assert judge(s, at_ms=t + 30 * DAY).light == "green"  # lapsed after 30 days
    life(s, "port_out_cancelled", NOW - H)
    assert judge(s).light == "green"


def test_deactivated_is_black_and_reactivated_is_judged_again() -> None:
    s = watched()
    usage(s, 20000, 9000)
    life(s, "deactivated", NOW - 3 * H)
    j = judge(s)
    assert (j.light, j.reasons, j.arpu_fen) == ("black", (Reason("churned", "deactivated"),), 20000)
    life(s, "reactivated", NOW - 2 * H)
    assert judge(s).light == "green"
    life(s, "port_out_request", NOW - H)
    life(s, "ported_out", NOW - 1)
    assert judge(s) == Judgement("black", (Reason("churned", "ported_out"),), 20000, 9000)


# --- changes -------------------------------------------------------------------------------------


def test_change_only_when_the_light_differs() -> None:
    s = watched()
    usage(s, 20000, 9000)
    assert s.light == "green"
    assert change(s, judge(s), NOW) is None
    feed(s, Billing("adj", MSISDN, NOW - DAY, "adjustment", -15000, None))
    j = judge(s)
    c = change(s, j, NOW)
    assert c == LightChange("green", "yellow", NOW, j.reasons, j.arpu_fen, j.mou_seconds)
    assert (s.light, s.light_since_ms, s.reasons) == ("yellow", NOW, j.reasons)
    assert change(s, judge(s), NOW + DAY) is None
    assert s.light_since_ms == NOW  # unchanged light keeps its start


def test_unlit_watched_subscriber_turns_green_silently() -> None:
    s = watched()
    s.light = None
    usage(s, 20000, 9000)
    assert change(s, judge(s), NOW) is None
    assert s.light == "green"


def test_is_worsening_order() -> None:
    for i, a in enumerate(LIGHTS):
        for j, b in enumerate(LIGHTS):
            assert is_worsening(a, b) == (j > i)
    assert is_worsening(None, "yellow") and not is_worsening(None, "green")
    assert not is_worsening("red", None)
    assert LIGHTS == ("green", "yellow", "red", "black")


@given(
    st.lists(st.tuples(st.integers(0, 29), st.integers(0, 8000), st.integers(0, 4000)), max_size=8),
    st.lists(st.tuples(st.integers(0, 29), st.integers(0, 8000), st.integers(0, 4000)), min_size=1, max_size=8),
    st.sampled_from([CMCC, SEED4]),
    st.builds(Photo, st.just("2026-09"), st.integers(0, 60000), st.integers(0, 30000)),
)
def test_a_light_never_gets_worse_when_revenue_or_minutes_only_grow(
    base: list[tuple[int, int, int]], more: list[tuple[int, int, int]], rules: RuleSet, photo: Photo
) -> None:
    s = watched(photo, rules)
    for back, fen, seconds in base:
        usage(s, fen, seconds, rules, back + 1)
    before = judge(s, rules).light
    for back, fen, seconds in more:
        usage(s, fen, seconds, rules, back + 1)
    assert not is_worsening(before, judge(s, rules).light)


@settings(max_examples=300)
@given(light=st.sampled_from(["green", "green", "green", None, "yellow", "red"]), reasoned=st.booleans(),
       churned=st.sampled_from([None, None, "deactivated"]),
       port_out_back_days=st.one_of(st.none(), st.none(), st.integers(0, 40)),
       fen=st.integers(0, 50_000), first_back_days=st.none() | st.integers(0, 29))
def test_a_steady_subscriber_is_left_as_it_is_by_a_day_close_before_its_window_is_whole(
        light: str | None, reasoned: bool, churned: str | None, port_out_back_days: int | None, fen: int,
        first_back_days: int | None) -> None:
    s = watched()
    usage(s, fen, fen // 10)
    s.light = light  # type: ignore[assignment]
    s.reasons = (Reason("arpu_below", 1.0, 120.0),) if reasoned else ()
    s.churned = churned  # type: ignore[assignment]
    s.port_out_request_ms = None if port_out_back_days is None else NOW - port_out_back_days * DAY
    first_day = None if first_back_days is None else OPEN - timedelta(days=first_back_days)
    assert not judged(OPEN, first_day, CMCC.window_days)
    if steady_before_window(s):
        before = (s.light, s.reasons)
        assert change(s, judge(s, first_day=first_day), NOW) is None
        assert (s.light, s.reasons) == before
