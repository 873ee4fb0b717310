"""Tests for sinks.outcomes: issued tasks, outcomes and completion counts against a real Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
import redis as redis_lib
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from rules.event_types import Outcome, OutcomeStatus
from rules.kpi import TaskCounts, local_month, region_kpis
from rules.task_message import Task
from rules.vocabulary import Light
from sinks.outcomes import PARKED_TTL_S, TASKINFO_TTL_S, OutcomeStore, Stopped, kpi_key, taskinfo_key
from sinks.redis_store import PolicyStore
from sinks.retry import Backoff
from sinks.tasks import TaskSink
from streams.embedded import EmbeddedStack
from streams.metrics import Metrics, RegionKpis
from streams.settings import Settings
from tests.sinks.test_redis_store import MSISDN, TZ, make_task
from tests.sinks.test_tasks_sink import Rules

FAST = Backoff(initial_s=0.01, max_s=0.05)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * 1000


OCT_3 = ms("2026-10-03T12:00:00+08:00")


def outcome(task: Task, status: OutcomeStatus, ts: str = "2026-10-04T10:00:00+08:00") -> Outcome:
    return Outcome(task.task_id, task.msisdn, ms(ts), task.channel, status)


def task_at(created_at: str, *, kind: Any = "red_light", region: str = "zunyi", period: str | None = None) -> Task:
    created = ms(created_at)
    task = make_task(kind, created_at_ms=created, period=period or created_at)
    return replace(task, region=region)


def info(redis_client: redis_lib.Redis, task: Task) -> dict[str, str]:
    raw: dict[bytes, bytes] = redis_client.hgetall(taskinfo_key(task.task_id))  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


@pytest.fixture
async def client(settings: Settings, redis_client: redis_lib.Redis) -> AsyncIterator[Redis]:
    assert settings.redis is not None
    c = Redis.from_url(settings.redis.get_secret_value())
    yield c
    await c.aclose()


@pytest.fixture
def store(client: Redis) -> OutcomeStore:
    return OutcomeStore(client, tz=TZ, backoff=FAST)


# -- issued ------------------------------------------------------------------------------------


async def test_issue_is_counted_once_per_task(store: OutcomeStore, redis_client: redis_lib.Redis) -> None:
    red = task_at("2026-10-03T12:00:00+08:00")
    yellow = task_at("2026-10-05T09:00:00+08:00", kind="yellow_light")
    for _ in range(3):
        await store.record_issued(red)
    await store.record_issued(yellow)
    await store.record_issued(yellow)
    assert await store.kpis("2026-10", ["zunyi"]) == {"zunyi": TaskCounts(2, 0)}
    assert info(redis_client, red) == {
        "kpi": "churnlight:kpi:2026-10:zunyi",
        "region": "zunyi",
        "channel": "callcentre",
        "kind": "red_light",
        "month": "2026-10",
        "created_at": "2026-10-03T12:00:00+08:00",
    }
    assert TASKINFO_TTL_S - 60 < redis_client.ttl(taskinfo_key(red.task_id)) <= TASKINFO_TTL_S
    assert redis_client.ttl(kpi_key("2026-10", "zunyi")) == -1  # the counts are kept


async def test_month_is_the_operators_local_month(store: OutcomeStore) -> None:
    late_october = task_at("2026-10-31T23:30:00+08:00")
    # 2026-10-31T23:30Z: still October in UTC, November for the operator.
    early_november = task_at("2026-11-01T07:30:00+08:00")
    elsewhere = task_at("2026-11-01T00:00:00+08:00", region="anshun")
    for task in (late_october, early_november, elsewhere):
        await store.record_issued(task)
    assert await store.kpis("2026-10") == {"zunyi": TaskCounts(1, 0)}
    assert await store.kpis("2026-11") == {"anshun": TaskCounts(1, 0), "zunyi": TaskCounts(1, 0)}
    assert await store.kpis("2026-11", ["zunyi", "kaili"]) == {"zunyi": TaskCounts(1, 0), "kaili": TaskCounts(0, 0)}
    assert await store.kpis("2026-09") == {}
    # A completion stays with the month the task was created in.
    assert await store.record_outcome(outcome(late_october, "reached", "2026-11-02T10:00:00+08:00")) == "recorded"
    assert await store.kpis("2026-10") == {"zunyi": TaskCounts(1, 1)}
    assert await store.kpis("2026-11") == {"anshun": TaskCounts(1, 0), "zunyi": TaskCounts(1, 0)}


async def test_kpis_rejects_a_bad_month(store: OutcomeStore) -> None:
    for month in ("2026-13", "2026-1", "2026-10-01", "*"):
        with pytest.raises(ValueError):
            await store.kpis(month)


async def test_region_names_with_separators_and_glob_characters(store: OutcomeStore) -> None:
    odd = task_at("2026-10-03T12:00:00+08:00", region="gz:zunyi*[1]")
    await store.record_issued(odd)
    await store.record_issued(task_at("2026-10-03T12:00:00+08:00", region="gz", period="other"))
    assert await store.kpis("2026-10") == {"gz": TaskCounts(1, 0), "gz:zunyi*[1]": TaskCounts(1, 0)}
    assert await store.kpis("2026-10", ["gz:zunyi*[1]"]) == {"gz:zunyi*[1]": TaskCounts(1, 0)}


# -- outcomes ----------------------------------------------------------------------------------


async def test_outcomes_dedup_on_task_and_status(store: OutcomeStore, redis_client: redis_lib.Redis) -> None:
    task = task_at("2026-10-03T12:00:00+08:00")
    await store.record_issued(task)
    assert await store.record_outcome(outcome(task, "reached", "2026-10-04T10:00:00+08:00")) == "recorded"
    # The same status again, even at another time, is a duplicate; a new status is not.
    assert await store.record_outcome(outcome(task, "reached", "2026-10-04T10:00:00+08:00")) == "duplicate"
    assert await store.record_outcome(outcome(task, "reached", "2026-10-04T11:00:00+08:00")) == "duplicate"
    assert await store.record_outcome(outcome(task, "accepted", "2026-10-04T10:05:00+08:00")) == "recorded"
    assert await store.record_outcome(outcome(task, "accepted", "2026-10-04T10:05:00+08:00")) == "duplicate"
    # Several final outcomes: the task completed once, at the first.
    assert await store.kpis("2026-10", ["zunyi"]) == {"zunyi": TaskCounts(1, 1)}
    held = info(redis_client, task)
    assert (held["status"], held["status_ts_ms"], held["completed"]) == (
        "accepted", str(ms("2026-10-04T10:05:00+08:00")), "reached",
    )
    assert {k for k in held if k.startswith("o:")} == {"o:reached", "o:accepted"}


async def test_latest_status_is_by_event_time(store: OutcomeStore, redis_client: redis_lib.Redis) -> None:
    task = task_at("2026-10-03T12:00:00+08:00")
    await store.record_issued(task)
    assert await store.record_outcome(outcome(task, "declined", "2026-10-04T10:05:00+08:00")) == "recorded"
    # An earlier outcome arriving late is recorded but is not the latest.
    assert await store.record_outcome(outcome(task, "reached", "2026-10-04T10:00:00+08:00")) == "recorded"
    held = info(redis_client, task)
    assert (held["status"], held["completed"]) == ("declined", "declined")
    assert await store.kpis("2026-10", ["zunyi"]) == {"zunyi": TaskCounts(1, 1)}


async def test_only_final_statuses_complete(client: Redis, redis_client: redis_lib.Redis) -> None:
    # A narrower choice of final statuses, e.g. a call counts only with its result.
    store = OutcomeStore(client, tz=TZ, backoff=FAST, final_statuses=frozenset({"accepted", "declined", "unreachable"}))
    task = task_at("2026-10-03T12:00:00+08:00")
    await store.record_issued(task)
    assert await store.record_outcome(outcome(task, "reached")) == "recorded"
    assert await store.kpis("2026-10", ["zunyi"]) == {"zunyi": TaskCounts(1, 0)}
    assert "completed" not in info(redis_client, task)
    assert await store.record_outcome(outcome(task, "declined", "2026-10-04T10:10:00+08:00")) == "recorded"
    assert await store.kpis("2026-10", ["zunyi"]) == {"zunyi": TaskCounts(1, 1)}


async def test_unknown_task_is_reported_and_parked(store: OutcomeStore, redis_client: redis_lib.Redis) -> None:
    task = task_at("2026-10-03T12:00:00+08:00", kind="yellow_light")
    early = outcome(task, "delivered")
    assert await store.record_outcome(early) == "unknown_task"
    assert await store.record_outcome(early) == "unknown_task"
    assert await store.record_outcome(outcome(task, "failed")) == "unknown_task"
    assert await store.kpis("2026-10") == {}
    assert 0 < redis_client.ttl(taskinfo_key(task.task_id)) <= PARKED_TTL_S
    # The task is recorded after its outcome overtook it: the completion it brought counts.
    await store.record_issued(task)
    assert await store.kpis("2026-10") == {"zunyi": TaskCounts(1, 1)}
    assert PARKED_TTL_S < redis_client.ttl(taskinfo_key(task.task_id)) <= TASKINFO_TTL_S
    assert await store.record_outcome(early) == "duplicate"
    await store.record_issued(task)
    assert await store.kpis("2026-10") == {"zunyi": TaskCounts(1, 1)}
    # An id nobody issued stays unknown and expires.
    stray = Outcome("f" * 32, MSISDN, OCT_3, "callcentre", "reached")
    assert await store.record_outcome(stray) == "unknown_task"
    assert 0 < redis_client.ttl(taskinfo_key(stray.task_id)) <= PARKED_TTL_S


async def test_concurrent_outcomes_complete_a_task_once(store: OutcomeStore) -> None:
    task = task_at("2026-10-03T12:00:00+08:00")
    await store.record_issued(task)
    statuses: list[OutcomeStatus] = ["reached", "accepted", "declined", "unreachable"]
    results = await asyncio.gather(*(store.record_outcome(outcome(task, s)) for s in statuses * 5))
    assert sorted(results) == ["duplicate"] * 16 + ["recorded"] * 4
    assert await store.kpis("2026-10", ["zunyi"]) == {"zunyi": TaskCounts(1, 1)}


class LoseFirstReply:
    """Run a script for real, then lose the first reply as a dropped connection would."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.calls = 0

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        result = await self.script(**kwargs)
        if self.calls == 1:
            raise RedisConnectionError("connection lost before the reply")
        return result


async def test_a_retry_after_a_lost_reply_counts_nothing_twice(client: Redis) -> None:
    store = OutcomeStore(client, tz=TZ, backoff=FAST)
    task = task_at("2026-10-03T12:00:00+08:00")
    store._issue = LoseFirstReply(store._issue)  # type: ignore[assignment]
    store._outcome = LoseFirstReply(store._outcome)  # type: ignore[assignment]
    await store.record_issued(task)
    # The retry finds its own marker: the caller hears `recorded`, as the first attempt said.
    assert await store.record_outcome(outcome(task, "reached")) == "recorded"
    assert (store._issue.calls, store._outcome.calls) == (2, 2)  # type: ignore[attr-defined]
    assert await store.kpis("2026-10", ["zunyi"]) == {"zunyi": TaskCounts(1, 1)}
    assert await store.record_outcome(outcome(task, "reached")) == "duplicate"


# -- from the task sink to the gauges ----------------------------------------------------------


async def test_task_sink_counts_issued_tasks_only(settings: Settings, client: Redis, redis_client: redis_lib.Redis) -> None:
    assert settings.redis is not None
    policy = PolicyStore(client, tz=TZ, backoff=FAST)
    outcomes = OutcomeStore(client, tz=TZ, backoff=FAST)
    sent: list[str] = []

    async def send(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append(topic)

    metrics = Metrics()
    sink = TaskSink(policy, send, metrics, tz=TZ, salt="churnlight", rules=Rules(), topic_for=str, backoff=FAST,
                    outcomes=outcomes)
    red = make_task("red_light", created_at_ms=OCT_3)
    assert (await sink.handle(red, port_out_open=False, trigger_kafka_ts_ms=None)).issued
    assert (await sink.handle(red, port_out_open=False, trigger_kafka_ts_ms=None)).issued  # a replay
    redis_client.sadd("churnlight:optout:sms", MSISDN)
    yellow = make_task("yellow_light", created_at_ms=OCT_3)
    assert not (await sink.handle(yellow, port_out_open=False, trigger_kafka_ts_ms=None)).issued
    assert sent == ["callcentre"]
    assert await outcomes.kpis("2026-10") == {"zunyi": TaskCounts(1, 0)}
    assert await outcomes.record_outcome(outcome(red, "unreachable")) == "recorded"
    assert await outcomes.record_outcome(outcome(yellow, "delivered")) == "unknown_task"  # never issued

    # What the worker's KPI refresh does: Redis counts and the light counts into the gauges.
    counts = await outcomes.kpis(local_month(ms("2026-10-20T09:00:00+08:00"), TZ))
    lights: dict[tuple[Light, str, str], int] = {("green", "zunyi", "gotone"): 19, ("black", "zunyi", "gotone"): 1}
    metrics.set_kpis({region: RegionKpis(*k) for region, k in region_kpis(counts, lights).items()})
    get = metrics.registry.get_sample_value
    assert get("churnlight_kpi_task_completion_ratio", {"region": "zunyi"}) == 1.0
    assert get("churnlight_kpi_retention_ratio", {"region": "zunyi"}) == 0.95
    assert get("churnlight_kpi_churn_ratio", {"region": "zunyi"}) == 0.05


# -- outage ------------------------------------------------------------------------------------


async def test_calls_wait_out_a_redis_outage(own_redis: EmbeddedStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sinks")
    assert own_redis.redis is not None
    client = Redis.from_url(own_redis.redis, socket_connect_timeout=1.0, socket_timeout=2.0)
    store = OutcomeStore(client, tz=TZ, backoff=Backoff(initial_s=0.05, max_s=0.5))
    task = task_at("2026-10-03T12:00:00+08:00")
    try:
        await store.record_issued(task)
        own_redis.stop_redis()
        pending = asyncio.create_task(store.record_outcome(outcome(task, "reached")))
        for _ in range(300):
            if store.degraded:
                break
            await asyncio.sleep(0.05)
        assert store.degraded
        await asyncio.sleep(1)
        assert not pending.done()

        own_redis.restart_redis()
        assert await asyncio.wait_for(pending, 60) == "recorded"
        assert not store.degraded
        # The issue recorded before the outage survived the restart.
        assert await store.kpis("2026-10") == {"zunyi": TaskCounts(1, 1)}

        own_redis.stop_redis()
        waiting = asyncio.create_task(store.kpis("2026-10"))
        for _ in range(300):
            if store.degraded:
                break
            await asyncio.sleep(0.05)
        store.stop()
        with pytest.raises(Stopped):
            await waiting
    finally:
        await client.aclose()
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("sinks") and r.levelno >= logging.WARNING]
    assert sum("unavailable" in m for m in logged) == 2
    assert sum("is back after" in m for m in logged) == 1
    assert MSISDN not in caplog.text
