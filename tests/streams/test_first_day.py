"""No alarm storm at start-up: a subscriber is judged only after 30 whole days of usage (CONTRACT §5)."""

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
from tests.conftest import WorkerProc, consume_all, produce, wait_for

PARTITIONS = 4
SILENT = "13900000001"  # photographed, then an SMS a day: red once judged
OTHER = "13900000002"
P = partition_of(SILENT.encode(), PARTITIONS)


def _other_in_partition() -> str:
    n = int(OTHER)
    while partition_of(str(n).encode(), PARTITIONS) != P:
        n += 1
    return str(n)


class KnownEnds(HistorySource):
    """A source that knows how far each topic goes, as the reader does from the broker."""

    def __init__(self, ends: dict[str, int]) -> None:
        self.ends = ends

    def end(self, tp: TP) -> int | None:
        return self.ends.get(tp.topic) if tp.partition == P else None


def _profile(msisdn: str, offset: int, updated_at: str) -> Record:
    doc = {"msisdn": msisdn, "region": "zunyi", "brand": "gotone", "segment": "high", "activated_on": "2020-01-01",
           "prepaid": False, "contract": None, "photo": {"month": "2026-06", "arpu": 200.0, "mou": 300.0},
           "updated_at": updated_at}
    return message("subscriber.profiles", P, offset, msisdn.encode(), orjson.dumps(doc))


def _usage(msisdn: str, offset: int, ts: str) -> Record:
    doc = {"event_id": f"u{offset}", "msisdn": msisdn, "ts": ts, "type": "sms", "direction": "out", "charge": 0.1}
    return message("usage.events", P, offset, msisdn.encode(), orjson.dumps(doc))


def _run(tmp_path: Path, consumer: HistorySource, batches: list[list[Record]]) -> tuple[Processor, list[dict[str, Any]]]:
    changes: list[dict[str, Any]] = []

    async def send(base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        if base == "churn.lights" and value is not None:
            changes.append(orjson.loads(value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    pipeline = history_processor(Settings(data_dir=tmp_path, partitions=PARTITIONS), Metrics(),
                                 load_rule_set("cmcc-2010"), send, source=consumer)

    async def run() -> None:
        for batch in batches:
            await pipeline.process(batch)

    asyncio.run(run())
    return pipeline, changes


# Both subscribers are photographed and all but silent in July: red on the first whole window
# (1 to 30 July, judged when 31 July opens), not a day early.
JUDGED = "2026-07-31T00:00:00+08:00"
USAGE = [_usage(SILENT, i, f"2026-07-{d:02d}T12:00:00+08:00") for i, d in enumerate(range(1, 32))]


def test_profiles_read_alongside_the_first_usage_do_not_move_the_first_day_back(tmp_path: Path) -> None:
    # The profiles were updated the evening before the usage starts, and the second one is still to
    # be read when the first usage event arrives: until then the profiles hold the watermark on
    # the evening before.
    other = _other_in_partition()
    consumer = KnownEnds({"subscriber.profiles": 2, "usage.events": len(USAGE)})
    pipeline, changes = _run(tmp_path, consumer, [
        [_profile(SILENT, 0, "2026-06-30T23:00:00+08:00"), USAGE[0]],
        [_profile(other, 1, "2026-06-30T23:30:00+08:00"), *USAGE[1:]],
    ])
    assert pipeline.store.clocks[P].first_day.isoformat() == "2026-07-01"
    assert sorted((c["msisdn"], c["light"], c["at"]) for c in changes) == [(SILENT, "red", JUDGED), (other, "red", JUDGED)]


def test_a_profile_left_to_read_holds_the_days_until_it_is_read(tmp_path: Path) -> None:
    # As after a restart that had read the partition's first profile only: the rest of the profiles
    # topic comes in a later fetch than a month of usage. The second subscriber is judged with its
    # profile on the day the history gives it, as in a run that read the profiles first.
    other = _other_in_partition()
    usage = USAGE + [_usage(other, len(USAGE) + i, f"2026-07-{d:02d}T13:00:00+08:00") for i, d in
                     enumerate(range(1, 32))]
    usage.sort(key=lambda m: orjson.loads(m.value or b"{}")["ts"])
    usage = [message(m.topic, m.partition, i, m.key, m.value) for i, m in enumerate(usage)]
    profiles = [_profile(SILENT, 0, "2026-06-30T23:00:00+08:00"), _profile(other, 1, "2026-06-30T23:30:00+08:00")]
    ends = {"subscriber.profiles": 2, "usage.events": len(usage)}
    _, in_order = _run(tmp_path / "a", KnownEnds(ends), [profiles, usage])
    _, late = _run(tmp_path / "b", KnownEnds(ends), [profiles[:1], usage, profiles[1:]])
    expected = [(SILENT, "red", JUDGED), (other, "red", JUDGED)]
    assert sorted((c["msisdn"], c["light"], c["at"]) for c in in_order) == expected
    assert sorted((c["msisdn"], c["light"], c["at"]) for c in late) == expected


def test_profiles_read_before_any_usage_exists_do_not_start_the_window(worker: WorkerProc, settings: Settings) -> None:
    # A fresh deployment on the real broker: the profiles (updated in May) are all the worker has
    # read, so they alone moved the watermark, when the usage of July starts to arrive.
    other = _other_in_partition()
    produce(settings, [(m.topic, m.key, m.value) for m in (
        _profile(SILENT, 0, "2026-05-20T09:00:00+08:00"), _profile(other, 1, "2026-05-21T09:00:00+08:00"))])
    worker.start()
    wait_for(lambda: worker.metric("churnlight_events_total", outcome="applied") >= 2, what="the profiles applied")
    produce(settings, [(m.topic, m.key, m.value) for m in USAGE])
    wait_for(lambda: worker.metric("churnlight_events_total", outcome="applied") >= 2 + len(USAGE),
             timeout_s=60, what="the usage applied")
    changes = [orjson.loads(msg.value()) for msg in consume_all(settings, "churn.lights")]
    assert sorted((c["msisdn"], c["light"], c["at"]) for c in changes) == [(SILENT, "red", JUDGED), (other, "red", JUDGED)]
