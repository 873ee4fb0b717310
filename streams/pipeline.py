"""What the agent does with a batch of raw messages: validate, dead-letter, watermark, apply."""

from __future__ import annotations

import logging
import time
from typing import Any

from faust.types import TP

from rules.events import INPUT_TOPICS, Event, Rejection, decode, event_time_ms
from streams.metrics import Metrics
from streams.settings import Settings
from streams.topics import TICKS

log = logging.getLogger(__name__)


class PartitionClock:
    """Event-time bookkeeping of one partition (CONTRACT §7)."""

    __slots__ = ("max_ts", "offsets", "watermark_ms")

    def __init__(self) -> None:
        self.max_ts: dict[str, int] = {}
        self.offsets: dict[str, int] = {}
        self.watermark_ms: int | None = None

    def observe(self, topic: str, ts_ms: int) -> None:
        if ts_ms > self.max_ts.get(topic, -1):
            self.max_ts[topic] = ts_ms

    def advance(self, pending: dict[str, bool]) -> int | None:
        """Recompute the watermark: the minimum over the topics that still have records to read.

        A caught-up topic does not hold it back; a topic with records to read but none seen yet
        holds it where it is. The watermark never goes back.
        """
        lows: list[int] = []
        for topic, has_more in pending.items():
            if not has_more:
                continue
            ts = self.max_ts.get(topic)
            if ts is None:
                return self.watermark_ms
            lows.append(ts)
        candidate = min(lows) if lows else (max(self.max_ts.values()) if self.max_ts else None)
        if candidate is not None and (self.watermark_ms is None or candidate > self.watermark_ms):
            self.watermark_ms = candidate
        return self.watermark_ms


class Pipeline:
    """Drive one worker's batches; the agent is a thin loop around `process`."""

    def __init__(self, settings: Settings, metrics: Metrics, *, table: Any, deadletter: Any, app: Any) -> None:
        self.settings = settings
        self.metrics = metrics
        self.table = table
        self.deadletter = deadletter
        self.app = app
        self.agent: Any = None
        self.base_topic = {settings.topic(t): t for t in (*INPUT_TOPICS, TICKS)}
        self.clocks: dict[int, PartitionClock] = {}
        self.started_at = time.monotonic()
        self.batches = 0

    def attach(self, agent: Any) -> None:
        self.agent = agent

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Say whether the worker has recovered its tables and is consuming."""
        app = self.app
        recovered = app.tables.recovery.completed.is_set() if app.tables else True
        consuming = bool(self.agent is not None and self.agent.started and not app.rebalancing)
        ok = recovered and consuming
        return ok, {
            "status": "ok" if ok else "starting",
            "recovered": recovered,
            "consuming": consuming,
            "partitions": sorted({tp.partition for tp in app.consumer.assignment()
                                 if tp.topic in self.base_topic}) if consuming else [],
        }

    def _pending(self, partition: int, clock: PartitionClock) -> dict[str, bool]:
        """Say, per input topic of `partition`, whether records are left to read."""
        consumer = self.app.consumer
        committed = getattr(consumer, "_committed_offset", {})
        pending: dict[str, bool] = {}
        for full, base in self.base_topic.items():
            if base == TICKS:
                continue
            tp = TP(full, partition)
            high = consumer.highwater(tp)
            read = clock.offsets.get(base)
            next_offset = read + 1 if read is not None else committed.get(tp, 0) or 0
            pending[base] = high is not None and high > next_offset
        return pending

    async def process(self, events: list[Any]) -> None:
        """Handle one batch of events from the agent's stream."""
        for event in events:
            msg = event.message
            base = self.base_topic.get(msg.topic)
            if base is None or base == TICKS:
                continue
            clock = self.clocks.get(msg.partition)
            if clock is None:
                clock = self.clocks[msg.partition] = PartitionClock()
            result = decode(base, msg.key, msg.value, clock.watermark_ms)
            clock.offsets[base] = msg.offset
            if isinstance(result, Rejection):
                await self._reject(base, msg, result)
            else:
                self._apply(base, result, msg, clock)
            clock.advance(self._pending(msg.partition, clock))
        self.batches += 1

    def _apply(self, base: str, event: Event, msg: Any, clock: PartitionClock) -> None:
        ts = event_time_ms(event)
        if ts is not None:
            clock.observe(base, ts)
        self.metrics.event(base, "applied")

    async def _reject(self, base: str, msg: Any, rejection: Rejection) -> None:
        headers = list(_headers(msg.headers))
        headers.append(("error", rejection.error.encode()))
        headers.append(("source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode()))
        await self.deadletter.send(key=msg.key, value=msg.value, headers=headers)
        self.metrics.deadletter(base, rejection.error)
        self.metrics.event(base, "rejected")
        log.warning("dead-lettered %s/%d/%d: %s (%s)", msg.topic, msg.partition, msg.offset,
                    rejection.error, rejection.detail)


def _headers(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return [(k, v) for k, v in headers.items()]
    return [(k, v) for k, v in headers]

