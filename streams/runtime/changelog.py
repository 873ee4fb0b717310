"""Write the state changelog in bulk with confluent-kafka.

Faust sends one changelog message per table write through its own producer path, which was two
thirds of the per-event CPU measured here. The pipeline writes each subscriber touched since its
last state write once (streams.runtime.checkpoint); this writer produces those values with librdkafka's
batching, each to the changelog partition of the subscriber's input partition, and `flush`
returns only when the broker has them all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, Producer

from streams.settings import Settings
from streams.topics import client_config

if TYPE_CHECKING:
    from streams.runtime.local import LocalStore

log = logging.getLogger(__name__)

SEAL_KEY = b"~seal"
# The key prefix of a partition's clock record (streams.runtime.store.clock_key).
CLOCK_PREFIX = b"~p:"
# Every record of a state write carries the write's number, and each subscriber's the input
# offsets its state reflects (JSON: input topic -> last offset applied): its partition's at the
# write, or (OWN_OFFSETS_HEADER) its own where they differ: ahead of the partition after a crash,
# or holding the partition's suspect usage record, whose offset is under HELD (not applied). Under
# OPENED, the local day (ordinal) the partition had opened: the closes before it are in the state.
WRITE_HEADER = "w"
OFFSETS_HEADER = "o"
OWN_OFFSETS_HEADER = "k"
HELD = "!"
OPENED = "~d"


def reflects(offsets: dict[str, int], open_day: int | None) -> dict[str, int]:
    """A state's input offsets with the day its partition had opened (the record header's JSON)."""
    return offsets if open_day is None else {**offsets, OPENED: open_day}


def passes(mine: dict[str, int], done: dict[str, int]) -> bool:
    """Say whether offsets `mine` (of a subscriber's record) pass `done` (its partition clock's)."""
    return any(v > done.get(t, -1) for t, v in mine.items() if t != HELD)

Headers = list[tuple[str, str | bytes | None]]
# The records of a state write for the local store, in runs of one partition and one headers list
# (a write's records share their partition's): (partition, headers, keys, values; None a tombstone).
Run = tuple[int, Headers | None, list[bytes], list[bytes | None]]


class ChangelogWriter:
    """Produce (partition, key, value) changelog records; `flush` waits for all of them."""

    def __init__(self, settings: Settings, topic: str) -> None:
        conf = client_config(settings)
        conf.update({
            # One request in flight keeps each partition's order under retries (a partition's clock
            # record must never land before the states written ahead of it) without relying on the
            # broker's idempotent-producer support; the writer flushes once per state write anyway.
            "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            # Only failures call back into Python: a call for every record delivered was a
            # noticeable part of each flush.
            "delivery.report.only.error": True,
            "on_delivery": self._done,
        })
        self._conf = conf
        self.topic = topic
        self.producer = Producer(conf)
        self._failed: list[tuple[int, bytes, bytes | None, Headers | None]] = []
        self._touched: set[int] = set()
        # Per partition, its clock record queued since the last flush: sent again after any of
        # the partition's records that failed, so that it stays the partition's last.
        self._clocks: dict[int, tuple[bytes, bytes | None, Headers | None]] = {}
        self._fatal = False
        # The worker's local store (streams.runtime.local): it takes each write once the broker has it.
        self.local: LocalStore | None = None
        # Runs, not a tuple a record: two appends are cheaper, and lists of bytes give the
        # collector nothing to walk (a tuple holding the headers list is walked until freed).
        self._written: list[Run] = []
        self._run_partition = -1
        self._run_headers: Headers | None = None
        self._keys: list[bytes] = []
        self._values: list[bytes | None] = []

    def write(self, partition: int, key: bytes, value: bytes | None, headers: Headers | None = None) -> None:
        """Queue one changelog record (None = tombstone) with `headers` (module constants)."""
        self._touched.add(partition)
        if key.startswith(CLOCK_PREFIX):
            self._clocks[partition] = (key, value, headers)
        if self.local is not None and key != SEAL_KEY:
            if headers is not self._run_headers or partition != self._run_partition:
                self._run_partition, self._run_headers, self._keys, self._values = partition, headers, [], []
                self._written.append((partition, headers, self._keys, self._values))
            self._keys.append(key)
            self._values.append(value)
        while True:
            try:
                self.producer.produce(self.topic, key=key, value=value, partition=partition, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.01)

    def _take(self) -> list[Run]:
        """Hand over the runs written so far; the next record starts a run of its own."""
        written, self._written = self._written, []
        self._run_partition = -1
        return written

    def _done(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._failed.append((msg.partition(), msg.key(), msg.value(), msg.headers()))
            self._fatal = self._fatal or err.fatal()

    async def flush(self, *, store: bool = True) -> None:
        """Return once the broker acknowledged every queued record, then seal the partitions.

        With `store` False the local store takes these records with the next flush instead (it
        lags the changelog, from its marks on, as after a crash): the claims written right after a
        load (streams.runtime.claims) must not wait behind the store's refresh of what the load
        read, about 5 s a million records.
        """
        if not self._touched and not self._failed and len(self.producer) == 0:
            return
        try:
            await self._flush()
            # Tansu reports a partition's high watermark as the base offset of its last record
            # batch, so whatever reads "up to the high watermark" (Faust's table recovery) misses
            # that whole batch. A lone tombstone after each flush is the last batch instead: only
            # it goes unseen, and it deletes a key nobody has. Harmless on a real Kafka.
            touched, self._touched = self._touched, set()
            self._clocks.clear()
            for partition in touched:
                self.write(partition, SEAL_KEY, None)
            self._touched.clear()
            await self._flush()
        except BaseException:
            written = self._take()
            if self.local is not None:  # the store must never go past records the changelog may hold
                self.local.forget({p for p, _, _, _ in written})
            raise
        if not store:
            return
        # The records of this write (re-sent ones too): the local store takes them now the broker has them all.
        written = self._take()
        if self.local is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.local.put, written)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            remaining = await loop.run_in_executor(None, self.producer.flush, 30.0)
            if not remaining and not self._failed:
                return
            if self._failed:
                failed, self._failed = self._failed, []
                log.warning("re-sending %d changelog records the broker did not take", len(failed))
                if self._fatal:
                    # A fatal producer error fails every later send: start a new producer.
                    log.error("the changelog producer hit a fatal error; replacing it")
                    self.producer = Producer(self._conf)
                    self._fatal = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                for partition, key, value, headers in failed:
                    self.write(partition, key, value, headers)
                for partition in {f[0] for f in failed}:
                    clock = self._clocks.get(partition)
                    if clock is not None and not any(f[0] == partition and f[1] == clock[0] for f in failed):
                        self.write(partition, *clock)  # after the records it closes


def write_of(headers: object) -> int:
    """The number of the state write a changelog record belongs to (0: none), from its headers."""
    pairs = headers.items() if isinstance(headers, dict) else headers if isinstance(headers, list) else ()
    for name, value in pairs:
        if name == WRITE_HEADER and value is not None:
            return int(value)
    return 0
