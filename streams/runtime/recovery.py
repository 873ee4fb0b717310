"""Rebuild a worker's state from the state changelog, with confluent-kafka, in bulk.

The state of the partitions a worker owns lives in memory; the changelog (compacted, one
partition per input partition) holds every subscriber's latest serialised state and each
partition's clock. After every assignment the worker reads its partitions of the changelog from
the beginning to the end and keeps the latest value per key. Faust's table recovery read the
same records one by one through its own stream machinery, at about 7,000 records/s here.

Each record carries the input offsets its state reflects (streams.runtime.changelog: the
partition's, or a subscriber's own when they differ). A write cut short by a crash leaves records
after the partition's last clock record whose offsets pass the clock's: those subscribers are
returned as ahead of their clock (streams.runtime.store), whatever compaction kept of their older
values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.runtime.changelog import CLOCK_PREFIX, HELD, OFFSETS_HEADER, OWN_OFFSETS_HEADER, WRITE_HEADER, write_of
from streams.settings import Settings
from streams.topics import changelog_topic, client_config

log = logging.getLogger(__name__)

# No record for this long while partitions are still short of their end: the broker is away.
STALL_S = 60.0


class RecoveryError(RuntimeError):
    """The changelog could not be read to its end."""


def read_changelog(settings: Settings, partitions: set[int], *, cancelled: Callable[[], bool] = lambda: False,
                   writes: dict[int, int] | None = None,
                   ahead: dict[int, dict[bytes, dict[str, int]]] | None = None) -> dict[bytes, bytes]:
    """Return the latest value of every key in `partitions` of the changelog (tombstones removed).

    `writes`, when given, receives per partition the number of the newest state write seen;
    `ahead`, per partition, the keys whose latest record reflects input offsets past the clock's
    (with those offsets).

    Reads each partition from its low watermark until librdkafka reports its end (the high
    watermark the broker gives with the fetched records; the changelog writer seals each flush
    with a lone tombstone, so that a broker which reports the first offset of the last record
    batch as the end loses nothing). Returns early, with what it has, when `cancelled()` says so.
    """
    topic = changelog_topic(settings)
    conf = client_config(settings)
    conf.update({
        "group.id": f"{settings.topic_prefix}{settings.app_id}-recovery",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "queued.max.messages.kbytes": 262144,
        "fetch.max.bytes": 52428800,
        "max.partition.fetch.bytes": 10485760,
    })
    consumer = Consumer(conf)
    latest: dict[bytes, bytes | None] = {}
    fold = _Fold()
    try:
        pending: set[int] = set()
        start: list[TopicPartition] = []
        for p in sorted(partitions):
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
            except KafkaException as exc:
                raise RecoveryError(f"cannot read the end of {topic}/{p}: {exc}") from exc
            if high > low:
                pending.add(p)
                start.append(TopicPartition(topic, p, low))
        if not start:
            return {}
        consumer.assign(start)
        last_progress = time.monotonic()
        records = 0
        while pending and not cancelled():
            messages = consumer.consume(20000, 0.5)
            if messages:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_S:
                raise RecoveryError(f"no record of {topic} partitions {sorted(pending)} in {STALL_S:.0f} s")
            for m in messages:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                    else:
                        log.warning("reading %s: %s", topic, err)
                    continue
                key = m.key()
                assert key is not None  # the changelog's records all have keys
                value = m.value()
                fold.record(m.partition() or 0, key, value, m.headers())
                latest[key] = value
                records += 1
        log.debug("read %d records of %s", records, topic)
    finally:
        consumer.close()
    found = fold.ahead()  # the store's load says how many
    if ahead is not None:
        ahead.update(found)
    if writes is not None:
        writes.update(fold.newest)
    return {k: v for k, v in latest.items() if v is not None}


class _Fold:
    """What the records read say beyond their values: the newest write per partition, and which
    keys may be ahead of their partition's clock (the records after its last clock record, and
    those with offsets of their own)."""

    def __init__(self) -> None:
        self.newest: dict[int, int] = {}
        # Per partition: the latest record's offsets of each key written since its last clock
        # record; keys whose latest record has offsets of its own; the last clock record's value.
        self.tail: dict[int, dict[bytes, bytes]] = {}
        self.own: dict[int, dict[bytes, bytes]] = {}
        self.clock: dict[int, bytes | None] = {}
        # One bytes object per distinct offsets value (a write's records all share one).
        self._interned: dict[bytes, bytes] = {}

    def record(self, p: int, key: bytes, value: bytes | None, headers: object) -> None:
        if key.startswith(CLOCK_PREFIX):
            self.clock[p] = value
            self.tail.pop(p, None)
            write = write_of(headers)
            if write > self.newest.get(p, 0):
                self.newest[p] = write
            return
        if key.startswith(b"~"):
            return
        offsets: bytes | None = None
        own = False
        pairs = headers if isinstance(headers, list) else ()
        for name, raw in pairs:
            if name == OFFSETS_HEADER or name == OWN_OFFSETS_HEADER:
                offsets = self._interned.setdefault(raw, raw)
                own = name == OWN_OFFSETS_HEADER
            elif name == WRITE_HEADER and raw:
                write = int(raw)
                if write > self.newest.get(p, 0):
                    self.newest[p] = write
        if offsets is None:
            return  # written before input offsets were recorded: never ahead
        self.tail.setdefault(p, {})[key] = offsets
        mine = self.own.get(p)
        if own:
            self.own.setdefault(p, {})[key] = offsets
        elif mine:
            mine.pop(key, None)

    def ahead(self) -> dict[int, dict[bytes, dict[str, int]]]:
        """Per partition, the keys whose latest record reflects offsets past the clock's."""
        found: dict[int, dict[bytes, dict[str, int]]] = {}
        parsed: dict[bytes, dict[str, int]] = {}
        for p in set(self.tail) | set(self.own):
            clock_value = self.clock.get(p)
            try:
                done = {str(t): int(v) for t, v in orjson.loads(clock_value).get("of", {}).items()} \
                    if clock_value else {}
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                continue  # an unreadable clock: the store rebuilds the partition from its inputs
            verdicts: dict[bytes, bool] = {}
            keys = found.setdefault(p, {})
            for key, raw in (*self.tail.get(p, {}).items(), *self.own.get(p, {}).items()):
                offsets = parsed.get(raw)
                if offsets is None:
                    offsets = parsed[raw] = {str(t): int(v) for t, v in orjson.loads(raw).items()}
                past = verdicts.get(raw)
                if past is None:
                    past = verdicts[raw] = any(v > done.get(t, -1) for t, v in offsets.items() if t != HELD)
                if past:
                    keys[key] = offsets
            if not keys:
                del found[p]
        return found
