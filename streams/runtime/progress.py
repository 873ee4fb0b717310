"""What is left to read of each owned partition's input topics: it holds the watermark back."""

from __future__ import annotations

import logging
import time

from faust.types import TP

from rules.events import INPUT_TOPICS
from rules.schedule import PartitionClock
from streams.runtime.ports import Source
from streams.runtime.sequencer import Sequencer
from streams.settings import Settings
from streams.topics import TICKS

# Parked records of a partition (their raw values, bytes) above which the reader pauses the
# partition's topics that run ahead of its watermark: they are held in memory and written with
# their subscribers' records, and a replay burst would otherwise park a whole topic read ahead.
# The topics behind catch up meanwhile.
PARKED_BYTES = 256 * 1024
# How long an input partition may hold its partition's event time with nothing left to read before
# the log says so (Progress.waited_for).
WAIT_LOG_S = 30.0

log = logging.getLogger(__name__)


def next_offset(base: str, clock: PartitionClock) -> int:
    """The next offset of topic `base` the state needs.

    The state's own offsets, never the committed ones: a partition it never read from starts at
    0, even when offsets were committed past records it lacks."""
    return clock.offsets.get(base, -1) + 1


class Progress:
    """Per partition and input topic, whether records are left to read (kept record by record)."""

    def __init__(self, settings: Settings, source: Source, sequencer: Sequencer) -> None:
        self.source = source
        self.sequencer = sequencer
        self.base_topic = {settings.topic(t): t for t in (*INPUT_TOPICS, TICKS)}
        self._tps: dict[int, list[tuple[TP, str]]] = {}
        # High watermarks change only between fetches: one look-up per partition and batch.
        self._highwater: dict[TP, int | None] = {}
        # Per partition, whether each input topic has records left (`pending`), kept up to date
        # record by record within a batch.
        self.pend: dict[int, dict[str, bool]] = {}
        # Input partitions the watermark waits for while the source has nothing more to take, since
        # when (monotonic), and those already logged (`waited_for`).
        self._waiting: dict[TP, float] = {}
        self._waiting_logged: set[TP] = set()

    def new_batch(self) -> None:
        """Forget the high watermarks and what was pending: a fetch may have come since."""
        self._highwater.clear()
        self.pend.clear()

    def input_tps(self, partition: int) -> list[tuple[TP, str]]:
        """The input partitions of `partition`, with their topics' base names."""
        tps = self._tps.get(partition)
        if tps is None:
            tps = self._tps[partition] = [(TP(full, partition), base) for full, base in self.base_topic.items()
                                          if base != TICKS]
        return tps

    def pending(self, partition: int, clock: PartitionClock) -> dict[str, bool]:
        """Say, per input topic of `partition`, whether records are left to read."""
        return {base: self.more(tp, base, clock) for tp, base in self.input_tps(partition)}

    def refresh(self, partition: int, clock: PartitionClock) -> dict[str, bool]:
        """Look again at what `partition` has left to read; return it."""
        pending = self.pend[partition] = self.pending(partition, clock)
        return pending

    def more(self, tp: TP, base: str, clock: PartitionClock) -> bool:
        """Say whether input partition `tp` (of topic `base`) has records left to read."""
        # A partition being read again holds the watermark, whatever its high watermark says; so
        # does one the source has not read to its end since it was assigned or sought (a high
        # watermark may be short of the end).
        high = self._highwater[tp] if tp in self._highwater else self._high(tp)
        offset = clock.offsets.get(base, -1) + 1
        return tp in self.sequencer.rewinds or (high is not None and high > offset) or not self.source.at_end(
            tp, offset)

    def _high(self, tp: TP) -> int | None:
        high = self._highwater[tp] = self.source.end(tp)
        return high

    def moves(self, p: int, clock: PartitionClock, base: str, tp: TP, moved: bool) -> bool:
        """Note whether `base` has records left after the record just read at `tp`, whose time
        `moved` the topic's latest or not; say whether the watermark needs recomputing."""
        pending = self.pend.get(p)
        if pending is None:
            self.pend[p] = self.pending(p, clock)
            return True
        more = self.more(tp, base, clock)
        if more == pending.get(base) and not moved:
            return False  # neither the topic's time nor whether it has records left changed
        pending[base] = more
        return True

    def with_records(self, partitions: set[int]) -> set[int]:
        """Those of `partitions` one of whose input partitions holds records."""
        return {p for p in partitions if any((self.source.end(tp) or 0) > 0 for tp, _ in self.input_tps(p))}

    def unstarted(self, p: int, clock: PartitionClock | None) -> list[TP]:
        """Return the input partitions of `p` that have records to read but none read yet, while
        `p` has no watermark: until each has given a record the watermark cannot start, and what
        came before it would be applied with no day ever closing (the reader waits for them)."""
        if clock is None or clock.watermark_ms is not None:
            return []
        out = []
        for tp, base in self.input_tps(p):
            end = self.source.end(tp)
            if base not in clock.offsets and end is not None and end > self.source.start(tp):
                out.append(tp)
        return out

    def crowded(self, clocks: list[tuple[int, PartitionClock]]) -> set[TP]:
        """Return the input partitions to pause until their partitions' parked records shrink: the
        topics ahead of the watermark of a partition whose parked records pass PARKED_BYTES, while
        a topic behind it still has records to read (it alone can move the watermark on)."""
        out: set[TP] = set()
        for p, clock in clocks:
            parked = clock.parked
            if len(parked) < 64 or sum(len(e[3]) for e in parked) <= PARKED_BYTES:
                continue
            watermark = clock.watermark_ms
            ahead: list[tuple[int, TP, bool]] = []
            behind = False
            for tp, base in self.input_tps(p):
                latest = clock.max_ts.get(base)
                if watermark is not None and latest is not None and latest > watermark:
                    ahead.append((latest, tp, self.more(tp, base, clock)))
                elif self.more(tp, base, clock):
                    behind = True
            if not behind:
                # Every topic is ahead of a watermark held short of a midnight (a day close waits
                # for the records just produced to age, rules.schedule HELD): the slowest topic
                # with records to read goes on, the others wait, or a replay's burst would park
                # without bound meanwhile.
                slowest = min(((latest, tp) for latest, tp, more in ahead if more), default=None)
                if slowest is None:
                    continue
                ahead = [a for a in ahead if a[1] != slowest[1]]
            out.update(tp for _, tp, _ in ahead)
        return out

    def lags(self, clocks: list[tuple[int, PartitionClock]]) -> dict[tuple[str, int], int]:
        """Consumer lag per input topic and partition."""
        lags: dict[tuple[str, int], int] = {}
        for p, clock in clocks:
            for tp, base in self.input_tps(p):
                high = self.source.end(tp)
                if high is not None:
                    lags[(base, p)] = max(0, high - next_offset(base, clock))
        return lags

    def waited_for(self, clocks: list[tuple[int, PartitionClock]]) -> None:
        """Log, once, an input partition the watermark has waited for over WAIT_LOG_S while the
        source had nothing more to take: its partition's days do not close (nor do its lights and
        day-close tasks come) until it is read to its end, and nothing else would say why."""
        now = time.monotonic()
        waiting: dict[TP, float] = {}
        if self.source.caught_up:
            for p, clock in clocks:
                for tp, base in self.input_tps(p):
                    if self.more(tp, base, clock):
                        waiting[tp] = self._waiting.get(tp, now)
        self._waiting = waiting
        self._waiting_logged &= waiting.keys()
        for tp, since in waiting.items():
            if now - since >= WAIT_LOG_S and tp not in self._waiting_logged:
                self._waiting_logged.add(tp)
                clock = dict(clocks)[tp.partition]
                log.warning("%s/%d holds partition %d's event time for %.0f s with nothing more to read: the "
                            "state's next offset %d, high watermark %s, %s, read again %s", tp.topic,
                            tp.partition, tp.partition, now - since, next_offset(self.base_topic[tp.topic], clock),
                            self._highwater.get(tp), self.source.reading(tp), tp in self.sequencer.rewinds)
