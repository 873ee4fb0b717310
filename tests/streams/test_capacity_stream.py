"""Call-centre capacity on the embedded stack (CONTRACT §3, §5): a day with 3 x capacity of call-centre
tasks, released over the mornings after it in expected-saved-revenue order, the stale one expired;
a SIGKILL between a release and its publication releases nothing twice and loses nothing.

Day 0 is 2026-07-01 (Asia/Shanghai), as in `scripted`; the rule set is cmcc-2010 with a capacity
of 2 calls a day for zunyi. Every photographed subscriber is judged from day 30 on. At the close
of day 29 (00:00 of day 30) R1-R3 turn red (30-day ARPU 111, 114, 117 CNY, MOU 30: red_light, due
in 24 h) and B1-B3 yellow (ARPU 30, 60, 90, MOU 150: an SMS); at 02:00 B1-B3 are deactivated
(black_light, due in 72 h). All six call-centre tasks are decided before day 30's 08:00, so all
six wait, ranked by ARPU (no scoring model):
- 08:00 day 30 releases R3 and R2 (the two highest; R1 is the smallest msisdn, so an order by
  arrival or by number would differ);
- 08:00 day 31: R1 was due at 00:00, it expires; B3 and B2 are released;
- 08:00 day 32: B1 is released (due at 02:00 of day 33).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib
from pydantic import SecretStr

from rules.ruleset import RULES_DIR
from streams.embedded import EmbeddedStack, free_port
from streams.settings import Settings
from tests.conftest import API_TOKEN, WorkerProc, consume_all, env_of, produce, wait_for
from tests.streams.scripted import at, fillers, midnight, usage
from tests.streams.test_faults import _settle

CALLS = 2
R1, R2, R3, B1, B2, B3 = (f"139200000{i:02d}" for i in range(1, 7))  # none in the 5 % hold-out group
DAILY = {R1: (3.7, 1.0), R2: (3.8, 1.0), R3: (3.9, 1.0), B1: (1.0, 5.0), B2: (2.0, 5.0), B3: (3.0, 5.0)}
DAYS = 34
RELEASED = {
    "2026-07-31": [R3, R2],
    "2026-08-01": [B3, B2],
    "2026-08-02": [B1],
}
EXPIRED = [R1]
CREATED = {R1: midnight(30), R2: midnight(30), R3: midnight(30), B1: at(30, 2), B2: at(30, 2), B3: at(30, 2)}


def _history(partitions: int) -> list[tuple[str, bytes | None, bytes | None]]:
    out: list[tuple[str, dict[str, Any]]] = [
        ("subscriber.profiles", {"msisdn": m, "region": "zunyi", "brand": "easyown", "activated_on": "2020-01-01",
                                 "photo": {"month": "2026-06", "arpu": 150.0, "mou": 150.0}, "updated_at": at(0, 0)})
        for m in DAILY]
    for day in range(DAYS):
        if day == 30:
            out += [("lifecycle.events", {"event_id": f"deact-{m}", "msisdn": m, "ts": at(30, 2), "type": "deactivated"})
                    for m in (B1, B2, B3)]
        out += [("usage.events", usage(m, day, 0.5, 1.0)) for m in fillers(partitions)]
        out += [("usage.events", usage(m, day, *figures)) for m, figures in DAILY.items()
                if m in (R1, R2, R3) or day < 30]
    return [(topic, v["msisdn"].encode(), orjson.dumps(v)) for topic, v in out]


def _tenant(stack: EmbeddedStack, tmp_path: Path, name: str, **extra: Any) -> Settings:
    assert stack.kafka and stack.redis
    rules = tmp_path / f"{name}-capacity.yaml"
    text = (RULES_DIR / "cmcc-2010.yaml").read_text()
    assert "\ncapacity: {}" in text
    rules.write_text(text.replace("\ncapacity: {}", f"\ncapacity: {{zunyi: {CALLS}}}"))
    return Settings(
        kafka=stack.kafka, redis=SecretStr(stack.redis.rsplit("/", 1)[0] + f"/{8 if name == 'clean' else 7}"),
        topic_prefix=f"c{uuid.uuid4().hex[:8]}.", partitions=4, web_port=free_port(), web_host="127.0.0.1",
        api_token=SecretStr(API_TOKEN), data_dir=tmp_path / name / "data", rules=str(rules), **extra)


def _settled(worker: WorkerProc, client: redis_lib.Redis, settings: Settings) -> None:
    """Wait until the worker has read everything, its outputs stopped moving and every release
    is delivered (a partition that passed an 08:00 before the others asks again at its next tick)."""
    _settle(worker, client, settings)
    wait_for(lambda: not client.keys("churnlight:capacity:out:*"), timeout_s=60, what="the releases delivered")
    _settle(worker, client, settings)


def _feed(client: redis_lib.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange("churnlight:feed")]


def _check(settings: Settings, client: redis_lib.Redis) -> list[dict[str, Any]]:
    """Assert the calls of the mornings after day 30 and their feed; return the call-centre tasks."""
    calls = [orjson.loads(m.value()) for m in consume_all(settings, "retention.tasks.callcentre")]
    ids = [c["task_id"] for c in calls]
    assert len(ids) == len(set(ids)), "a task published twice"
    released = [m for day in RELEASED.values() for m in day]
    assert sorted(c["msisdn"] for c in calls) == sorted(released)
    for c in calls:
        # Published when released, carrying the time it was decided.
        assert c["created_at"] == CREATED[c["msisdn"]], c
        assert c["kind"] == ("red_light" if c["msisdn"] in (R1, R2, R3) else "black_light")

    # Exactly the capacity on each of the first two mornings, the rest the morning after.
    for day, who in RELEASED.items():
        assert client.hget(f"churnlight:capacity:day:{day}", "used:zunyi") == str(len(who)).encode(), day
    assert client.hlen("churnlight:capacity:zunyi:queue") == 0
    assert not client.keys("churnlight:capacity:out:*"), "deliveries left undone"

    feed = [e for e in _feed(client) if e["channel"] == "callcentre"]
    by_task: dict[str, list[tuple[str, str]]] = {}
    for e in feed:
        by_task.setdefault(e["msisdn"], []).append((e["status"], e["reason"]))
    assert by_task == {**{m: [("queued", ""), ("released", "")] for m in released},
                       **{m: [("queued", ""), ("expired", "expired")] for m in EXPIRED}}
    expired = next(e for e in feed if e["status"] == "expired")
    assert orjson.loads(expired["task"])["due_by"] == midnight(31)
    return calls


def _run_clean(settings: Settings, tmp_path: Path) -> tuple[WorkerProc, redis_lib.Redis]:
    client = redis_lib.Redis.from_url(settings.redis.get_secret_value())  # type: ignore[union-attr]
    client.flushdb()
    produce(settings, _history(settings.partitions))
    worker = WorkerProc(settings, tmp_path / "worker.log").start()
    _settled(worker, client, settings)
    return worker, client


def test_three_times_the_capacity_is_released_over_the_mornings_highest_first_the_stale_expired(
        stack: EmbeddedStack, tmp_path: Path) -> None:
    settings = _tenant(stack, tmp_path, "clean")
    worker, client = _run_clean(settings, tmp_path)
    try:
        _check(settings, client)
        assert worker.metric("churnlight_capacity_tasks_total", status="queued") == 6
        assert worker.metric("churnlight_capacity_tasks_total", status="released") == 5
        assert worker.metric("churnlight_capacity_tasks_total", status="expired", kind="red_light") == 1
        # The contract's counter keeps its statuses: the queued calls are not `issued` there.
        assert worker.metric("churnlight_tasks_total", channel="callcentre", status="issued") == 0
        # A released call is a contact, at the time it was decided.
        assert client.hget(f"churnlight:contact:{R3}", "callcentre").decode() == midnight(30)
        assert not client.exists(f"churnlight:contact:{R1}")

        # Replaying the history publishes nothing again and adds nothing to the feed.
        before = len(_feed(client))
        produce(settings, _history(settings.partitions))
        _settled(worker, client, settings)
        _check(settings, client)
        assert len(_feed(client)) == before
    finally:
        worker.stop()
        client.flushdb()


@pytest.mark.parametrize("fault", ["task_released:1", "task_sent:6"])
def test_a_sigkill_between_release_and_publication_releases_nothing_twice_and_loses_nothing(
        fault: str, stack: EmbeddedStack, tmp_path: Path) -> None:
    # A state write after every batch of 100 records: the restart re-reads little, and the
    # release it re-reaches is already done.
    settings = _tenant(stack, tmp_path, "fault", commit_interval_s=0.0, batch_max=100)
    client = redis_lib.Redis.from_url(settings.redis.get_secret_value())  # type: ignore[union-attr]
    client.flushdb()
    produce(settings, _history(settings.partitions))
    log = tmp_path / "fault.log"
    with log.open("ab") as out:
        crashed = subprocess.run([sys.executable, "-m", "streams.cli", "worker"],
                                 env={**env_of(settings), "CHURNLIGHT_FAULT": fault}, stdout=out,
                                 stderr=subprocess.STDOUT, timeout=150)
    assert crashed.returncode == -9, f"the worker never reached crash point {fault} ({crashed.returncode})"
    worker = WorkerProc(settings, log).start()
    try:
        _settled(worker, client, settings)
        _check(settings, client)
    finally:
        worker.stop()
        client.flushdb()
