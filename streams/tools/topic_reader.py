"""Read a topic from its beginning to its end, as the bench, the demo and the tests read outputs.

The end is librdkafka's end-of-partition event after a partition's last record, never the high
watermark (streams.runtime.topic_end, which the worker's own read-backs use too).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

from streams.runtime.topic_end import read_messages
from streams.settings import Settings


def iter_topic(settings: Settings, topic: str, *, count: int | None = None, idle_s: float = 0.0,
               timeout_s: float = 60.0) -> Iterator[Any]:
    """Yield the records (confluent_kafka.Message) of `topic` (its full name) from the beginning.

    Stops once every partition has signalled its end after its last record and no record came for
    `idle_s` (records still being produced: a partition that delivers one more is not at its end
    until it signals again), or once `count` records are read when `count` is given, or after
    `timeout_s` with what was read. A topic that does not exist has no records.
    """
    deadline = time.monotonic() + timeout_s
    # With a count, the read waits for records to come until the count or the time is reached.
    settle_s = timeout_s if count is not None else idle_s
    if count == 0:
        return
    read = 0
    for msg in read_messages(settings, {topic: None}, group_id=f"churnlight-read-{uuid.uuid4().hex}",
                             cancelled=lambda: time.monotonic() >= deadline, stall_s=math.inf, settle_s=settle_s,
                             batch=500):
        yield msg
        read += 1
        if count is not None and read >= count:
            return


def read_topic(settings: Settings, topic: str, *, count: int | None = None, idle_s: float = 0.0,
               timeout_s: float = 60.0) -> list[Any]:
    """Return the records of `topic` (its full name) from the beginning to its end (see iter_topic)."""
    return list(iter_topic(settings, topic, count=count, idle_s=idle_s, timeout_s=timeout_s))
