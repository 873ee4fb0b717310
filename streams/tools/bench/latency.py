"""Bench step 4: latency at half of the worker's rate, from outside and as the worker counts it."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import orjson

from rules.events import BILLING, USAGE
from streams.settings import Settings
from streams.tools.bench.kafka import make_consumer, partitions_of
from streams.tools.bench.measure import e2e_buckets, events_counted, histogram_quantile, percentile
from streams.tools.bench.run import POLL_S, STEPS, Run
from streams.tools.bench.workload import prepaid_msisdns
from streams.tools.harness import WorkerProcess


def step_latency(run: Run, settings: Settings, w: WorkerProcess, rate_b: float, duration_s: float) -> dict[str, Any]:
    """Produce at half of b's rate for `duration_s`; measure tasks end to end and the usage backlog."""
    from confluent_kafka import KafkaError, TopicPartition

    from streams.tools.replay import make_producer
    from streams.topics import TASKS_SMS

    wl = run.workload
    rate = rate_b / 2
    n_usage = max(1, min(int(rate * duration_s), 2_000_000))
    prepaid = prepaid_msisdns(wl)
    n_triggers = min(len(prepaid), max(1, int(10 * duration_s)))
    triggers = random.Random(wl.seed + 2).sample(prepaid, n_triggers)
    task = run.step(f"4/{STEPS} latency at {rate:,.0f} events/s", duration_s)
    producer = make_producer(settings, **{"linger.ms": 1})
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failed.append(err.name())

    def send(base: str, doc: dict[str, Any]) -> None:
        while True:
            try:
                producer.produce(settings.topic(base), key=doc["msisdn"].encode(), value=orjson.dumps(doc),
                                 on_delivery=delivered)
                return
            except BufferError:
                producer.poll(0.01)

    def counted() -> float | None:
        s = w.metrics()
        return None if s is None else events_counted(s)[0]

    def wait_counted(target: float, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        c = counted()
        while time.monotonic() < deadline and (c is None or c < target):
            w.check_alive()
            time.sleep(POLL_S)
            c = counted()
        return c

    # Set-up: a known balance of 50 CNY for the trigger subscribers, so that the 5 CNY balance
    # sent during the phase is a crossing below 10 CNY, which issues a balance_low SMS task at once
    # (not a marketing task: no hold-out, no cooldown; CONTRACT §5).
    base_count = counted() or 0.0
    for j, msisdn in enumerate(triggers):
        send(BILLING, {"event_id": f"bl{j:08d}a", "msisdn": msisdn, "ts": wl.iso(wl.live_start_s - 60),
                       "type": "balance", "balance": 50.0})
    producer.flush(30)
    wait_counted(base_count + len(triggers), 60.0)

    # Task consumer: reads the SMS task topic from its current end, in a thread.
    sms_topic = settings.topic(TASKS_SMS)
    tc = make_consumer(settings, **{"fetch.wait.max.ms": 10})
    parts = partitions_of(tc, sms_topic)
    tc.assign([TopicPartition(sms_topic, p, tc.get_watermark_offsets(TopicPartition(sms_topic, p), timeout=10)[0])
               for p in parts])
    sent_at: dict[str, float] = {}
    got_at: dict[str, float] = {}
    stop = threading.Event()
    wanted = set(triggers)

    def read_tasks() -> None:
        while not stop.is_set():
            for msg in tc.consume(100, 0.1):
                if msg.error():
                    continue
                now = time.monotonic()
                try:
                    doc = orjson.loads(msg.value())
                except orjson.JSONDecodeError:
                    continue
                m = doc.get("msisdn")
                if doc.get("kind") == "balance_low" and m in wanted and m not in got_at:
                    got_at[m] = now

    reader = threading.Thread(target=read_tasks, name="bench-task-reader", daemon=True)
    reader.start()
    try:
        before = w.metrics() or {}
        hist_before = e2e_buckets(before, "sms")
        count0 = events_counted(before)[0]
        rng = random.Random(wl.seed + 3)
        backlog: list[tuple[float, float]] = []  # (elapsed s, events produced but not yet counted)
        produced = 0
        fired = 0
        started = time.monotonic()
        next_sample = started
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= duration_s:
                break
            due = min(n_usage, int(rate * elapsed))
            while produced < due:
                ts = wl.live_start_s + elapsed
                send(USAGE, wl.usage(rng, f"l{produced:012d}", wl.msisdn(rng.randrange(wl.subscribers)), ts))
                produced += 1
            while fired < n_triggers and fired * duration_s / n_triggers <= elapsed:
                msisdn = triggers[fired]
                send(BILLING, {"event_id": f"bl{fired:08d}b", "msisdn": msisdn,
                               "ts": wl.iso(wl.live_start_s + elapsed), "type": "balance", "balance": 5.0})
                sent_at[msisdn] = time.monotonic()
                fired += 1
            producer.poll(0)
            if time.monotonic() >= next_sample:
                c = counted()
                if c is not None:
                    backlog.append((elapsed, max(0.0, produced + fired - (c - count0))))
                next_sample += 0.25
                run.progress.update(task, completed=min(elapsed, duration_s))
            time.sleep(0.002)
        producer.flush(30)
        run.progress.update(task, completed=duration_s)
        expected_total = count0 + produced + fired
        final = wait_counted(expected_total, 60.0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(got_at) < fired:
            time.sleep(0.1)
        after = w.metrics() or {}
    finally:
        stop.set()
        reader.join(5)
        tc.close()
    hist_after = e2e_buckets(after, "sms")
    delta = [(le, hist_after.get(le, 0.0) - hist_before.get(le, 0.0)) for le in hist_after]
    n_hist = max((c for _, c in delta), default=0.0)
    outside = [got_at[m] - sent_at[m] for m in sent_at if m in got_at]
    lag_s = [b / rate for _, b in backlog]
    return {
        "rate_target_per_s": rate, "duration_s": duration_s, "usage_events": produced,
        "caught_up": final is not None and final >= expected_total, "produce_failures": len(failed),
        "tasks_end_to_end": {
            "method": "balance_low SMS task: produce() of the triggering billing event to the task read "
                      "back from the task topic by the bench (outside view, includes both clients' batching)",
            "triggers": fired, "tasks_seen": len(outside),
            "p50_s": percentile(outside, 0.5), "p95_s": percentile(outside, 0.95),
            "p99_s": percentile(outside, 0.99), "max_s": max(outside, default=None),
        },
        "worker_histogram": {
            "method": "delta of churnlight_end_to_end_seconds{channel=sms} over the phase; quantiles "
                      "interpolated inside buckets as histogram_quantile does",
            "tasks": n_hist,
            "p50_s": histogram_quantile(0.5, delta), "p95_s": histogram_quantile(0.95, delta),
            "p99_s": histogram_quantile(0.99, delta),
        },
        "usage_lag_estimate": {
            "method": "ESTIMATE: backlog (events produced minus churnlight_events_total, sampled every "
                      "0.25 s) divided by the produce rate (Little's law); not a per-event measurement",
            "samples": len(lag_s), "p50_s": percentile(lag_s, 0.5), "p95_s": percentile(lag_s, 0.95),
            "p99_s": percentile(lag_s, 0.99),
        },
    }

