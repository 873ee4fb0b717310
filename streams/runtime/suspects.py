"""Usage records far ahead of their partition's latest usage time, held until the next one says why.

One wrong timestamp must not close weeks of days in a catch-up, and a real gap in the data must
not lose its first record: the record after it says which it was (rules.schedule.OUTLIER_MS).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from faust.types import TP

from rules.events import USAGE, Usage, decode
from rules.schedule import OUTLIER_MS, Parked, PartitionClock
from streams.runtime.ports import InputRecord

if TYPE_CHECKING:
    from streams.runtime.processor import Processor

# How long (wall clock) a suspected usage record waits for the next one before it is judged
# against the wall clock: accepted within OUTLIER_MS of it (live data after a gap), else rejected.
SUSPECT_WAIT_S = 60.0


class Suspects:
    """The partitions holding a suspected usage record (PartitionClock.suspect), and since when."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.since: dict[int, float] = {}  # partition -> time.monotonic()

    def loaded(self) -> None:
        """Start the wait of the suspects the loaded clocks hold."""
        self.since = {p: time.monotonic() for p, clock in self.processor.store.clocks.items()
                      if clock.suspect is not None}

    async def check(self, p: int, clock: PartitionClock, tp: TP, msg: InputRecord, ts_ms: int) -> bool:
        """Hold a usage record far ahead of the partition's latest usage time, or judge the one
        held by this next one; say whether the record `msg` goes on to be applied now."""
        held = clock.suspect
        latest = clock.max_ts.get(USAGE, ts_ms)
        if held is not None:
            clock.suspect = None
            self.since.pop(p, None)
            self.processor.store.touch(p, held[2].encode())  # its record holds it no more
            if ts_ms > latest + OUTLIER_MS:
                await self._release(p, clock, tp, held)  # time moved: it was the data's
            else:
                self.processor.handoff.too_far(held)
            latest = clock.max_ts.get(USAGE, ts_ms)
        if ts_ms > latest + OUTLIER_MS:
            assert msg.key is not None and msg.value is not None
            kafka_ms = None if msg.timestamp is None else int(msg.timestamp * 1000)
            clock.suspect = (ts_ms, kafka_ms or -1, msg.key.decode(), msg.value.decode(), USAGE,
                             f"{msg.topic}/{msg.partition}/{msg.offset}", 0)
            # Its subscriber's record says it is held, not applied (streams.runtime.changelog.HELD).
            self.processor.store.touch(p, msg.key)
            self.since[p] = time.monotonic()
            return False
        return True

    async def judge(self, now_ms: int) -> None:
        """Judge usage records held for SUSPECT_WAIT_S with no usage record after them: by the wall clock."""
        processor = self.processor
        for p, since in list(self.since.items()):
            clock = processor.store.clocks.get(p)
            if clock is None or clock.suspect is None:
                self.since.pop(p, None)
                continue
            if time.monotonic() - since < SUSPECT_WAIT_S:
                continue
            held, clock.suspect = clock.suspect, None
            del self.since[p]
            processor.store.dirty_clocks.add(p)
            processor.store.touch(p, held[2].encode())
            if abs(held[0] - now_ms) <= OUTLIER_MS:
                tp = TP(processor.settings.topic(USAGE), p)
                processor.progress.refresh(p, clock)
                await self._release(p, clock, tp, held)  # live data after a gap
            else:
                processor.handoff.too_far(held)

    async def _release(self, p: int, clock: PartitionClock, tp: TP, held: Parked) -> None:
        """Apply a held usage record as if read now."""
        _, _, key, value, base, source, _ = held
        event = decode(base, key.encode(), value.encode())
        if type(event) is Usage:
            store = self.processor.store
            # Applied already to a state loaded ahead of its clock (streams.runtime.store)?
            reflected = bool(store.ahead) and store.reflected(p, key.encode(), USAGE, int(source.rsplit("/", 1)[1]))
            await self.processor.observed_usage(p, clock, tp, event, key.encode(), apply=not reflected)
