"""Retention tasks on the embedded stack: exact tasks, feed and contact history; replay; Redis outage."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import redis as redis_lib
from pydantic import SecretStr

from streams.embedded import EmbeddedStack
from streams.settings import Settings
from tests.conftest import WorkerProc, consume_all, env_of, produce, wait_for
from tests.streams import scripted_tasks as st

TASK_TOPICS = ("retention.tasks.callcentre", "retention.tasks.sms")
CE_HEADERS = {"ce_specversion", "ce_type", "ce_source", "ce_id", "ce_time", "content-type"}


def _records(items: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, bytes | None, bytes | None]]:
    return [(topic, value["msisdn"].encode(), orjson.dumps(value)) for topic, value in items]


def _seed_redis(client: redis_lib.Redis, *, t12_opted_out: bool = False) -> None:
    client.sadd("churnlight:optout:sms", st.T8)
    client.sadd("churnlight:dnc", st.T9)
    client.hset(f"churnlight:contact:{st.T11}", "sms", st.T11_LAST_SMS_CONTACT)
    if t12_opted_out:
        client.sadd("churnlight:optout:sms", st.T12)


def _tasks(settings: Settings) -> list[tuple[str, dict[str, Any], dict[str, bytes]]]:
    out = []
    for topic in TASK_TOPICS:
        for msg in consume_all(settings, topic):
            doc = orjson.loads(msg.value())
            headers = dict(msg.headers() or [])
            assert msg.key().decode() == doc["msisdn"]
            assert CE_HEADERS <= set(headers)
            assert headers["ce_id"].decode() == doc["task_id"]
            assert headers["ce_type"].decode() == f"churnlight.task.{doc['kind']}.v1"
            out.append((topic, doc, headers))
    return out


def _issued(tasks: list[tuple[str, dict[str, Any], dict[str, bytes]]]) -> set[tuple[Any, ...]]:
    return {(topic, d["msisdn"], d["kind"], (d["offer"] or {}).get("code"), d["created_at"], d.get("send_after"))
            for topic, d, _ in tasks}


def _feed(client: redis_lib.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange("churnlight:feed")]


def _drain(worker: WorkerProc, total: int, timeout_s: float = 120) -> None:
    wait_for(lambda: worker.metric("churnlight_events_total") >= total, timeout_s=timeout_s, what=f"{total} events")


def test_scripted_history_gives_exactly_the_contract_tasks_feed_and_contacts(
    worker: WorkerProc, settings: Settings, redis_client: redis_lib.Redis
) -> None:
    _seed_redis(redis_client)
    part1, part2 = st.history(settings.partitions)
    produce(settings, _records(part1))
    worker.start()
    _drain(worker, len(part1))

    # A consent change made while the worker runs is honoured by its next decision.
    done = subprocess.run([sys.executable, "-m", "streams.cli", "consent", "add", "sms-optout", st.T12],
                          env=env_of(settings), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    produce(settings, _records(part2))
    _drain(worker, len(part1) + len(part2))

    tasks = _tasks(settings)
    assert len({d["task_id"] for _, d, _ in tasks}) == len(tasks), "a task_id was published twice"
    assert _issued(tasks) - st.EXPECTED_ISSUED == set(), "unexpected tasks"
    assert st.EXPECTED_ISSUED - _issued(tasks) == set(), "missing tasks"
    sms = [d for topic, d, _ in tasks if topic.endswith("sms")]
    assert all({"template", "vars", "send_after"} <= set(d) for d in sms)

    feed = _feed(redis_client)
    suppressed = {(e["msisdn"], e["kind"], e["reason"]) for e in feed if e["status"] == "suppressed"}
    assert suppressed == st.EXPECTED_SUPPRESSED
    issued_feed = {e["task_id"] for e in feed if e["status"] == "issued"}
    assert issued_feed == {d["task_id"] for _, d, _ in tasks}
    assert len(feed) == len(st.EXPECTED_ISSUED) + len(st.EXPECTED_SUPPRESSED)

    # Contact history: the latest issued task per channel; a suppressed task is no contact.
    latest: dict[tuple[str, str], str] = {}
    for _, d, _ in sorted(tasks, key=lambda t: t[1]["created_at"]):
        latest[(d["msisdn"], d["channel"])] = d["created_at"]
    for (msisdn, channel), when in latest.items():
        assert redis_client.hget(f"churnlight:contact:{msisdn}", channel).decode() == when
    assert redis_client.hget(f"churnlight:contact:{st.T11}", "sms").decode() == st.T11_LAST_SMS_CONTACT
    assert not redis_client.exists(f"churnlight:contact:{st.T8}")
    assert worker.metric("churnlight_tasks_total", status="issued") == len(st.EXPECTED_ISSUED)
    assert worker.metric("churnlight_tasks_suppressed_total") == len(st.EXPECTED_SUPPRESSED)

    # Replaying the whole history a second time publishes no new task and adds no feed entry.
    produce(settings, _records(part1 + part2))
    _drain(worker, 2 * (len(part1) + len(part2)))
    time.sleep(2)
    assert len(_tasks(settings)) == len(tasks)
    assert len(_feed(redis_client)) == len(feed)


def _into_an_outage(worker: WorkerProc, settings: Settings, own_redis: EmbeddedStack) -> tuple[
        Settings, redis_lib.Redis, list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]], int]:
    """Run the first part of the scripted history, stop Redis, produce the second part, and wait
    until the worker says it is degraded. Returns the settings on that Redis, a client of it, both
    parts and the number of tasks published before the outage."""
    assert own_redis.redis is not None
    worker.settings = settings = settings.model_copy(update={"redis": SecretStr(own_redis.redis)})
    client = redis_lib.Redis.from_url(own_redis.redis)
    _seed_redis(client, t12_opted_out=True)
    part1, part2 = st.history(settings.partitions)
    produce(settings, _records(part1))
    worker.start()
    _drain(worker, len(part1))
    before = len(_tasks(settings))
    own_redis.stop_redis()
    produce(settings, _records(part2))
    wait_for(lambda: worker.get("/health")[0] == 503, timeout_s=30, what="health degraded")
    return settings, client, part1, part2, before


def test_redis_outage_loses_no_task_and_sends_none_unchecked(
    worker: WorkerProc, settings: Settings, own_redis: EmbeddedStack
) -> None:
    settings, client, part1, part2, before = _into_an_outage(worker, settings, own_redis)
    assert worker.get("/health")[1]["status"] == "degraded"
    time.sleep(8)  # the outage: the stream waits, nothing is published without a policy check
    assert len(_tasks(settings)) == before
    assert worker.get("/health")[0] == 503

    own_redis.restart_redis()
    _drain(worker, len(part1) + len(part2))
    wait_for(lambda: worker.get("/health")[0] == 200, timeout_s=30, what="health back")
    tasks = _tasks(settings)
    assert len({d["task_id"] for _, d, _ in tasks}) == len(tasks)
    assert _issued(tasks) == st.EXPECTED_ISSUED
    feed = _feed(client)
    assert {(e["msisdn"], e["kind"], e["reason"]) for e in feed if e["status"] == "suppressed"} == st.EXPECTED_SUPPRESSED
    client.close()


def test_a_worker_stopped_during_a_redis_outage_exits_and_its_successor_loses_no_task(
    worker: WorkerProc, settings: Settings, own_redis: EmbeddedStack
) -> None:
    settings, client, _, _, _ = _into_an_outage(worker, settings, own_redis)
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)  # an ops engineer stops it while its batch waits on Redis
    assert worker.proc.wait(60) == 0, worker.tail()

    own_redis.restart_redis()
    worker.start()
    wait_for(lambda: _issued(_tasks(settings)) == st.EXPECTED_ISSUED, timeout_s=90, what="every task issued")
    tasks = _tasks(settings)
    assert len({d["task_id"] for _, d, _ in tasks}) == len(tasks)
    client.close()
