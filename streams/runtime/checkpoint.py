"""The commit protocol: a batch's outputs acknowledged first, then its state, each partition's clock last.

Every `commit_interval_s`, and before partitions are let go or the worker stops, each subscriber
touched since the last write goes once to the changelog partition of its partition
(co-partitioned with the source), and only at the end of a batch whose outputs (dead letters,
light changes, tasks) the broker acknowledged, with its parked records and the input offsets it
reflects. Each partition's clock record, written last, holds the offsets applied: the reader
resumes from them. A crash in the middle of a write leaves subscribers ahead of their clock,
which recovery recognises by their offsets (streams.runtime.store: what they reflect is not
applied again), and the outputs produced since the loaded state are read back from their topics
(streams.runtime.outputs), so a crash at any point re-processes records without counting an
event twice or sending an output again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import date

import orjson

from rules.schedule import Parked, PartitionClock
from streams.faults import Faults
from streams.runtime.changelog import (
    HELD, OFFSETS_HEADER, OWN_OFFSETS_HEADER, WRITE_HEADER, ChangelogWriter, Headers, reflects,
)
from streams.runtime.store import Offsets, Store, clock_key, encode_clock, encode_record
from sinks.outbox import Outbox

# Touched subscribers that make the state go to the changelog before its interval is up: each
# write holds up the batches behind it (about 6 us a subscriber: at most about 0.6 s).
MAX_DIRTY = 100_000


class Checkpoint:
    """Commit batches (outputs, then tasks, then acknowledgements) and write the state when due."""

    def __init__(self, store: Store, outbox: Outbox, changelog: ChangelogWriter | None, faults: Faults,
                 interval_s: float, output_ends: dict[str, int] | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.changelog = changelog
        self.faults = faults
        self.interval_s = interval_s
        # Per output partition ("topic/partition"), one past the last offset the broker
        # acknowledged to this process (streams.app.Sender keeps it), recorded with each clock.
        self.output_ends: dict[str, int] = {} if output_ends is None else output_ends
        # Whether every batch so far ended with its outputs acknowledged: only then may the state
        # in memory go to the changelog (a failed batch's partial effects never do).
        self.settled = True
        self.written_at = time.monotonic()
        # The last state write's wait for the broker, going on behind the batches that follow it.
        self._flushing: asyncio.Future[None] | None = None
        # The number of the last state write (every changelog record carries its write's number).
        self.write_no = 0

    def loaded(self, last_write: int) -> None:
        """Start over after a load: past every write the changelog holds, a rolled-back one's too
        (a number is never reused); nothing unacknowledged is left."""
        self.write_no = max([self.write_no, last_write, *(clock.write for clock in self.store.clocks.values())])
        self.outbox.acks.clear()
        self.settled = True

    def output_starts(self) -> dict[str, int]:
        """Per output partition, where the outputs of the owned partitions' loaded state may start."""
        starts: dict[str, int] = {}
        for clock in self.store.clocks.values():
            for where, offset in clock.out.items():
                starts[where] = min(offset, starts.get(where, offset))
        return starts

    async def commit(self, decide: Callable[[], Awaitable[None]]) -> None:
        """Send the batch's outputs, `decide` its outcomes and tasks and wait for the broker; write
        the state when it is due."""
        await self.outbox.enqueue()
        await decide()
        await self.outbox.enqueue()  # the dead letters of tasks that failed
        acks = self.outbox.acks
        if acks:
            await asyncio.gather(*acks)
            acks.clear()
            self.faults.reached("outputs_acked")
        self.settled = True
        await self.write_if_due()

    async def write_if_due(self) -> None:
        """Write the state when its interval is up or many subscribers wait (also between batches)."""
        store = self.store
        if not store.dirty and not store.dirty_clocks:
            return
        if store.dirty_count() >= MAX_DIRTY or time.monotonic() - self.written_at >= self.interval_s:
            await self.write_state(wait=False)

    async def write_state(self, *, wait: bool = True) -> bool:
        """Write every subscriber touched since the last write, once, and the partitions' clocks.

        Each partition's clock record goes after its states, to the same changelog partition,
        so a recovered clock never claims offsets whose states were not written. Returns False,
        writing nothing, when the last batch did not end (failed or given up): its effects in
        memory are partial, and the inputs are read again from the state already written.

        With `wait` False the batches go on while the broker acknowledges the records (two
        round trips, the second for the seal), and the next write waits for that first. Before
        partitions are let go and at the stop the write waits.
        """
        # One write in flight at a time: a write's seal stays the last batch of its partitions.
        await self.flushed()
        if not self.settled:
            return False
        self.written_at = time.monotonic()
        store, changelog = self.store, self.changelog
        half = (store.dirty_count() + len(store.dirty_clocks)) // 2
        written = 0
        self.write_no += 1
        number = str(self.write_no).encode()
        states = store.states
        faults = self.faults
        crash = faults.point if faults.point in ("state_half_written", "state_record", "state_before_clock") else None
        for p in set(store.dirty) | store.dirty_clocks:
            clock = store.clocks.get(p)
            done = {} if clock is None else reflects(clock.offsets, _ordinal(clock.open_day))
            header: Headers = [(WRITE_HEADER, number), (OFFSETS_HEADER, orjson.dumps(done))]
            parked = _by_key(clock.parked) if clock is not None and clock.parked else None
            own = _own(store.ahead.get(p), clock, done, number)
            for key in store.dirty.get(p, ()):
                value = states.encoded(key)  # None: a tombstone, unless parked records stay
                if parked:
                    value = encode_record(value, parked.get(key, ()))
                if changelog is not None:
                    changelog.write(p, key, value, own(key) if own else header)
                    written += 1
                    if crash is not None and crash != "state_before_clock":
                        self._crash_point(crash, crash == "state_record" or written == half)
            if changelog is not None and clock is not None:
                if crash == "state_before_clock":
                    self._crash_point(crash, True)
                # Every output so far is acknowledged (the batches' commits waited for them): what
                # the records after this state produce lands past these offsets.
                clock.out.update(self.output_ends)
                clock.write = self.write_no
                # Last, and always: the clock record closes this write of the partition (records
                # after a partition's last clock record are recognised at recovery).
                changelog.write(p, clock_key(p), encode_clock(clock), header)
            store.caught_up(p)
        store.dirty.clear()
        store.dirty_clocks.clear()
        if changelog is not None:
            self._flushing = asyncio.ensure_future(changelog.flush())
            if wait:
                await self.flushed()
        return True

    def _crash_point(self, point: str, here: bool) -> None:
        """Die (fault injection) with the records written so far with the broker."""
        if here and self.changelog is not None:
            self.changelog.producer.flush(30.0)
            self.faults.reached(point)

    async def flushed(self) -> None:
        """Return once the broker has every state written so far (raises what the wait raised)."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            await flushing
            self.faults.reached("state_written")


def _by_key(parked: list[Parked]) -> dict[bytes, list[Parked]]:
    """The parked records of a partition by subscriber (each goes in its subscriber's record)."""
    out: dict[bytes, list[Parked]] = {}
    for entry in parked:
        out.setdefault(entry[2].encode(), []).append(entry)
    return out


def _own(ahead: dict[bytes, Offsets] | None, clock: PartitionClock | None, done: Offsets,
         number: bytes) -> Callable[[bytes], Headers] | None:
    """The headers of the subscribers whose offsets are not their partition's: ahead of it (after
    a crash) or holding its suspect usage record; None when there are none."""
    suspect = clock.suspect if clock is not None else None
    if not ahead and suspect is None:
        return None
    held = None if suspect is None else suspect[2].encode()
    plain: Headers = [(WRITE_HEADER, number), (OFFSETS_HEADER, orjson.dumps(done))]

    def headers(key: bytes) -> Headers:
        mine = None if ahead is None else ahead.get(key)
        if mine is None and key != held:
            return plain
        offsets = dict(done)
        for topic, offset in (mine or {}).items():
            if topic != HELD and offset > offsets.get(topic, -1):
                offsets[topic] = offset
        if key == held and suspect is not None:
            offsets[HELD] = int(suspect[5].rsplit("/", 1)[1])
        return [(WRITE_HEADER, number), (OWN_OFFSETS_HEADER, orjson.dumps(offsets))]

    return headers


def _ordinal(day: date | None) -> int | None:
    return None if day is None else day.toordinal()
