"""A topic read far ahead of the others never wedges a partition: what waits for the watermark is bounded."""

from __future__ import annotations

import orjson

from streams.topics import ensure_topics
from tests.conftest import WorkerProc, produce, wait_for
from tests.streams.scripted import at

SUBSCRIBERS = [f"1390{n:07d}" for n in range(150)]
DAYS = 50
USAGE_PER_DAY = 8


def test_billing_read_weeks_ahead_of_usage_is_applied_and_the_partition_goes_on(worker: WorkerProc) -> None:
    # One partition: a fetch brings about 1 MiB of each topic, i.e. all 50 days of the billing
    # (~5 MiB) against two days of the usage; the billing ahead of the watermark waits for it,
    # in the partition's clock record, which the broker takes up to 1 MiB.
    worker.settings = worker.settings.model_copy(update={"partitions": 1})
    ensure_topics(worker.settings)
    records: list[tuple[str, bytes | None, bytes | None]] = []
    for m in SUBSCRIBERS:
        profile = {"msisdn": m, "region": "zunyi", "brand": "gotone", "prepaid": True, "updated_at": at(0, 0)}
        records.append(("subscriber.profiles", m.encode(), orjson.dumps(profile)))
    for day in range(DAYS):
        for m in SUBSCRIBERS:
            for k in range(USAGE_PER_DAY):
                records.append(("usage.events", m.encode(), orjson.dumps({
                    "event_id": f"u-{m}-{day}-{k}", "msisdn": m, "ts": at(day, 8 + k), "type": "voice",
                    "direction": "out", "minutes": 1.0, "charge": 0.5})))
            records.append(("billing.events", m.encode(), orjson.dumps({
                "event_id": f"b-{m}-{day}-{'x' * 40}", "msisdn": m, "ts": at(day, 20), "type": "topup",
                "amount": 10.0, "balance": 20.0 + day, "note": "y" * 600})))
    # Billing first: its whole topic is there before the usage that moves the watermark.
    records.sort(key=lambda r: r[0] != "billing.events")
    produce(worker.settings, records)
    worker.start()
    total = len(records)
    wait_for(lambda: worker.metric("churnlight_events_total", outcome="applied") == total, timeout_s=120,
             what=f"all {total} events applied")
    assert worker.metric("churnlight_deadletter_total") == 0
    assert "a batch failed" not in worker.log_path.read_text()
    status, body = worker.get(f"/subscribers/{SUBSCRIBERS[0]}")
    assert status == 200 and body["balance"] == 20.0 + DAYS - 1


def test_while_the_watermark_is_held_short_of_a_midnight_only_the_slowest_topic_goes_on() -> None:
    # A replay's burst: every topic's latest time is past the watermark, which waits for the records
    # just produced to age before the day closes. The parked records pass the bound: the topics
    # wait but the slowest one with records to read, or the parking would grow for the whole wait.
    from faust.types import TP

    from rules.events import BILLING, LIFECYCLE, USAGE
    from rules.schedule import PartitionClock
    from streams.metrics import Metrics
    from streams.runtime.progress import PARKED_BYTES, Progress
    from streams.runtime.sequencer import Sequencer
    from streams.settings import Settings
    from streams.tools.backtest import HistorySource

    settings = Settings()
    series = {settings.topic(t) for t in (USAGE, BILLING, LIFECYCLE)}

    class Behind(HistorySource):
        def end(self, tp: TP) -> int | None:
            return 10 ** 6 if tp.topic in series else None  # records left in each, the others read

    source = Behind()
    progress = Progress(settings, source, Sequencer(source, Metrics()))
    clock = PartitionClock()
    clock.watermark_ms = 1_000
    clock.max_ts = {USAGE: 5_000, BILLING: 90_000, LIFECYCLE: 70_000}
    value = "x" * 1024
    clock.parked = [(2_000 + i, -1, "13900000001", value, BILLING, f"billing/0/{i}", 0)
                    for i in range(PARKED_BYTES // 1024 + 1)]
    paused = progress.crowded([(0, clock)])
    assert paused == {TP(settings.topic(BILLING), 0), TP(settings.topic(LIFECYCLE), 0)}
    clock.parked = clock.parked[:10]
    assert progress.crowded([(0, clock)]) == set()
