"""Tests for sinks.tasks: decisions published to the embedded broker and recorded in real Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import time as clock_time
from typing import Any

import orjson
import pytest
import redis as redis_lib
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from rules.policy import Decision
from rules.task_message import Task
from rules.vocabulary import Channel
from sinks.redis_store import FEED, PolicyStore, contact_key, task_key
from sinks.tasks import TaskSink
from streams.embedded import EmbeddedStack
from streams.metrics import Metrics
from streams.settings import Settings
from streams.topics import TASK_TOPIC, TASKS_CALLCENTRE, TASKS_SMS
from tests.sinks.test_redis_store import MSISDN, NOON, SALT, TZ, at, make_task

TRIGGER_TS_MS = NOON + 1_500  # the Kafka timestamp of the triggering event
NOW_S = (NOON + 2_000) / 1000  # the injected wall clock: published 0.5 s later


@dataclass(frozen=True)
class Rules:
    """The policy fields of cmcc-2010."""

    port_out_guard: bool = True
    holdout_bp: int = 500
    cooldown_days: int = 7
    quiet_start: clock_time = clock_time(21, 0)
    quiet_end: clock_time = clock_time(8, 0)


@dataclass
class Sent:
    """What the real producer got acknowledged, in order: (topic base, task_id)."""

    acked: list[tuple[str, str]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [tid for _, tid in self.acked]


@pytest.fixture
def task_topics(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka})
    futures = admin.create_topics([NewTopic(settings.topic(t), 1, 1) for t in (TASKS_CALLCENTRE, TASKS_SMS)])
    for fut in futures.values():
        fut.result(15)


@pytest.fixture
async def producer(settings: Settings, task_topics: None) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka, acks="all")
    await p.start()
    yield p
    await p.stop()


def sender(settings: Settings, producer: AIOKafkaProducer, sent: Sent) -> Callable[..., Any]:
    """Return a `send` that produces for real and returns once the broker acknowledged."""

    async def send(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        await producer.send_and_wait(settings.topic(topic), value=value, key=key, headers=headers)
        sent.acked.append((topic, orjson.loads(value)["task_id"]))

    return send


def read_topic(settings: Settings, base: str) -> list[Any]:
    """Return every message of `base` (one partition) up to its high watermark."""
    c = Consumer({"bootstrap.servers": settings.kafka, "group.id": "reader", "enable.auto.commit": False})
    try:
        tp = TopicPartition(settings.topic(base), 0)
        low, high = c.get_watermark_offsets(tp, timeout=15)
        c.assign([TopicPartition(tp.topic, 0, low)])
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while (not out or out[-1].offset() < high - 1) and high > low and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
        assert high == low or out[-1].offset() == high - 1, f"read {len(out)} of {high - low} on {base}"
        return out
    finally:
        c.close()


def feed(redis_client: redis_lib.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in redis_client.xrange(FEED)]


def tasks_total(metrics: Metrics, channel: Channel, kind: str, status: str) -> float:
    value = metrics.registry.get_sample_value(
        "churnlight_tasks_total", {"channel": channel, "kind": kind, "status": status}
    )
    return value or 0.0


@dataclass
class Harness:
    sink: TaskSink
    store: PolicyStore
    sent: Sent
    metrics: Metrics

    async def handle(self, task: Task, *, port_out_open: bool = False, trigger: int | None = TRIGGER_TS_MS) -> Decision:
        return await self.sink.handle(task, port_out_open=port_out_open, trigger_kafka_ts_ms=trigger)


def make_harness(url: str, settings: Settings, producer: AIOKafkaProducer) -> Harness:
    store = PolicyStore.from_url(url, tz=TZ)
    sent, metrics = Sent(), Metrics()
    sink = TaskSink(
        store, sender(settings, producer, sent), metrics, tz=TZ, salt=SALT, rules=Rules(),
        topic_for=TASK_TOPIC.__getitem__, now=lambda: NOW_S,
    )
    return Harness(sink, store, sent, metrics)


@pytest.fixture
async def h(settings: Settings, redis_client: redis_lib.Redis, producer: AIOKafkaProducer) -> AsyncIterator[Harness]:
    assert settings.redis is not None
    harness = make_harness(settings.redis.get_secret_value(), settings, producer)
    yield harness
    await harness.store.aclose()


# -- publication -------------------------------------------------------------------------------


async def test_issued_task_is_published_with_cloudevents_headers(
    h: Harness, settings: Settings, redis_client: redis_lib.Redis
) -> None:
    task = make_task("red_light")
    decision = await h.handle(task)
    assert decision == Decision(task, "issued", None)
    [msg] = read_topic(settings, TASKS_CALLCENTRE)
    assert msg.key() == MSISDN.encode()
    assert orjson.loads(msg.value()) == task.to_message(TZ)
    assert msg.headers() == [
        ("ce_specversion", b"1.0"),
        ("ce_type", b"churnlight.task.red_light.v1"),
        ("ce_source", b"churnlight/cmcc-2010"),
        ("ce_id", task.task_id.encode()),
        ("ce_time", b"2026-10-03T12:00:00+08:00"),
        ("content-type", b"application/json"),
        ("ce_dataschema", b"urn:churnlight:schema:retention.tasks.callcentre:v1"),
    ]
    assert read_topic(settings, TASKS_SMS) == []
    # Bookkeeping: sent, in the feed, contact recorded at the task's event time, counted once.
    assert redis_client.get(task_key(task.task_id)) == b"sent"
    [entry] = feed(redis_client)
    assert (entry["task_id"], entry["status"], entry["reason"]) == (task.task_id, "issued", "")
    assert entry["task"].encode() == msg.value()
    assert redis_client.hget(contact_key(MSISDN), "callcentre") == b"2026-10-03T12:00:00+08:00"
    assert tasks_total(h.metrics, "callcentre", "red_light", "issued") == 1
    e2e = h.metrics.registry.get_sample_value("churnlight_end_to_end_seconds_sum", {"channel": "callcentre"})
    assert e2e == pytest.approx(0.5)


async def test_task_handled_twice_is_sent_once(h: Harness, settings: Settings, redis_client: redis_lib.Redis) -> None:
    red = make_task("red_light")
    low = make_task("balance_low")  # not marketing: no cooldown, the claim alone holds it
    for _ in range(2):
        assert (await h.handle(red)).issued
        assert (await h.handle(low)).issued
    # The replayed red task is not re-decided into a cooldown by its own recorded contact.
    assert await h.handle(red) == Decision(red, "issued", None)
    assert h.sent.ids() == [red.task_id, low.task_id]
    assert len(read_topic(settings, TASKS_CALLCENTRE)) == 1
    assert len(read_topic(settings, TASKS_SMS)) == 1
    assert [e["task_id"] for e in feed(redis_client)] == [red.task_id, low.task_id]
    assert tasks_total(h.metrics, "callcentre", "red_light", "issued") == 1
    assert tasks_total(h.metrics, "sms", "balance_low", "issued") == 1
    assert h.metrics.registry.get_sample_value("churnlight_end_to_end_seconds_count", {"channel": "sms"}) == 1


async def test_pending_claim_from_a_crashed_attempt_is_sent(
    h: Harness, settings: Settings, redis_client: redis_lib.Redis
) -> None:
    task = make_task("red_light")
    # A previous process claimed the task and died before the broker acknowledged it.
    assert await h.store.claim(task.task_id) == "new"
    assert (await h.handle(task)).issued
    assert h.sent.ids() == [task.task_id]
    assert redis_client.get(task_key(task.task_id)) == b"sent"
    assert len(feed(redis_client)) == 1
    assert tasks_total(h.metrics, "callcentre", "red_light", "issued") == 1
    await h.handle(task)
    assert h.sent.ids() == [task.task_id]
    assert len(read_topic(settings, TASKS_CALLCENTRE)) == 1


async def test_sent_task_without_recorded_decision_is_recorded_not_resent(
    h: Harness, settings: Settings, redis_client: redis_lib.Redis
) -> None:
    task = make_task("red_light")
    # A previous process published the task and died right after marking it sent.
    await h.store.claim(task.task_id)
    await h.store.mark_sent(task.task_id)
    assert (await h.handle(task)).issued
    assert h.sent.ids() == []
    assert read_topic(settings, TASKS_CALLCENTRE) == []
    [entry] = feed(redis_client)
    assert (entry["task_id"], entry["status"]) == (task.task_id, "issued")
    assert redis_client.hget(contact_key(MSISDN), "callcentre") == b"2026-10-03T12:00:00+08:00"
    assert tasks_total(h.metrics, "callcentre", "red_light", "issued") == 1
    # This process did not publish it, so it has no latency to report.
    assert h.metrics.registry.get_sample_value("churnlight_end_to_end_seconds_count", {"channel": "callcentre"}) in (None, 0)


async def test_quiet_hours_deferral_is_published_and_kept_on_replay(
    h: Harness, settings: Settings
) -> None:
    task = make_task("yellow_light", created_at_ms=at(2026, 10, 3, 22, 30))
    first = await h.handle(task)
    assert first.issued and first.task.send_after_ms == at(2026, 10, 4, 8)
    [msg] = read_topic(settings, TASKS_SMS)
    assert orjson.loads(msg.value())["send_after"] == "2026-10-04T08:00:00+08:00"
    assert ("ce_type", b"churnlight.task.yellow_light.v1") in msg.headers()
    assert await h.handle(task) == first


# -- suppression -------------------------------------------------------------------------------


async def test_suppressed_tasks_go_to_the_feed_with_their_reason_and_are_never_sent(
    h: Harness, settings: Settings, redis_client: redis_lib.Redis
) -> None:
    redis_client.sadd("churnlight:optout:sms", MSISDN)
    yellow = make_task("yellow_light")
    guarded = make_task("contract_expiry", period="2027-01-31|deposit_match")
    assert await h.handle(yellow) == Decision(yellow, "suppressed", "opt_out")
    assert await h.handle(guarded, port_out_open=True) == Decision(guarded, "suppressed", "port_out_guard")
    # Replayed after the subscriber opted in again and the request closed: the first decision stands.
    redis_client.srem("churnlight:optout:sms", MSISDN)
    assert await h.handle(yellow) == Decision(yellow, "suppressed", "opt_out")
    assert await h.handle(guarded) == Decision(guarded, "suppressed", "port_out_guard")
    assert h.sent.ids() == []
    assert read_topic(settings, TASKS_SMS) == [] and read_topic(settings, TASKS_CALLCENTRE) == []
    entries = feed(redis_client)
    assert [(e["task_id"], e["status"], e["reason"]) for e in entries] == [
        (yellow.task_id, "suppressed", "opt_out"),
        (guarded.task_id, "suppressed", "port_out_guard"),
    ]
    assert orjson.loads(entries[0]["task"]) == yellow.to_message(TZ)
    # Suppressed tasks are no contacts and hold no publication claim.
    assert redis_client.exists(contact_key(MSISDN), task_key(yellow.task_id), task_key(guarded.task_id)) == 0
    assert tasks_total(h.metrics, "sms", "yellow_light", "suppressed") == 1
    assert h.metrics.registry.get_sample_value(
        "churnlight_tasks_suppressed_total", {"channel": "callcentre", "reason": "port_out_guard"}
    ) == 1


async def test_cooldown_counts_only_issued_contacts(h: Harness, settings: Settings, redis_client: redis_lib.Redis) -> None:
    redis_client.sadd("churnlight:dnc", MSISDN)
    first = make_task("red_light")
    assert (await h.handle(first)).reason == "dnc"
    redis_client.srem("churnlight:dnc", MSISDN)
    later = make_task("contract_expiry", created_at_ms=NOON + 3600_000, period="2027-01-31|deposit_match")
    assert (await h.handle(later)).issued  # the dnc-suppressed task was no contact
    again = make_task("black_light", created_at_ms=NOON + 7200_000)
    assert await h.handle(again) == Decision(again, "suppressed", "cooldown")
    assert h.sent.ids() == [later.task_id]


# -- Redis outage --------------------------------------------------------------------------------


async def test_redis_outage_waits_then_sends_exactly_once(
    own_redis: EmbeddedStack,
    settings: Settings,
    producer: AIOKafkaProducer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sinks")
    stack = own_redis
    assert stack.redis is not None
    h = make_harness(stack.redis, settings, producer)
    before, during = make_task("red_light"), make_task("balance_low")
    try:
        assert (await h.handle(before)).issued

        stack.stop_redis()  # the process goes; its port and data dir stay
        pending = asyncio.create_task(h.handle(during))
        for _ in range(300):
            if h.store.degraded:
                break
            await asyncio.sleep(0.05)
        assert h.store.degraded and h.sink.degraded
        await asyncio.sleep(2)  # the outage
        assert not pending.done()
        assert h.store.degraded
        assert h.sent.ids() == [before.task_id]

        stack.restart_redis()
        decision = await asyncio.wait_for(pending, 60)
        assert decision.issued
        assert not h.store.degraded
        # The claim of the task sent before the outage survived in the append-only file.
        assert (await h.handle(before)).issued
        assert (await h.handle(during)).issued
        assert h.sent.ids() == [before.task_id, during.task_id]
    finally:
        await h.store.aclose()
    assert [m.value() for m in read_topic(settings, TASKS_SMS)] == [orjson.dumps(during.to_message(TZ))]
    assert len(read_topic(settings, TASKS_CALLCENTRE)) == 1
    check = redis_lib.Redis.from_url(stack.redis)
    try:
        assert [f[b"task_id"].decode() for _, f in check.xrange(FEED)] == [before.task_id, during.task_id]
    finally:
        check.close()
    assert tasks_total(h.metrics, "sms", "balance_low", "issued") == 1
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("sinks") and r.levelno >= logging.WARNING]
    assert sum("unavailable" in m for m in logged) == 1
    assert sum("is back after" in m for m in logged) == 1
    assert MSISDN not in caplog.text


async def test_stop_releases_a_task_waiting_for_redis(
    own_redis: EmbeddedStack, settings: Settings, producer: AIOKafkaProducer
) -> None:
    from sinks.tasks import Stopped

    stack = own_redis
    assert stack.redis is not None
    h = make_harness(stack.redis, settings, producer)
    stack.stop_redis()
    pending = asyncio.create_task(h.handle(make_task("red_light")))
    for _ in range(300):
        if h.sink.degraded:
            break
        await asyncio.sleep(0.05)
    h.sink.stop()
    with pytest.raises(Stopped):
        await pending
    assert h.sent.ids() == []
    await h.store.aclose()
