"""Read a topic from its beginning to its end, as the bench, the demo and the tests read outputs.

The end is librdkafka's end-of-partition event after a partition's last record, never the high
watermark: the embedded broker (Tansu) reports one past the first offset of a partition's last
record batch, short of the end (streams.reader relies on the same event).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.settings import Settings
from streams.topics import client_config


def iter_topic(settings: Settings, topic: str, *, count: int | None = None, idle_s: float = 0.0,
               timeout_s: float = 60.0) -> Iterator[Any]:
    """Yield the records (confluent_kafka.Message) of `topic` (its full name) from the beginning.

    Stops once every partition has signalled its end after its last record and no record came for
    `idle_s` (records still being produced: a partition that delivers one more is not at its end
    until it signals again), or once `count` records are read when `count` is given, or after
    `timeout_s` with what was read. A topic that does not exist has no records.
    """
    conf = client_config(settings)
    conf.update({"group.id": f"churnlight-read-{uuid.uuid4().hex}", "enable.auto.commit": False,
                 "enable.partition.eof": True})
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        partitions = [] if meta is None or meta.error is not None else sorted(meta.partitions)
        # Assigned, not subscribed: no consumer-group join (which on Tansu waits for the timeouts).
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        read = 0
        began = last_record = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if count is not None and read >= count:
                return
            if count is None and len(at_end) == len(partitions) and time.monotonic() - last_record >= idle_s:
                return
            for msg in consumer.consume(500, 0.2):
                err, partition = msg.error(), msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and partition is not None:
                        at_end.add(partition)
                    continue
                at_end.discard(partition)  # type: ignore[arg-type,unused-ignore]  # a record has one
                last_record = time.monotonic()
                read += 1
                yield msg
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str, *, count: int | None = None, idle_s: float = 0.0,
               timeout_s: float = 60.0) -> list[Any]:
    """Return the records of `topic` (its full name) from the beginning to its end (see iter_topic)."""
    return list(iter_topic(settings, topic, count=count, idle_s=idle_s, timeout_s=timeout_s))
