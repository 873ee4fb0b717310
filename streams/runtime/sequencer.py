"""Offset order: a partition's records are applied in offset order only; a gap is read again, never skipped.

The state's applied offsets are the truth, not the consumer's: the reader starts where the state
says, and a gap after that (records deleted by retention, a transaction's control records, a
consumer that skipped) is read again from the state's next offset.
"""

from __future__ import annotations

import logging

from faust.types import TP

from rules.events import PROFILES
from rules.schedule import PartitionClock
from streams.metrics import Metrics
from streams.runtime.ports import Source

log = logging.getLogger(__name__)

# Reads of a partition from the state's offset that may bring nothing before the gap is accepted.
MAX_SEEKS = 8


class Rewind:
    """An input partition read again from `seek_to`, after a gap seen at offset `gap_at`."""

    __slots__ = ("gap_at", "seek_to", "stale", "seeks", "first")

    def __init__(self, gap_at: int, seek_to: int) -> None:
        self.gap_at = gap_at
        self.seek_to = seek_to
        self.stale = True  # no seek yet, or a record passed over since the last one: seek again
        self.seeks = 0
        self.first: int | None = None  # where the last re-read started, when not at `seek_to`


class Sequencer:
    """Say which records are next in offset order; seek back over gaps (through the `source`)."""

    def __init__(self, source: Source, metrics: Metrics) -> None:
        self.source = source
        self.metrics = metrics
        # Input partitions being read again from the state's next offset after a gap.
        self.rewinds: dict[TP, Rewind] = {}

    async def in_sequence(self, tp: TP, base: str, offset: int, clock: PartitionClock) -> bool:
        """Say whether the record at `offset` is the next one the state needs; read again if not.

        Records fetched before a seek took effect have offsets past the gap's and are passed
        over; the re-read is taken from the state's next offset on, or from where two re-reads in
        a row start (the records before it do not exist). The compacted profiles topic has gaps
        by design and is exempt from the check.
        """
        # A partition the state never read from starts at 0.
        last = clock.offsets.get(base, -1)
        if offset <= last:
            return False  # re-delivered after a crash, or read again: its effects are in the state
        rewind = self.rewinds.get(tp)
        if rewind is not None:
            if offset == last + 1:
                del self.rewinds[tp]
                return True
            if offset <= rewind.gap_at and offset == rewind.first:
                # The re-read starts here twice: the records before it do not exist (deleted or
                # compacted away, or the control records of a transaction).
                del self.rewinds[tp]
                return True
            if offset <= rewind.gap_at:
                rewind.first = offset  # a re-read that did not start at the state's offset: read again
            rewind.stale = True
            return False
        if offset == last + 1 or base == PROFILES:
            return True
        log.warning("%s/%d: the state has applied offset %d, the consumer delivered %d: reading again from %d",
                    tp.topic, tp.partition, last, offset, last + 1)
        self.metrics.rewind(base)
        await self._seek(tp, self.rewinds.setdefault(tp, Rewind(offset, last + 1)))
        return False

    async def _seek(self, tp: TP, rewind: Rewind) -> None:
        # Repeated after each batch that passed stale records over, until the re-read arrives.
        if rewind.seeks >= MAX_SEEKS:
            # The records between the state's offset and the gap are gone (deleted by retention):
            # take what comes next rather than read again for ever.
            log.error("%s/%d: %d reads from offset %d brought nothing before offset %d; going on without them",
                      tp.topic, tp.partition, rewind.seeks, rewind.seek_to, rewind.gap_at + 1)
            self.rewinds.pop(tp, None)
            return
        rewind.stale = False
        rewind.seeks += 1
        await self.source.seek(tp, rewind.seek_to)

    async def repeat_seeks(self) -> None:
        """Seek again the partitions whose re-read has not come yet (after a batch)."""
        for tp, rewind in list(self.rewinds.items()):
            if rewind.stale:
                await self._seek(tp, rewind)
