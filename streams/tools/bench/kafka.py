"""The bench's own Kafka clients: produce a workload, the raw consumer baseline (a), clean up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from rich.console import Console

from rules.events import PROFILES, USAGE
from streams.settings import Settings
from streams.tools.bench.measure import rate

console = Console(stderr=True)


class BenchError(RuntimeError):
    """A step could not run at all; the message says which and why."""


def produce_all(settings: Settings, items: Iterable[tuple[str, bytes, bytes]],
                on_progress: Callable[[int], None]) -> tuple[int, float]:
    """Produce (topic base, key, value) records with murmur2 keys; return (sent, seconds)."""
    from confluent_kafka import KafkaError

    from streams.tools.replay import make_producer

    producer = make_producer(settings)
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failed.append(err.name())

    started = time.monotonic()
    sent = 0
    for base, key, value in items:
        while True:
            try:
                producer.produce(settings.topic(base), key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 5000 == 0:
            producer.poll(0)
            on_progress(sent)
    remaining = producer.flush(120)
    on_progress(sent)
    if remaining or failed:
        raise BenchError(f"{remaining} records not flushed, {len(failed)} failed ({sorted(set(failed))[:3]})")
    return sent, time.monotonic() - started


def make_consumer(settings: Settings, **extra: Any) -> Any:
    from confluent_kafka import Consumer

    from streams.topics import client_config

    conf = client_config(settings)
    conf.update({"group.id": f"churnlight-bench-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                 "enable.partition.eof": False})
    conf.update(extra)
    return Consumer(conf)


def partitions_of(consumer: Any, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        raise BenchError(f"topic {topic} does not exist")
    return sorted(meta.partitions)


def raw_baseline(settings: Settings, expected: int, on_progress: Callable[[int], None],
                 max_s: float) -> dict[str, Any]:
    """Consume every bench message with a plain consumer: orjson decode, a charge sum per msisdn."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = make_consumer(settings)
    try:
        tps = [TopicPartition(settings.topic(base), p, OFFSET_BEGINNING)
               for base in (PROFILES, USAGE) for p in partitions_of(consumer, settings.topic(base))]
        consumer.assign(tps)
        totals: dict[bytes, float] = {}
        seen = 0
        first_batch = 0
        first = last = None
        began = time.monotonic()
        while seen < expected and time.monotonic() - began < max_s:
            batch = consumer.consume(1000, 0.5)
            if not batch:
                if last is not None and time.monotonic() - last > 10:
                    break
                continue
            for msg in batch:
                if msg.error():
                    continue
                doc = orjson.loads(msg.value())
                key = msg.key()
                totals[key] = totals.get(key, 0.0) + doc.get("charge", 0.0)
                seen += 1
            now = time.monotonic()
            if first is None:
                first, first_batch = now, seen
            last = now
            if seen % 20000 < len(batch):
                on_progress(seen)
        on_progress(seen)
    finally:
        consumer.close()
    # The clock starts when the first batch is in hand: connecting and the first fetch are
    # start-up, so that batch's messages are not counted in the rate either.
    seconds = (last - first) if first is not None and last is not None else None
    return {"messages": seen, "expected": expected, "complete": seen >= expected, "seconds": seconds,
            "events_per_s": rate(seen - first_batch, seconds), "keys": len(totals)}



def delete_topics(settings: Settings, prefixes: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    from streams.topics import client_config

    admin = AdminClient(client_config(settings))
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if any(t.startswith(p) for p in prefixes)]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                try:
                    fut.result()
                except Exception:  # best effort: report, never mask the bench's own result
                    pass
            console.print(f"deleted {len(names)} bench topics")
    except Exception as exc:
        console.print(f"[yellow]could not delete the bench topics ({exc}); prefixes: {', '.join(prefixes)}[/yellow]")
