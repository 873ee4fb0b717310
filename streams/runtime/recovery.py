"""Rebuild a worker's state from the state changelog, with confluent-kafka, in bulk.

The state of the partitions a worker owns lives in memory; the changelog (compacted, one
partition per input partition) holds every subscriber's latest serialised state and each
partition's clock. After every assignment the worker reads its partitions of the changelog from
the beginning to the end and keeps the latest value per key. Faust's table recovery read the
same records one by one through its own stream machinery, at about 7,000 records/s here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.runtime.changelog import write_of
from streams.settings import Settings
from streams.topics import changelog_topic, client_config

log = logging.getLogger(__name__)

# A partition's clock record (streams.runtime.store.META_PREFIX) closes a state write.
CLOCK_PREFIX = b"~p:"

# No record for this long while partitions are still short of their end: the broker is away.
STALL_S = 60.0


class RecoveryError(RuntimeError):
    """The changelog could not be read to its end."""


def read_changelog(settings: Settings, partitions: set[int], *, cancelled: Callable[[], bool] = lambda: False,
                   writes: dict[int, int] | None = None) -> dict[bytes, bytes]:
    """Return the latest value of every key in `partitions` of the changelog (tombstones removed).

    `writes`, when given, receives per partition the number of the newest state write seen.

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
    # Per partition: the newest state write seen, the values its records replaced (to put back
    # if its clock record never came: a crash in the middle of the write), and whether it came.
    newest: dict[int, int] = {}
    replaced: dict[int, dict[bytes, bytes | None]] = {}
    closed: dict[int, bool] = {}
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
                write = write_of(m.headers())
                if write:
                    p = m.partition() or 0  # always set on a record
                    if write > newest.get(p, 0):
                        # A newer write began: the one before it ended (one write at a time, and
                        # each ends with its clock record), so what it replaced is gone for good.
                        newest[p], replaced[p], closed[p] = write, {}, False
                    if write == newest[p]:
                        if key.startswith(CLOCK_PREFIX):
                            closed[p] = True
                        elif key not in replaced[p]:
                            replaced[p][key] = latest.get(key)
                latest[key] = m.value()
                records += 1
        log.debug("read %d records of %s", records, topic)
    finally:
        consumer.close()
    for p, write in newest.items():
        if not closed[p]:
            # The write's clock record never came: its states may be ahead of the clock's offsets,
            # and re-processing from those offsets would count their events twice. Back they go.
            log.warning("%s/%d: state write %d has no clock record (a crash during the write): its %d records "
                        "are rolled back", topic, p, write, len(replaced[p]))
            for key, before in replaced[p].items():
                latest[key] = before
    if writes is not None:
        writes.update(newest)
    return {k: v for k, v in latest.items() if v is not None}
