"""Read back what the worker produced since its state was written, so that nothing goes out twice.

Without transactions (Tansu has none, and the state changelog is not a Kafka Streams store), a
crash between a batch's acknowledged outputs and the next state write makes the worker process
those records again after the restart. Each clock record carries, per output partition, an
offset below which nothing produced after it lands (`PartitionClock.out`); at recovery the
outputs from there to the end are read and identified, and re-processing skips those it finds:
a light change by (msisdn, at, light), a dead letter by its `source` header, a task by its
`ce_id` (= task_id), which also tells the task sink that a claim left `pending` was published.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from sinks.outbox import deadletter_id, light_id, task_identity
from streams.runtime.store import partition_of
from streams.settings import Settings
from streams.topics import DEADLETTER, LIGHTS, OUTPUT_TOPICS, client_config

log = logging.getLogger(__name__)

# No record for this long while partitions are still short of their end: the broker is away.
STALL_S = 60.0


def _identity(base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None,
              partitions: int, owned: set[int]) -> str | None:
    """Return the identity of one output message whose input partition is in `owned`, else None."""
    found = dict(headers or ())
    if base == DEADLETTER:
        source = found.get("source")
        if source is None:
            return None
        text = source.decode("utf-8", "replace")
        parts = text.rsplit("/", 2)
        if len(parts) == 3 and parts[1].isdigit():
            return deadletter_id(text) if int(parts[1]) in owned else None
        return deadletter_id(text, key)  # an unreadable state record: topic/partition and its key
    if key is None or partition_of(key, partitions) not in owned:
        return None
    if base == LIGHTS:
        try:
            doc = orjson.loads(value or b"")
            return light_id(str(doc["msisdn"]), doc.get("at"), str(doc["light"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
    ce_id = found.get("ce_id")
    return None if ce_id is None else task_identity(ce_id.decode("utf-8", "replace"))


def read_outputs(settings: Settings, starts: dict[str, int], owned: set[int], *,
                 cancelled: Callable[[], bool] = lambda: False) -> tuple[set[str], dict[str, int]]:
    """Return the identities of the outputs of partitions `owned` from `starts` to the end, and
    per output partition ("topic/partition") one past the last offset read (or its start).

    A partition without a start is read from its beginning.
    """
    conf = client_config(settings)
    conf.update({
        "group.id": f"{settings.topic_prefix}{settings.app_id}-outputs",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # A broker without transactions may report a last stable offset short of the end.
        "isolation.level": "read_uncommitted",
    })
    consumer = Consumer(conf)
    found: set[str] = set()
    ends: dict[str, int] = {}
    base_of: dict[str, str] = {}
    try:
        wanted: list[TopicPartition] = []
        for base in OUTPUT_TOPICS:
            topic = settings.topic(base)
            base_of[topic] = base
            meta = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
            if meta is None or meta.error is not None:
                continue  # not created yet: nothing was produced
            for q in sorted(meta.partitions):
                where = f"{topic}/{q}"
                start = starts.get(where, 0)
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, q), timeout=10.0)
                except KafkaException as exc:
                    raise RuntimeError(f"cannot read the end of {where}: {exc}") from exc
                ends[where] = max(start, low)
                if high > max(start, low):
                    wanted.append(TopicPartition(topic, q, max(start, low)))
        if not wanted:
            return found, ends
        pending = {(tp.topic, tp.partition) for tp in wanted}
        consumer.assign(wanted)
        last_progress = time.monotonic()
        while pending and not cancelled():
            messages = consumer.consume(10000, 0.5)
            if messages:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_S:
                raise RuntimeError(f"no record of the output partitions {sorted(pending)} in {STALL_S:.0f} s")
            for m in messages:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard((m.topic(), m.partition()))
                    else:
                        log.warning("reading the outputs: %s", err)
                    continue
                name, offset = m.topic(), m.offset()
                assert name is not None and offset is not None
                where = f"{name}/{m.partition()}"
                ends[where] = max(ends.get(where, 0), offset + 1)
                identity = _identity(base_of[name], m.key(), m.value(), _bytes_headers(m.headers()),
                                     settings.partitions, owned)
                if identity is not None:
                    found.add(identity)
    finally:
        consumer.close()
    return found, ends


def _bytes_headers(headers: object) -> list[tuple[str, bytes]]:
    """A record's headers as (name, bytes) pairs (the writers of the output topics send bytes)."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    if not isinstance(headers, list):
        return []
    return [(str(k), v if isinstance(v, bytes) else str(v or "").encode()) for k, v in headers]
