"""Tests for rules.schedule: the partition clock and what event time makes due (CONTRACT §5, §7), no broker."""

from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from rules.events import BILLING, LIFECYCLE, PROFILES, USAGE
from rules.schedule import (
    DUE, HELD, MOVED, CloseDay, Morning, Mornings, Parked, PartitionClock, Release, Step, due, is_ahead, start_days,
)
from rules.state import day_start_ms

TZ = ZoneInfo("Asia/Shanghai")
H = 3_600_000
D1 = date(2026, 7, 1)
WINDOW = 30


def ms(day: date, hour: float = 0) -> int:
    return day_start_ms(day, TZ) + int(hour * H)


def parked(ts_ms: int, key: str = "13900000001", topic: str = LIFECYCLE, waited: int = 0) -> Parked:
    return (ts_ms, -1, key, "{}", topic, f"{topic}/0/{ts_ms}", waited)


def opened(first: date, today: date | None = None) -> PartitionClock:
    clock = PartitionClock()
    clock.observe(USAGE, ms(first, 10))
    start_days(clock, today or first, TZ)
    return clock


def test_the_first_judged_day_is_that_of_the_first_usage_or_billing_event_not_of_a_profile() -> None:
    # CONTRACT §5: the first day of a judged window is on or after the local date of the first
    # event processed; a profile's time can be years old and does not count.
    clock = PartitionClock()
    clock.observe(PROFILES, ms(date(2020, 1, 1)))
    assert clock.first_ts is None
    clock.observe(BILLING, ms(D1, 23.5))
    clock.observe(USAGE, ms(D1 - timedelta(days=3)))  # read later, older: the first read counts
    assert start_days(clock, D1 + timedelta(days=2), TZ)
    assert clock.first_day == D1 and clock.open_day == D1
    assert not start_days(clock, D1 + timedelta(days=2), TZ)  # once only


def test_a_day_close_carries_local_midnight_of_the_day_that_opens() -> None:
    clock = opened(D1)
    steps = list(due(clock, ms(D1 + timedelta(days=2), 0.5), TZ, WINDOW))
    assert steps == [CloseDay(D1 + timedelta(days=1), ms(D1 + timedelta(days=1)), False),
                     CloseDay(D1 + timedelta(days=2), ms(D1 + timedelta(days=2)), False)]
    assert clock.open_day == D1 + timedelta(days=2)
    assert list(due(clock, ms(D1 + timedelta(days=2), 23), TZ, WINDOW)) == []  # nothing twice


def test_the_window_is_judged_once_it_lies_wholly_after_the_first_day() -> None:
    clock = opened(D1)
    closes = [s for s in due(clock, ms(D1 + timedelta(days=WINDOW + 1)), TZ, WINDOW) if isinstance(s, CloseDay)]
    assert [c.whole for c in closes] == [False] * (WINDOW - 1) + [True, True]
    assert closes[WINDOW - 1].day == D1 + timedelta(days=WINDOW)


def test_records_parked_before_a_midnight_come_before_its_close_and_those_at_or_after_it_after() -> None:
    clock = opened(D1)
    before, at, after = parked(ms(D1, 23.9)), parked(ms(D1 + timedelta(days=1))), parked(ms(D1 + timedelta(days=1), 2))
    for entry in (after, before, at):
        clock.park(entry)
    steps = list(due(clock, ms(D1 + timedelta(days=1), 1), TZ, WINDOW))
    assert steps == [Release(before), CloseDay(D1 + timedelta(days=1), ms(D1 + timedelta(days=1)), False),
                     Release(at)]
    assert clock.parked == [after]


def test_a_step_sees_what_the_one_before_did() -> None:
    # A profile released takes the billing events that waited for it off the clock: they are not
    # released a second time.
    clock = opened(D1)
    profile = parked(ms(D1, 5), topic=PROFILES)
    waiting = parked(ms(D1, 6), topic=BILLING, waited=1)
    clock.park(profile)
    clock.park(waiting)
    released = []
    for step in due(clock, ms(D1, 12), TZ, WINDOW):
        assert isinstance(step, Release)
        released.append(step.entry)
        if step.entry[4] == PROFILES:
            assert clock.take_waiting(step.entry[2]) == [waiting]
    assert released == [profile]


def test_each_0800_passed_comes_where_event_time_passes_it() -> None:
    clock = opened(D1)
    mornings = Mornings()
    # After a load the latest 08:00 already passed comes again (its release is then a no-op).
    assert list(due(clock, ms(D1, 9), TZ, WINDOW, mornings)) == [Morning(D1)]
    lifecycle = parked(ms(D1 + timedelta(days=1), 9))
    clock.park(lifecycle)
    steps = list(due(clock, ms(D1 + timedelta(days=1), 12), TZ, WINDOW, mornings))
    assert steps == [CloseDay(D1 + timedelta(days=1), ms(D1 + timedelta(days=1)), False),
                     Morning(D1 + timedelta(days=1)), Release(lifecycle)]


@given(st.lists(st.integers(min_value=0, max_value=10 * 24 * 60), min_size=1, max_size=30),
       st.integers(min_value=0, max_value=12 * 24 * 60))
def test_due_releases_in_time_order_and_closes_each_day_once(minutes: list[int], until_minutes: int) -> None:
    clock = opened(D1)
    for m in minutes:
        clock.park(parked(ms(D1) + m * 60_000, key=str(m)))
    until = ms(D1) + until_minutes * 60_000
    steps: list[Step] = list(due(clock, until, TZ, WINDOW))
    times = [s.entry[0] if isinstance(s, Release) else s.at_ms for s in steps if not isinstance(s, Morning)]
    assert times == sorted(times)
    closes = [s.day for s in steps if isinstance(s, CloseDay)]
    assert closes == [D1 + timedelta(days=n) for n in range(1, len(closes) + 1)]
    assert all(e[0] > until for e in clock.parked)


def _settle(clock: PartitionClock, pending: dict[str, bool], record_ms: int | None = None,
            now_ms: int = 10 ** 13) -> int:
    return clock.settle(pending, record_ms, now_ms, TZ, None, False)


def test_the_watermark_is_the_slowest_topic_with_records_left_and_never_goes_back() -> None:
    clock = PartitionClock()
    clock.observe(USAGE, ms(D1, 10))
    clock.observe(LIFECYCLE, ms(D1, 8))
    assert _settle(clock, {USAGE: True, LIFECYCLE: True, BILLING: True}) == 0  # billing: none seen yet
    assert clock.watermark_ms is None
    assert _settle(clock, {USAGE: True, LIFECYCLE: True, BILLING: False}) == MOVED | DUE
    assert clock.watermark_ms == ms(D1, 8)
    clock.observe(PROFILES, ms(D1, 20))  # profiles never move it, and hold it while some are left to read
    assert not _settle(clock, {USAGE: False, LIFECYCLE: False, PROFILES: True}) & MOVED
    assert clock.watermark_ms == ms(D1, 8)
    assert _settle(clock, {USAGE: False, LIFECYCLE: False, PROFILES: False}) & MOVED
    assert clock.watermark_ms == ms(D1, 10)
    clock.observe(USAGE, ms(D1, 9))
    _settle(clock, {USAGE: True})
    assert clock.watermark_ms == ms(D1, 10)


def test_a_fresh_record_holds_the_watermark_short_of_midnight() -> None:
    clock = opened(D1)
    clock.observe(USAGE, ms(D1 + timedelta(days=1), 1))
    now = ms(D1 + timedelta(days=1), 1)
    assert _settle(clock, {USAGE: False}, record_ms=now - 500, now_ms=now) == HELD | MOVED
    assert clock.watermark_ms == ms(D1 + timedelta(days=1)) - 1
    assert _settle(clock, {USAGE: False}, record_ms=now - 5000, now_ms=now) == MOVED | DUE  # aged: it closes


def test_ordered_topics_wait_for_the_watermark_and_a_first_load_of_profiles_does_not() -> None:
    clock = PartitionClock()
    assert is_ahead(clock, LIFECYCLE, ms(D1))
    assert not is_ahead(clock, PROFILES, ms(D1))  # no day open yet: the state the data starts from
    assert not is_ahead(clock, USAGE, ms(D1))
    clock = opened(D1)
    clock.watermark_ms = ms(D1, 12)
    assert is_ahead(clock, PROFILES, ms(D1, 13)) and not is_ahead(clock, BILLING, ms(D1, 12))
