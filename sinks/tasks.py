"""Where task decisions leave the process: the task topics, the feed and the contact history.

`TaskSink.handle` takes one task from the rules, applies the contact policy against Redis and
either publishes it (CloudEvents binary mode, CONTRACT §2) or records its suppression.

Exactly-once effects over an at-least-once stream:
- A task's *first decision stands*. `lookup` reads the task's recorded decision and claim in the
  same round trip; a replayed task is not decided again (its own earlier contact would now put
  it in cooldown, or consent may have changed since), it only repairs what a crash may have
  left undone.
- Publication: claim (`churnlight:task:{id}` NX) -> send, retried until the broker acknowledges
  -> mark `sent`. A claim found `pending` is a crashed attempt: `published(task_id)` says whether
  its message reached the topic (the worker reads its task partitions back from the offsets its
  state recorded when it recovers), and only when it did not is it sent again; a `sent` one
  never is.
- Issued bookkeeping runs after `mark_sent`, in this order: the decision marker with its feed
  entry (one script), then the contact. Both are idempotent, so a task found `sent` without a
  marker simply runs them again. The contact comes last so that it is never recorded for a task
  whose decision is not. With an `OutcomeStore`, its issued count follows (idempotent too).
- Call-centre capacity (sinks.capacity, only where the rule set sets one): a call-centre task the
  policy issues is admitted to a call of its day or queued (`queued` in the feed) before any
  claim; `morning` publishes what a release gave the partition through the same claim protocol
  (`released`) or records it `expired`, and only then removes it from the partition's outbox.
- Metrics count a decision only in the call whose `record_decision` created the task's marker.
  The marker is written once per task id, after the send was acknowledged, so a crash before
  it leaves the decision uncounted and the attempt that completes it counts it; a replay counts
  nothing. The end-to-end latency is observed with that count when this call did the send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import date, tzinfo
from typing import Final, Protocol
from urllib.parse import quote

import orjson

from rules.event_types import mask
from rules.policy import (
    Decision,
    PolicyRules,
    Status,
    SuppressReason,
    decide,
    issued,
)
from rules.capacity import expected_saved_fen, release_ms
from rules.localtime import iso_time, local_date
from rules.task_message import Task
from rules.vocabulary import Channel, Kind
from sinks.capacity import Admission, CapacityQueue, Delivery, Entry
from sinks.outcomes import OutcomeStore
from sinks.redis_store import PolicyStore
from sinks.retry import DEFAULT_BACKOFF, Backoff, Retrier, Stopped

log = logging.getLogger(__name__)

__all__ = ["Send", "Stopped", "TaskMetrics", "TaskSink", "cloudevent_headers"]

# send(topic_base, key, value, headers): returns once the broker acknowledged the message.
Send = Callable[[str, bytes, bytes, list[tuple[str, bytes]]], Awaitable[None]]

CE_SPECVERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"


class TaskMetrics(Protocol):
    """The part of streams.metrics.Metrics the sink reports to."""

    def task(self, channel: Channel, kind: Kind, status: Status, reason: SuppressReason | None = None) -> None: ...

    def observe_end_to_end(self, channel: Channel, seconds: float) -> None: ...

    def capacity(self, region: str, kind: str, status: str) -> None: ...


def schema_id(topic: str) -> str:
    """Return the `$id` of the JSON Schema of `topic`'s messages (streams/schemas/<topic>.json)."""
    return f"urn:churnlight:schema:{topic}:v1"


def cloudevent_headers(task: Task, tz: tzinfo) -> list[tuple[str, bytes]]:
    """Return the CloudEvents binary-mode Kafka headers of `task`."""
    return [
        ("ce_specversion", CE_SPECVERSION.encode()),
        ("ce_type", f"churnlight.task.{task.kind}.v1".encode()),
        # A URI-reference naming the producer and the rule set that decided the task.
        ("ce_source", f"churnlight/{quote(task.rule_set, safe='')}".encode()),
        ("ce_id", task.task_id.encode()),
        ("ce_time", iso_time(task.created_at_ms, tz).encode()),
        ("content-type", CONTENT_TYPE.encode()),
        ("ce_dataschema", schema_id(f"retention.tasks.{task.channel}").encode()),
    ]


class TaskSink:
    """Decide, publish and record retention tasks; see the module docstring for the guarantees.

    `send(topic, key, value, headers)` must return only once the broker acknowledged the
    message; `topic` is what `topic_for(channel)` returns, e.g. `streams.topics.TASK_TOPIC`'s
    base names with `send` adding the prefix, or `Settings.topic` applied to them. `now()` is
    the wall clock in epoch seconds, used for the end-to-end latency only.
    """

    def __init__(
        self,
        store: PolicyStore,
        send: Send,
        metrics: TaskMetrics,
        *,
        tz: tzinfo,
        salt: str,
        rules: PolicyRules,
        topic_for: Callable[[Channel], str],
        now: Callable[[], float] = time.time,
        backoff: Backoff = DEFAULT_BACKOFF,
        outcomes: OutcomeStore | None = None,
        published: Callable[[str], bool] = lambda task_id: False,
        crash: Callable[[str], None] = lambda point: None,
        capacity: CapacityQueue | None = None,
        arpu_of: Callable[[Task], int | None] = lambda task: None,
    ) -> None:
        self.store = store
        # The call-centre capacity queues (None: no region has a capacity), and the 30-day ARPU
        # (fen) of a task's subscriber when it was decided, which ranks it there.
        self.capacity = capacity
        self.arpu_of = arpu_of
        self.published = published
        # The fault battery's crash points (streams.faults); a no-op in production.
        self.crash = crash
        self.outcomes = outcomes
        self.send = send
        self.metrics = metrics
        self.tz = tz
        self.salt = salt
        self.rules = rules
        self.topic_for = topic_for
        self.now = now
        self._sends = Retrier("the task topics", (Exception,), backoff)

    @property
    def degraded(self) -> bool:
        """Whether Redis or the broker is failing right now (calls are being retried)."""
        return (self.store.degraded or self._sends.degraded or (self.outcomes is not None and self.outcomes.degraded)
                or (self.capacity is not None and self.capacity.degraded))

    def stop(self) -> None:
        """Make calls waiting out an outage of Redis or the broker raise `Stopped`."""
        self.store.stop()
        self._sends.stop()
        if self.outcomes is not None:
            self.outcomes.stop()
        if self.capacity is not None:
            self.capacity.stop()

    async def handle(self, task: Task, *, port_out_open: bool, trigger_kafka_ts_ms: int | None) -> Decision:
        """Decide `task` under the contact policy, publish it if issued, record it; return the decision."""
        look = await self.store.lookup(task.msisdn, task.channel, task_id=task.task_id)
        if look.decided is not None:
            if look.decided.status == "suppressed":
                return Decision(task, "suppressed", look.decided.reason)
            decision = issued(task, self.rules, self.tz)
            # A crash may have come between the feed entry and the contact (or the issued count).
            await self.store.record_contact(task.msisdn, task.channel, task.created_at_ms)
            if self.outcomes is not None:
                await self.outcomes.record_issued(task)
            return decision
        if look.published == "sent":
            # Published, but the attempt that sent it stopped before recording the decision.
            return await self._record_issued(issued(task, self.rules, self.tz), None, trigger_kafka_ts_ms)
        if look.published == "pending" and self.published(task.task_id):
            # A crashed attempt's message reached the topic (read back at recovery): its decision
            # was to issue; only the claim's `sent` and the records after it were missing.
            await self.store.mark_sent(task.task_id)
            return await self._record_issued(issued(task, self.rules, self.tz), None, trigger_kafka_ts_ms)

        decision = decide(
            task,
            port_out_open=port_out_open,
            opted_out_sms=look.opted_out_sms,
            dnc=look.dnc,
            last_contact_ms=look.last_contact_ms,
            salt=self.salt,
            rules=self.rules,
            tz=self.tz,
        )
        if not decision.issued:
            assert decision.reason is not None
            if await self.store.record_decision(decision):
                self.metrics.task(task.channel, task.kind, "suppressed", decision.reason)
                log.debug("task %s (%s, %s) for %s suppressed: %s", task.task_id, task.kind,
                         task.channel, mask(task.msisdn), decision.reason)
            return decision

        task_json = orjson.dumps(decision.task.to_message(self.tz))
        if self.capacity is not None and self.capacity.limited(task) and await self._admit(task, task_json) not in (
                "slot", "held_slot"):
            return decision  # queued: published when a morning releases it, or expired
        published_at: float | None = None
        if await self.store.claim(task.task_id) != "sent":
            self.crash("task_claimed")
            await self._publish(decision.task, task_json)
            published_at = self.now()
            self.crash("task_sent")
            await self.store.mark_sent(task.task_id)
            self.crash("task_marked")
        return await self._record_issued(decision, task_json, trigger_kafka_ts_ms, published_at)

    async def _admit(self, task: Task, task_json: bytes) -> Admission:
        """Take a call of the task's day for it, or queue it ranked by expected saved revenue."""
        assert self.capacity is not None
        arpu = self.arpu_of(task)
        # A task carries `risk` where the rule set names a scoring model (CONTRACT §2).
        risk = getattr(task, "risk", None)
        saved = expected_saved_fen(arpu or 0, None if risk is None else float(risk))
        entry = Entry(task.task_id, task.msisdn, task.region, task.kind, task.priority, task.light or "", saved,
                      task.due_by_ms, task.created_at_ms, self.capacity.partition_of(task.msisdn), task_json,
                      tuple(cloudevent_headers(task, self.tz)))
        admitted = await self.capacity.admit(entry, local_date(task.created_at_ms, self.tz))
        if admitted == "queued":
            self.metrics.capacity(task.region, task.kind, "queued")
            log.debug("task %s (%s) for %s queued for the next 08:00 release of %s's calls", task.task_id,
                      task.kind, mask(task.msisdn), task.region)
        return admitted

    async def register(self, partitions: set[int]) -> None:
        """Name partitions that hold records: each day's release waits for them to pass its 08:00.

        Called by the pipeline after each load, before the first 08:00 it passes.
        """
        if self.capacity is not None and partitions:
            await self.capacity.register(partitions)

    async def morning(self, partition: int, day: date, *, arrived: bool = False) -> bool:
        """Note that `partition` passed `day`'s 08:00 local (unless `arrived` says it was noted),
        release the day's calls if it was the last partition to, and once the day is released
        publish or expire what `partition` was given; say whether the day is released.

        Called by the pipeline when `partition`'s event time passes the 08:00 (and once after each
        load of its state, finishing what a crash interrupted), then with `arrived` at each commit
        until the day is released.
        """
        capacity = self.capacity
        if capacity is None:
            return True
        if not arrived:
            await capacity.arrive(partition, day)
        released, moved = await capacity.release(day, release_ms(day, self.tz))
        if moved:
            # The release is in Redis; nothing it took is published yet.
            self.crash("task_released")
        if released:
            for delivery in await capacity.outbox(partition):
                await self._deliver(partition, delivery)
        return released

    async def _deliver(self, partition: int, delivery: Delivery) -> None:
        """Publish a released task (claim -> send -> `sent`, as `handle` does) or record it expired;
        then its decision and feed entry, the contact, the issued count, and out of the outbox."""
        assert self.capacity is not None
        entry = delivery.entry
        if delivery.status == "released":
            claim = await self.store.claim(entry.task_id)
            if claim != "sent":
                if not (claim == "pending" and self.published(entry.task_id)):
                    self.crash("task_claimed")
                    topic = self.topic_for("callcentre")
                    await self._sends.call(
                        f"send of task {entry.task_id} to {topic}",
                        lambda: self.send(topic, entry.msisdn.encode(), entry.task, list(entry.headers)))
                    self.crash("task_sent")
                await self.store.mark_sent(entry.task_id)
                self.crash("task_marked")
        first = await self.capacity.settle(delivery)
        if delivery.status == "released":
            await self.store.record_contact(entry.msisdn, "callcentre", entry.created_at_ms)
            if self.outcomes is not None:
                await self.outcomes.record_issued(entry.as_task())
        await self.capacity.done(partition, entry.task_id)
        if first:
            self.metrics.capacity(entry.region, entry.kind, delivery.status)
            log.debug("task %s (%s) for %s %s", entry.task_id, entry.kind, mask(entry.msisdn), delivery.status)

    async def _publish(self, task: Task, task_json: bytes) -> None:
        topic = self.topic_for(task.channel)
        key = task.msisdn.encode()
        headers = cloudevent_headers(task, self.tz)
        await self._sends.call(
            f"send of task {task.task_id} to {topic}",
            lambda: self.send(topic, key, task_json, headers),
        )
        log.debug("task %s (%s) for %s published to %s", task.task_id, task.kind, mask(task.msisdn), topic)

    async def _record_issued(
        self,
        decision: Decision,
        task_json: bytes | None,
        trigger_kafka_ts_ms: int | None,
        published_at: float | None = None,
    ) -> Decision:
        task = decision.task
        first = await self.store.record_decision(decision, task_json)
        await self.store.record_contact(task.msisdn, task.channel, task.created_at_ms)
        if self.outcomes is not None:
            await self.outcomes.record_issued(task)
        if first:
            self.metrics.task(task.channel, task.kind, "issued", None)
            if trigger_kafka_ts_ms is not None and published_at is not None:
                self.metrics.observe_end_to_end(task.channel, published_at - trigger_kafka_ts_ms / 1000)
        return decision
