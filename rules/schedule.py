"""The event-time schedule of one partition (CONTRACT §5, §7): its clock, and what falls due.

Pure: no I/O and no wall clock of its own (the times are arguments). The runtime
(streams.runtime.processor) feeds a `PartitionClock` the event times it reads, asks `due` what the
watermark (or, on an idle live partition, the wall clock) has passed, and carries the steps out
one by one: closing a day (its light evaluations, then the opening day's triggers), applying a
parked record, passing an 08:00 of the capacity queues.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from rules import capacity
from rules.events import BILLING, LIFECYCLE, PROFILES, USAGE
from rules.lights import judged
from rules.state import day_start_ms, local_day
from rules.localtime import HOUR_MS

# The topics whose event times say where a partition's data starts (a profile can be years old).
SERIES: Final = (USAGE, BILLING)
# Topics whose records are applied in event-time order with the day closes (parked while ahead
# of the watermark). Usage is not: its only consequence is its day's bucket, whatever the order.
ORDERED: Final = frozenset((LIFECYCLE, BILLING, PROFILES))
# How long (event time) a billing event of a subscriber without a profile waits for the profile.
PROFILE_WAIT_MS: Final = 24 * HOUR_MS
# The most records one subscriber may have parked (its changelog record holds them): one more goes
# to the dead letters (`too_many_parked`), as a flood of one subscriber's events would.
MAX_PARKED: Final = 256
# A usage record more than this ahead of its partition's latest usage time is an outlier until
# the next usage record confirms that time moved (it is then applied) or not (too_far_ahead).
OUTLIER_MS: Final = 24 * HOUR_MS
# A day does not close on records younger than this (Kafka time against the wall clock): the
# other topics' high watermarks come with their own fetches, and one not fetched since a record
# was produced before these would pass for caught up (a replay's burst closes weeks in a second).
FRESH_MS: Final = 2000

# What `PartitionClock.settle` did: the watermark moved; it was held short of a midnight for a
# fresh record; something waits for it.
MOVED: Final = 1
HELD: Final = 2
DUE: Final = 4

# A parked record: (due time, Kafka time or -1, key, value, topic, source, waited). `waited` is 1
# for a billing event that waits for its subscriber's profile: at its due time it is applied
# whether or not the profile came.
Parked = tuple[int, int, str, str, str, str, int]


class PartitionClock:
    """Event-time bookkeeping of one partition (CONTRACT §5, §7), persisted in the changelog."""

    __slots__ = ("max_ts", "offsets", "watermark_ms", "first_ts", "first_day", "open_day", "parked", "held", "out",
                 "suspect", "write")

    def __init__(self) -> None:
        self.max_ts: dict[str, int] = {}
        # Last offset applied per input topic. Written to the changelog after the partition's
        # states in the same batch and changelog partition, so on recovery it is never ahead of
        # them: a re-delivered event at or below it was applied already and is skipped. The
        # per-subscriber dedup memory only spans a few days of event time, and in a replay burst
        # the seconds between two offset commits can span weeks.
        self.offsets: dict[str, int] = {}
        self.watermark_ms: int | None = None
        # The time of the first usage or billing event read: the partition's data starts on its
        # day, however the topics were interleaved (CONTRACT §5: the first day of a judged window
        # is on or after the local date of the first event processed). A profile's time can be
        # years old, and the profiles can be read before any usage exists: they do not count.
        self.first_ts: int | None = None
        self.first_day: date | None = None
        self.open_day: date | None = None
        # Lifecycle, billing and profile records ahead of the watermark, applied in event-time
        # order once the watermark passes them, before the day closes that follow them: however
        # the topics were interleaved in the reading (a replay reads the small lifecycle topic
        # far ahead of usage; a restart or rebalance catches up unevenly), the same decisions
        # follow. Also billing events waiting up to PROFILE_WAIT_MS for their subscriber's profile.
        self.parked: list[Parked] = []
        # The number of parked records per key (MAX_PARKED bounds it: see `full`).
        self.held: dict[str, int] = {}
        # Per output partition ("topic/partition"), an offset at or below which nothing this
        # partition's records produce after this state lands: on recovery the outputs from there
        # on are read back, so that re-processing sends none of them again.
        self.out: dict[str, int] = {}
        # A usage record far ahead of the partition's latest usage time, held until the next
        # usage record says whether time moved (OUTLIER_MS); at most one.
        self.suspect: Parked | None = None
        # The number of the state write this record closes (streams.runtime.recovery rolls back a
        # write whose clock record never came); the next write of any partition takes a higher one.
        self.write = 0

    def observe(self, topic: str, ts_ms: int) -> bool:
        """Take in an event time of `topic`; say whether the topic's latest time moved."""
        if self.first_ts is None and topic in SERIES:
            self.first_ts = ts_ms
        if ts_ms > self.max_ts.get(topic, -1):
            self.max_ts[topic] = ts_ms
            return True
        return False

    def settle(self, pending: dict[str, bool], record_ms: int | None, now_ms: int, tz: ZoneInfo,
               mornings: Mornings | None, capacity: bool) -> int:
        """Recompute the watermark; return what happened as bits: MOVED, HELD, DUE.

        The watermark is the minimum over the topics that still have records to read (`pending`).
        A caught-up topic does not hold it back; a topic with records to read but none seen yet
        holds it where it is. Profiles are state, not a series (their times can be years old):
        they never move it, and while the profiles topic has records to read it holds the
        watermark where it is. The watermark never goes back.

        HELD: the record just read (Kafka time `record_ms`) is younger than FRESH_MS against
        `now_ms`, and the watermark is held short of the next midnight: every topic's fetch must
        bring what was produced before it, or a topic not fetched since would pass for caught up.
        DUE: something waits for the watermark (`due`): days to close, parked records, an 08:00
        of the capacity queues (`capacity`; `mornings`: the partition's next one, None: unknown).
        One method: it runs for nearly every usage record.
        """
        before = self.watermark_ms
        lows: list[int] = []
        stuck = False
        for topic, has_more in pending.items():
            if not has_more:
                continue
            # A profile still to read holds it where it is: a subscriber is judged, and an event
            # of theirs decided, with the profile the history gives them by then (a restart can
            # leave a partition's last profiles unread while its usage runs ahead).
            ts = self.max_ts.get(topic) if topic != PROFILES else None
            if ts is None:
                stuck = True
                break
            lows.append(ts)
        if not stuck:
            if lows:
                candidate: int | None = min(lows)
            else:
                # All caught up: the series' latest time. A sparse topic (lifecycle, outcomes) alone
                # never carries the watermark past the data.
                seen = [ts for topic, ts in self.max_ts.items() if topic in SERIES] or [
                    ts for topic, ts in self.max_ts.items() if topic != PROFILES]
                candidate = max(seen) if seen else None
            if candidate is not None and (before is None or candidate > before):
                self.watermark_ms = candidate
        watermark = self.watermark_ms
        flags = 0
        open_day = self.open_day
        if (record_ms is not None and watermark is not None and open_day is not None
                and record_ms > now_ms - FRESH_MS and local_day(watermark, tz) > open_day):
            cap = day_start_ms(open_day + timedelta(days=1), tz) - 1
            if watermark > cap:
                self.watermark_ms = watermark = cap if before is None else max(cap, before)
                flags = HELD
        if watermark != before:
            flags |= MOVED
        if watermark is None:
            return flags
        # Usually none of it: the watermark moves with nearly every usage event, a day once a day.
        if (open_day is None or (self.first_day is None and self.first_ts is not None)
                or local_day(watermark, tz) > open_day or (self.parked and self.parked[0][0] <= watermark)
                or (capacity and (mornings is None or mornings.upcoming_ms is None
                                  or watermark >= mornings.upcoming_ms))):
            flags |= DUE
        return flags

    def park(self, entry: Parked) -> None:
        """Keep `entry` until the watermark passes its due time (parked records stay in time order)."""
        bisect.insort(self.parked, entry)
        key = entry[2]
        self.held[key] = self.held.get(key, 0) + 1

    def full(self, key: str) -> bool:
        """Say whether `key` holds MAX_PARKED parked records: one more is not parked."""
        return self.held.get(key, 0) >= MAX_PARKED

    def unpark(self) -> Parked:
        """Remove and return the parked record due first."""
        entry = self.parked.pop(0)
        self._unheld(entry[2], 1)
        return entry

    def take_waiting(self, key: str) -> list[Parked]:
        """Remove and return the billing events of `key` that waited for its profile, oldest first."""
        waiting = [e for e in self.parked if e[6] and e[2] == key]
        if waiting:
            self.parked = [e for e in self.parked if not (e[6] and e[2] == key)]
            self._unheld(key, len(waiting))
        return sorted(waiting, key=lambda e: e[0] - PROFILE_WAIT_MS)

    def restore(self, entries: list[Parked]) -> None:
        """Hold `entries` (read back from the changelog) with what is parked already."""
        self.parked.extend(entries)
        self.parked.sort()
        for entry in entries:
            self.held[entry[2]] = self.held.get(entry[2], 0) + 1

    def _unheld(self, key: str, n: int) -> None:
        left = self.held.get(key, 0) - n
        if left > 0:
            self.held[key] = left
        else:
            self.held.pop(key, None)


def is_ahead(clock: PartitionClock, topic: str, ts_ms: int | None) -> bool:
    """Say whether a record of `topic` at `ts_ms` waits (parked) for the watermark to pass it.

    Profiles read before any day opened (a deployment's first load) are the state the data
    starts from: applied at once.
    """
    return ts_ms is not None and topic in ORDERED and (
        clock.watermark_ms is None or ts_ms > clock.watermark_ms) and (topic != PROFILES or clock.open_day is not None)


class Mornings:
    """The next 08:00 (ms) of the capacity queues a partition's event time passes; None: not yet."""

    __slots__ = ("upcoming_ms",)

    def __init__(self) -> None:
        self.upcoming_ms: int | None = None


@dataclass(frozen=True, slots=True)
class CloseDay:
    """Close the day before `day`: its light evaluations (at `at_ms`, local 00:00 of `day`), then
    `day`'s openings (contract stages, birthdays). `whole`: the window before `day` is judged."""

    day: date
    at_ms: int
    whole: bool


@dataclass(frozen=True, slots=True)
class Release:
    """Apply a parked record now (taken off the clock)."""

    entry: Parked


@dataclass(frozen=True, slots=True)
class Morning:
    """Pass `day`'s 08:00: the capacity queues release what the day may call."""

    day: date


Step = CloseDay | Release | Morning


def start_days(clock: PartitionClock, today: date, tz: ZoneInfo) -> bool:
    """Fix the partition's first day and first open day if not yet done; say whether the clock changed.

    The first day is that of the first usage or billing event, whatever held the watermark before
    it (profiles can be years old): no window is judged before it (rules.lights.judged). Days open
    from it, or from `today` when that is earlier: in a replay burst the first usage event read
    may be ahead of the watermark, and the days from there on close now, one by one.
    """
    changed = False
    if clock.first_day is None and clock.first_ts is not None:
        clock.first_day = local_day(clock.first_ts, tz)
        changed = True
    if clock.open_day is None:
        clock.open_day = today if clock.first_day is None else min(today, clock.first_day)
        changed = True
    return changed


def due(clock: PartitionClock, until_ms: int, tz: ZoneInfo, window_days: int,
        mornings: Mornings | None = None) -> Iterator[Step]:
    """Yield, in order, what event time reaching `until_ms` makes due, moving the clock as it goes.

    Each midnight passed: the records parked before it, then the close (the closing day's
    evaluations come before the opening day's triggers); then the records due up to `until_ms`.
    With `mornings` (capacity queues), each 08:00 passed comes where event time passes it. The
    clock is read afresh at each step: what a step does (a profile releasing the billing events
    that waited for it) is seen by the next.
    """
    today = local_day(until_ms, tz)
    assert clock.open_day is not None, "start_days first"
    while clock.open_day < today:
        day = clock.open_day + timedelta(days=1)
        at_ms = day_start_ms(day, tz)
        yield from _unpark(clock, at_ms, tz, mornings, before=True)
        clock.open_day = day
        yield CloseDay(day, at_ms, judged(day, clock.first_day, window_days))
    yield from _unpark(clock, until_ms, tz, mornings, before=False)


def _unpark(clock: PartitionClock, until_ms: int, tz: ZoneInfo, mornings: Mornings | None, *,
            before: bool) -> Iterator[Step]:
    while clock.parked and (clock.parked[0][0] < until_ms if before else clock.parked[0][0] <= until_ms):
        parked = clock.parked
        if mornings is not None:
            yield from _mornings(mornings, parked[0][0], tz, inclusive=True)
        yield Release(clock.unpark())
    if mornings is not None:
        yield from _mornings(mornings, until_ms, tz, inclusive=not before)


def _mornings(mornings: Mornings, until_ms: int, tz: ZoneInfo, *, inclusive: bool) -> Iterator[Morning]:
    """The 08:00s event time passes up to `until_ms`. The first time (after a load) the latest one
    already passed comes again: its release is done (a no-op), and what it gave is delivered if a
    crash interrupted that."""
    upcoming = mornings.upcoming_ms
    if upcoming is None:
        day = capacity.last_release_day(until_ms, tz)
        mornings.upcoming_ms = capacity.release_ms(day + timedelta(days=1), tz)
        yield Morning(day)
        return
    while until_ms > upcoming or (inclusive and until_ms == upcoming):
        day = local_day(upcoming, tz)
        upcoming = capacity.release_ms(day + timedelta(days=1), tz)
        mornings.upcoming_ms = upcoming
        yield Morning(day)
