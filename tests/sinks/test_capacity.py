"""The capacity queue in real Redis (sinks.capacity): admission, the barrier, one release per day."""

from __future__ import annotations

import asyncio
from datetime import date

import redis as redis_lib
from redis.asyncio import Redis

from rules.capacity import release_ms
from sinks.capacity import CapacityQueue, Entry
from tests.sinks.test_outcomes import client  # noqa: F401 (the fixture: an async client of the test's Redis db)
from tests.sinks.test_redis_store import TZ

DAY = date(2026, 8, 10)
EIGHT = release_ms(DAY, TZ)
HOUR = 3_600_000


def entry(task_id: str, saved: float, partition: int = 0, due_h: int = 24) -> Entry:
    return Entry(task_id, f"1390000{task_id[-4:]:0>4}", "zunyi", "red_light", "high", "red", saved,
                 EIGHT + due_h * HOUR, EIGHT - 8 * HOUR, partition, b'{"kind": "red_light"}', (("ce_id", b"x"),))


def queue(client: Redis, calls: int = 2) -> CapacityQueue:
    return CapacityQueue(client, limits={"zunyi": calls}, partitions=4, tz=TZ)


async def test_a_task_queued_before_the_release_is_admitted_once_and_fed_once(
        client: Redis, redis_client: redis_lib.Redis) -> None:
    q = queue(client)
    assert await q.admit(entry("t0001", 10), DAY) == "queued"
    assert await q.admit(entry("t0001", 10), DAY) == "held_queued"  # a retry or a replay
    statuses = [f[b"status"] for _, f in redis_client.xrange("churnlight:feed")]
    assert statuses == [b"queued"]


async def test_the_release_waits_for_every_partition_and_happens_once(client: Redis) -> None:
    q = queue(client)
    await q.register({0, 1, 2})
    for n, saved in enumerate((30, 10, 50, 20)):
        await q.admit(entry(f"t000{n}", saved, partition=n % 3), DAY)
    await q.arrive(0, DAY)
    await q.arrive(1, DAY)
    assert await q.release(DAY, EIGHT) == (False, 0)  # partition 2 has not passed 08:00 yet
    await q.arrive(2, DAY)
    # Two workers try at once: one moves the tasks, the other finds the day released.
    answers = await asyncio.gather(queue(client).release(DAY, EIGHT), queue(client).release(DAY, EIGHT))
    assert sorted(answers) == [(True, 0), (True, 2)]
    released = [d.entry.task_id for p in range(3) for d in await q.outbox(p) if d.status == "released"]
    assert sorted(released) == ["t0000", "t0002"]  # saved 30 and 50 of 30, 10, 50, 20
    assert await q.release(DAY, EIGHT) == (True, 0)


async def test_after_the_release_a_task_takes_a_free_call_at_once_until_the_day_is_full(client: Redis) -> None:
    q = queue(client)
    await q.register({0})
    await q.admit(entry("t0001", 10), DAY)
    await q.arrive(0, DAY)
    assert await q.release(DAY, EIGHT) == (True, 1)
    assert await q.admit(entry("t0002", 5), DAY) == "slot"
    assert await q.admit(entry("t0002", 5), DAY) == "held_slot"
    assert await q.admit(entry("t0003", 99), DAY) == "queued"  # the day's two calls are taken
