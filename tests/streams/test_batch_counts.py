"""A batch's events are counted once its tasks and outputs are out, and once only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from rules.ruleset import load_rule_set
from rules.tasks import Task
from streams.tools.backtest import history_processor, message
from streams.metrics import Metrics
from streams.runtime.processor import Processor
from streams.runtime.reader import Record
from streams.runtime.store import partition_of
from streams.settings import Settings

PARTITIONS = 4
MSISDN = "13900000007"
P = partition_of(MSISDN.encode(), PARTITIONS)


class HeldTasks:
    """Task delivery that waits until released (Redis or the broker slow), or fails."""

    degraded = False

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.fail = False
        self.handled: list[Task] = []

    async def handle(self, task: Task, *, port_out_open: bool, trigger_kafka_ts_ms: int | None) -> Any:
        await self.release.wait()
        if self.fail:
            raise ConnectionError("redis away")
        self.handled.append(task)


def _batch() -> list[Record]:
    profile = {"msisdn": MSISDN, "region": "zunyi", "brand": "gotone", "segment": "high",
               "activated_on": "2020-01-01", "prepaid": True, "contract": None, "photo": None,
               "updated_at": "2026-07-01T00:00:00+08:00"}
    balances = [{"event_id": f"b{i}", "msisdn": MSISDN, "ts": f"2026-07-02T1{i}:00:00+08:00", "type": "balance",
                 "balance": balance} for i, balance in enumerate((100.0, 1.0))]
    return [message("subscriber.profiles", P, 0, MSISDN.encode(), orjson.dumps(profile)),
            *(message("billing.events", P, i, MSISDN.encode(), orjson.dumps(b)) for i, b in enumerate(balances)),
            message("usage.events", P, 0, MSISDN.encode(), b"{not json")]


def _counted(metrics: Metrics, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples
               if s.name == name)


def _pipeline(tmp_path: Path, tasks: HeldTasks, metrics: Metrics) -> Processor:
    async def send(base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return history_processor(Settings(data_dir=tmp_path, partitions=PARTITIONS), metrics,
                             load_rule_set("cmcc-2010"), send, tasks=tasks)


def test_a_batch_is_counted_only_once_its_tasks_are_out(tmp_path: Path) -> None:
    metrics, tasks = Metrics(), HeldTasks()
    pipeline = _pipeline(tmp_path, tasks, metrics)

    async def run() -> tuple[float, float, float, float]:
        batch = asyncio.create_task(pipeline.process(_batch()))
        await asyncio.sleep(0.2)  # the balance_low task is waiting on its delivery
        during = _counted(metrics, "churnlight_events_total"), _counted(metrics, "churnlight_deadletter_total")
        tasks.release.set()
        await batch
        return (*during, _counted(metrics, "churnlight_events_total"),
                _counted(metrics, "churnlight_deadletter_total"))

    events_during, dead_during, events_after, dead_after = asyncio.run(run())
    assert [t.kind for t in tasks.handled] == ["balance_low"]
    assert (events_during, dead_during) == (0, 0)
    assert (events_after, dead_after) == (4, 1)  # the profile, two balances, one bad usage record


def test_a_failed_batch_is_not_counted(tmp_path: Path) -> None:
    metrics, tasks = Metrics(), HeldTasks()
    tasks.fail = True
    tasks.release.set()
    pipeline = _pipeline(tmp_path, tasks, metrics)

    async def run() -> None:
        try:
            await pipeline.process(_batch())
        except* ConnectionError:
            pass  # the reader reads the batch again from the state's offsets

    asyncio.run(run())
    assert _counted(metrics, "churnlight_events_total") == 0
    assert _counted(metrics, "churnlight_deadletter_total") == 0
