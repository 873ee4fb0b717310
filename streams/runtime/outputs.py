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

from collections.abc import Callable

import orjson

from sinks.outbox import deadletter_id, light_id, task_identity
from streams.runtime.store import partition_of
from streams.runtime.topic_end import read_to_end
from streams.settings import Settings
from streams.topics import DEADLETTER, LIGHTS, OUTPUT_TOPICS


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
    base_of = {settings.topic(base): base for base in OUTPUT_TOPICS}
    found: set[str] = set()
    begun: dict[tuple[str, int], int] = {}
    last: dict[str, int] = {}
    for r in read_to_end(settings, dict.fromkeys(base_of), group_id=f"{settings.topic_prefix}{settings.app_id}-outputs",
                         starts={_where(text): offset for text, offset in starts.items()}, cancelled=cancelled,
                         begun=begun):
        last[f"{r.topic}/{r.partition}"] = r.offset + 1
        identity = _identity(base_of[r.topic], r.key, r.value, _bytes_headers(r.headers), settings.partitions, owned)
        if identity is not None:
            found.add(identity)
    ends = {f"{topic}/{q}": offset for (topic, q), offset in begun.items()}
    for where, offset in last.items():
        ends[where] = max(ends[where], offset)
    return found, ends


def _where(text: str) -> tuple[str, int]:
    """Split "topic/partition"."""
    topic, _, partition = text.rpartition("/")
    return topic, int(partition)


def _bytes_headers(headers: object) -> list[tuple[str, bytes]]:
    """A record's headers as (name, bytes) pairs (the writers of the output topics send bytes)."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    if not isinstance(headers, list):
        return []
    return [(str(k), v if isinstance(v, bytes) else str(v or "").encode()) for k, v in headers]
