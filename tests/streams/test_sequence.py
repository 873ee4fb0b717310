"""The processor applies a partition's records in offset order only: a gap is read again, never skipped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from faust.types import TP

from rules.ruleset import load_rule_set
from streams.tools.backtest import HistorySource, history_processor, message
from streams.metrics import Metrics
from streams.runtime.processor import Processor
from streams.runtime.reader import Record
from streams.runtime.store import partition_of
from streams.settings import Settings
from tests.conftest import sample_sum

MSISDN = "13900000001"


class SeekingConsumer(HistorySource):
    def __init__(self, partitions: int) -> None:
        self.seeks: list[tuple[TP, int]] = []

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def _pipeline(tmp_path: Path) -> tuple[Processor, SeekingConsumer, Metrics]:
    settings = Settings(data_dir=tmp_path, partitions=4)
    consumer = SeekingConsumer(settings.partitions)
    metrics = Metrics()

    async def send(base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    pipeline = history_processor(settings, metrics, load_rule_set("cmcc-2010"), send, source=consumer)
    return pipeline, consumer, metrics


def _usage(offset: int) -> Record:
    value = {"event_id": f"u{offset}", "msisdn": MSISDN, "ts": f"2026-07-01T10:{offset:02d}:00+08:00",
             "type": "voice", "direction": "out", "minutes": 1.0, "charge": 1.0}
    partition = partition_of(MSISDN.encode(), 4)
    return message("usage.events", partition, offset, MSISDN.encode(), orjson.dumps(value))


def _applied(metrics: Metrics) -> float:
    return sample_sum(metrics.render().decode(), "churnlight_events_total", {"outcome": "applied"})


def test_a_gap_is_read_again_from_the_states_offset_and_what_came_past_it_is_not_applied(tmp_path: Path) -> None:
    pipeline, consumer, metrics = _pipeline(tmp_path)
    tp = TP("usage.events", partition_of(MSISDN.encode(), 4))

    async def run() -> None:
        await pipeline.process([_usage(0), _usage(1), _usage(2)])
        assert _applied(metrics) == 3 and consumer.seeks == []
        # Offsets 3 and 4 never arrive (dropped by the consumer): 5 and 6 must wait for them.
        await pipeline.process([_usage(5), _usage(6)])
        assert _applied(metrics) == 3
        assert consumer.seeks[0] == (tp, 3)
        # The re-read from 3 on is applied in order, and only once.
        await pipeline.process([_usage(3), _usage(4), _usage(5), _usage(6)])
        assert _applied(metrics) == 7
        assert sample_sum(metrics.render().decode(), "churnlight_rewinds_total", {"topic": "usage.events"}) == 1

    asyncio.run(run())


def test_a_gap_the_re_read_shows_twice_is_real_and_accepted(tmp_path: Path) -> None:
    # Offset 1 is a transaction's control record: no record is ever delivered there.
    pipeline, consumer, metrics = _pipeline(tmp_path)
    tp = TP("usage.events", partition_of(MSISDN.encode(), 4))

    async def run() -> None:
        await pipeline.process([_usage(0), _usage(2)])
        assert _applied(metrics) == 1
        await pipeline.process([_usage(2), _usage(3)])  # the re-read starts at 2: once is not enough
        assert _applied(metrics) == 1
        await pipeline.process([_usage(2), _usage(3)])  # at 2 again: there is nothing before it
        assert _applied(metrics) == 3
        assert consumer.seeks == [(tp, 1), (tp, 1)]

    asyncio.run(run())
