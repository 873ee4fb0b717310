"""Days close under live traffic too: the wait for fresh records to age never becomes a wait forever."""

from __future__ import annotations

import time

import orjson

from tests.conftest import WorkerProc, produce, wait_for
from tests.streams.scripted import at, usage

MSISDN = "13900000001"


def _open_window_end(worker: WorkerProc) -> str | None:
    status, body = worker.get(f"/subscribers/{MSISDN}")
    return body["window"]["to"] if status == 200 and body.get("window") else None


def test_a_day_closes_while_fresh_records_keep_arriving(worker: WorkerProc) -> None:
    profile = {"msisdn": MSISDN, "region": "zunyi", "brand": "gotone", "updated_at": at(0, 0)}
    produce(worker.settings, [("subscriber.profiles", MSISDN.encode(), orjson.dumps(profile)),
                              ("usage.events", MSISDN.encode(), orjson.dumps(usage(MSISDN, 0, 1.0, 1.0)))])
    worker.start()
    wait_for(lambda: worker.get(f"/subscribers/{MSISDN}")[0] == 200, timeout_s=30, what="the subscriber")
    # Day 1's usage, produced continuously (each record just produced: Kafka time = now): the
    # close of day 0 waits for the first of them to age, not for the traffic to stop.
    closed_during_traffic = False
    deadline = time.monotonic() + 12
    n = 0
    while time.monotonic() < deadline:
        event = {**usage(MSISDN, 1, 0.1, 0.1), "event_id": f"live-{n}", "ts": at(1, 10 + n % 10, n % 60)}
        produce(worker.settings, [("usage.events", MSISDN.encode(), orjson.dumps(event))])
        n += 1
        if _open_window_end(worker) == "2026-07-01":  # the window before day 1 opens ends on day 0
            closed_during_traffic = True
            break
        time.sleep(0.1)
    assert closed_during_traffic, f"day 0 did not close while day 1's records kept arriving ({n} sent)"
