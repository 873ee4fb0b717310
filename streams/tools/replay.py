"""Produce a CONTRACT §6 event history into the input topics."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from rules.events import INPUT_TOPICS
from streams.settings import Settings
from streams.topics import client_config

log = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    sent: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    unreadable: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)
    failed: Counter[str] = field(default_factory=Counter)  # delivery error -> count

    @property
    def ok(self) -> bool:
        return not self.unreadable and not self.failed


def parse_line(line: bytes) -> tuple[str, bytes | None, bytes | None]:
    """Return (topic, key, value bytes) of one history line; raise ValueError when it is unusable.

    A line may carry `raw` (text sent as the value unchanged) for records that are not JSON.
    """
    doc = orjson.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("line is not a JSON object")
    topic = doc.get("topic")
    if topic not in INPUT_TOPICS:
        raise ValueError(f"unknown topic {topic!r}")
    value: Any = doc.get("value")
    key = doc.get("key")
    if "raw" in doc:
        raw = doc["raw"]
        payload = raw.encode() if isinstance(raw, str) else None
    elif value is None:
        payload = None
    else:
        payload = orjson.dumps(value)
    if key is None and isinstance(value, dict):
        key = value.get("msisdn")
    if key is not None and not isinstance(key, str):
        key = str(key)
    if key is None and payload is None:
        raise ValueError("neither key nor value")
    return topic, None if key is None else key.encode(), payload


def iter_file(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield line


def make_producer(settings: Settings, **extra: Any) -> Producer:
    conf = client_config(settings)
    conf.update({
        # murmur2 like the Java client, so that keys land where every Kafka client expects them.
        "partitioner": "murmur2_random",
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "enable.idempotence": False,
        "acks": "all",
        "compression.type": "none",
    })
    conf.update(extra)
    return Producer(conf)


_TOO_LARGE = "MSG_SIZE_TOO_LARGE"


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None,
             delivered: Callable[[KafkaError | None, Any], None]) -> str | None:
    """Hand one record to the producer, waiting while its queue is full; return why it was refused."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=delivered)
            return None
        except BufferError:
            producer.poll(0.05)
        except KafkaException as exc:
            # librdkafka refuses a record over message.max.bytes at once: the line is named, the rest go on.
            error = exc.args[0] if exc.args else None
            return error.name() if isinstance(error, KafkaError) else str(exc)


def replay(
    settings: Settings,
    lines: Iterable[bytes],
    *,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Produce every history line to its topic (with the configured prefix); report what failed."""
    report = ReplayReport()
    producer = make_producer(settings)

    def delivered(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            report.failed[err.name()] += 1

    for number, line in enumerate(lines, start=1):
        try:
            topic, key, value = parse_line(line)
        except (ValueError, orjson.JSONDecodeError) as exc:
            report.unreadable.append((number, str(exc)[:200]))
            continue
        why = _produce(producer, settings.topic(topic), key, value, delivered)
        if why is not None:
            report.unreadable.append((number, why if why != _TOO_LARGE else
                                      f"{len(line.rstrip()):,} bytes, over the broker's message size limit ({why})"))
            continue
        report.sent += 1
        report.per_topic[topic] += 1
        if number % 1000 == 0:
            producer.poll(0)
            if progress:
                progress(number)
    remaining = producer.flush(60)
    if remaining:
        report.failed["not_flushed"] += remaining
    if progress:
        progress(report.sent + len(report.unreadable))
    return report
