"""Read topic partitions from a start offset to their end, with confluent-kafka.

The end of a partition is librdkafka's end-of-partition event after its last record, never the
high watermark alone: the embedded broker (Tansu) reports one past the first offset of a
partition's last record batch, short of the end. The watermarks asked at the start serve only to
pass over an empty partition (high <= low) and to begin no lower than the low one (what is below
it was deleted); a start at or past the reported high watermark is still read, up to its event.

The state recovery, the outputs read back at a restart, and the tools' and tests' topic reader
all read this way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, NamedTuple, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.settings import Settings
from streams.topics import client_config

log = logging.getLogger(__name__)

# No record for this long while partitions are still short of their end: the broker is away.
STALL_S = 60.0
# How long one consume() waits for a full batch; the end of a read waits at most this long.
WAIT_S = 0.2

Where = tuple[str, int]  # (topic, partition)
Headers = list[tuple[str, bytes | None]]


class Record(NamedTuple):
    """One record read: where it stands, and what it holds."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers


class TopicEndError(RuntimeError):
    """A partition's watermarks could not be asked, or its end did not come (a stall)."""


def _never() -> bool:
    return False


def read_to_end(settings: Settings, topics: Mapping[str, Collection[int] | None], *, group_id: str,
                starts: Mapping[Where, int] | None = None, cancelled: Callable[[], bool] = _never,
                stall_s: float = STALL_S, settle_s: float = 0.0, batch: int = 10000,
                config: Mapping[str, Any] | None = None, begun: dict[Where, int] | None = None) -> Iterator[Record]:
    """Yield the records of `topics` (full name -> its partitions to read, None: all of them) from
    `starts` (per partition; the beginning where none is given) to their end, each partition in
    offset order (see read_messages for the rest)."""
    for m in read_messages(settings, topics, group_id=group_id, starts=starts, cancelled=cancelled, stall_s=stall_s,
                           settle_s=settle_s, batch=batch, config=config, begun=begun):
        # A consumed record always has its topic, partition and offset; its header values are bytes.
        yield Record(cast(str, m.topic()), cast(int, m.partition()), cast(int, m.offset()), m.key(), m.value(),
                     cast(Headers, m.headers() or []))


def read_messages(settings: Settings, topics: Mapping[str, Collection[int] | None], *, group_id: str,
                  starts: Mapping[Where, int] | None = None, cancelled: Callable[[], bool] = _never,
                  stall_s: float = STALL_S, settle_s: float = 0.0, batch: int = 10000,
                  config: Mapping[str, Any] | None = None, begun: dict[Where, int] | None = None,
                  hold: Callable[[Where], bool] | None = None) -> Iterator[Message]:
    """Yield the records (confluent_kafka.Message) of `topics` from `starts` to their end.

    A topic that does not exist has no records. Stops once every partition has signalled its end
    after its last record and no record came for `settle_s` (records still being produced: a
    partition that delivers one more is not at its end until it signals again); returns early,
    with what it yielded, once `cancelled()` says so. Raises TopicEndError when no record came for
    `stall_s` while a partition is short of its end. `begun`, when given, receives per partition
    the offset its reading began at. `config` adds to the consumer's configuration (fetch sizes).
    `hold`, when given, is asked at each end of a partition, and again at every consume while it
    said yes, whether to wait there for more records (it decides when to stop waiting: no stall is
    raised meanwhile).
    """
    conf = client_config(settings)
    conf.update({
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        # A start past the end (a topic created anew) has nothing to read.
        "auto.offset.reset": "latest",
        # A broker without transactions may report a last stable offset short of the end.
        "isolation.level": "read_uncommitted",
        # A partition read to its end says so when a fetch comes back empty: after this wait, not
        # the default half second (a restart reads the output topics back to their ends).
        "fetch.wait.max.ms": 10,
        **(config or {}),
    })
    consumer = Consumer(conf)
    try:
        first, pending = _assignment(consumer, topics, starts or {})
        if begun is not None:
            begun.update(first)
        if not pending and settle_s <= 0:
            return
        # Assigned, not subscribed: no consumer-group join (which on Tansu waits for the timeouts).
        # An empty partition too: records may come while the read settles.
        consumer.assign([TopicPartition(topic, p, offset) for (topic, p), offset in first.items()])
        last_record = last_progress = time.monotonic()
        held: set[Where] = set()
        while not cancelled():
            now = time.monotonic()
            if held and hold is not None:
                held = {where for where in held if hold(where)}
            if not pending and not held and now - last_record >= settle_s:
                return
            messages = consumer.consume(batch, WAIT_S)
            if messages:
                last_progress = time.monotonic()
            elif pending and time.monotonic() - last_progress > stall_s:
                raise TopicEndError(f"no record of the partitions {sorted(pending)} in {stall_s:.0f} s")
            for m in messages:
                where = (cast(str, m.topic()), cast(int, m.partition()))
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(where)
                        if hold is not None and hold(where):
                            held.add(where)
                    else:
                        log.warning("reading %s/%d: %s", *where, err)
                    continue
                if cast(int, m.offset()) < first[where]:
                    continue  # before the start (a broker that answers with the whole record batch)
                pending.add(where)
                held.discard(where)
                last_record = time.monotonic()
                yield m
    finally:
        consumer.close()


def _assignment(consumer: Consumer, topics: Mapping[str, Collection[int] | None],
                starts: Mapping[Where, int]) -> tuple[dict[Where, int], set[Where]]:
    """Return the offset to read each partition of `topics` from, and those with records."""
    first: dict[Where, int] = {}
    pending: set[Where] = set()
    for topic, partitions in topics.items():
        if partitions is None:
            meta = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
            partitions = [] if meta is None or meta.error is not None else list(meta.partitions)
        for p in sorted(partitions):
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
            except KafkaException as exc:
                raise TopicEndError(f"cannot read the watermarks of {topic}/{p}: {exc}") from exc
            first[(topic, p)] = max(starts.get((topic, p), 0), low)
            if high > low:
                pending.add((topic, p))
    return first, pending
