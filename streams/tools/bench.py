"""`churnlight bench` (issue 7): how fast one worker is next to a raw consumer, and what it costs.

Eight steps, each bounded in time and count, against the configured Kafka and Redis or an embedded
stack started for the run:

1. produce a synthetic base (a profile per subscriber, a quarter photographed) and N usage events
   spread over ~30 days in time order, murmur2-keyed, into topics under a fresh prefix;
2. (a) a raw confluent-kafka consumer (assign, no group) that decodes with orjson into a dict;
3. (b) one `churnlight worker` subprocess with full semantics, its rate read from
   `churnlight_events_total` between the first and the last progress, start-up excluded;
4. latency at half of b's rate: balance_low triggers measured end to end from outside, the
   worker's own end-to-end histogram, and a backlog/rate estimate for plain usage events;
5. state bytes per subscriber from the state changelog (latest value per key);
6. the worker's peak RSS (VmHWM);
7. recovery: SIGKILL, then a worker with an empty data dir rebuilds the state from the changelog;
8. scaling: two workers of one group on a fresh copy of the events.

No figure is invented: a step that did not run or could not measure says so in the table and the
JSON (`skipped` with a reason, or null values with a note).
"""

from __future__ import annotations

import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from rules.events import BILLING, PROFILES, USAGE
from streams.settings import Settings

console = Console(stderr=True)

DAY_S: Final = 86400
# Bulk events cover [D0 00:00, D0 + 29.5 days): 29 local days close, but none with a full 30-day
# window behind it, so no light is judged and the bulk issues no task (CONTRACT §5, start-up rule).
# The latency step continues on the afternoon of the last day, before quiet hours.
BULK_SPAN_S: Final = 29.5 * DAY_S
START_DAYS_AGO: Final = 45  # far from the wall clock: no partition counts as live
MSISDN_BASE: Final = "100"  # + 8 digits: not an allocated mobile prefix, and clearly synthetic
PHOTO_SHARE: Final = 0.25
PREPAID_SHARE: Final = 0.5
REGIONS: Final = ("zunyi", "renhuai", "chishui", "tongzi", "xishui")
BRANDS: Final = ("gotone", "mzone", "easyown")
SEGMENTS: Final = ("high", "valuable", "low")
POLL_S: Final = 0.2  # /metrics sampling period while measuring a rate: bounds the window error
STALL_S: Final = 300.0  # a worker that counts nothing new for this long is reported incomplete
PAUSE_S: Final = 5.0  # a gap this long between two increases of the count is reported as a pause
START_TIMEOUT_S: Final = 180.0
SKIPPABLE: Final = ("latency", "recovery", "scaling")
QUICK_EVENTS: Final = 3000
QUICK_SUBSCRIBERS: Final = 300
LOADED_RE: Final = re.compile(r"loaded (\d+) subscribers of partitions \[([0-9, ]*)\] in ([0-9.]+) s")


class BenchError(RuntimeError):
    """A step could not run at all; the message says which and why."""


# --- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    """What gets produced: sizes, the seed and the local calendar it lives in."""

    events: int
    subscribers: int
    zone: ZoneInfo
    start_day: date
    seed: int = 7
    # Shifts the msisdn pool. Task ids hash the msisdn, and Redis remembers published ids: against
    # a Redis that outlives the run, a fresh offset keeps this run's tasks from being deduplicated.
    msisdn_offset: int = 0

    @property
    def start_s(self) -> float:
        """Epoch seconds of local 00:00 of the first day."""
        return datetime(self.start_day.year, self.start_day.month, self.start_day.day, tzinfo=self.zone).timestamp()

    @property
    def live_start_s(self) -> float:
        """Epoch seconds where the latency step's event times begin (after every bulk event)."""
        return self.start_s + BULK_SPAN_S

    def msisdn(self, i: int) -> str:
        return f"{MSISDN_BASE}{(self.msisdn_offset + i) % 10**8:08d}"

    def iso(self, epoch_s: float) -> str:
        return datetime.fromtimestamp(int(epoch_s), self.zone).isoformat()

    def profile(self, i: int, rng: random.Random) -> dict[str, Any]:
        """Return subscriber i's profile; the same seed always gives the same base."""
        before = self.start_day - timedelta(days=1)
        photo = None
        if rng.random() < PHOTO_SHARE:
            photo = {"month": before.strftime("%Y-%m"), "arpu": round(rng.lognormvariate(4.7, 0.5), 2),
                     "mou": round(rng.lognormvariate(5.0, 0.7), 2)}
        return {
            "msisdn": self.msisdn(i), "region": rng.choice(REGIONS), "brand": rng.choice(BRANDS),
            "segment": rng.choice(SEGMENTS),
            "activated_on": (self.start_day - timedelta(days=rng.randrange(30, 5000))).isoformat(),
            "prepaid": rng.random() < PREPAID_SHARE, "contract": None, "photo": photo,
            "updated_at": self.iso(self.start_s - 3600),
        }

    def profiles(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        for i in range(self.subscribers):
            yield self.profile(i, rng)

    def usage(self, rng: random.Random, event_id: str, msisdn: str, epoch_s: float) -> dict[str, Any]:
        """Return one valid usage event (CONTRACT §1): voice 35 %, sms 25 %, data 40 %."""
        doc: dict[str, Any] = {"event_id": event_id, "msisdn": msisdn, "ts": self.iso(epoch_s)}
        r = rng.random()
        if r < 0.35:
            out = rng.random() < 0.6
            minutes = round(rng.expovariate(1 / 2.5), 2)
            doc.update(type="voice", direction="out" if out else "in", minutes=minutes,
                       charge=round(minutes * 0.19, 2) if out else 0.0)
        elif r < 0.60:
            out = rng.random() < 0.5
            doc.update(type="sms", direction="out" if out else "in", charge=0.1 if out else 0.0)
        else:
            mb = round(rng.lognormvariate(3.0, 1.0), 2)
            doc.update(type="data", mb=mb, charge=round(mb * 0.01, 2))
        return doc

    def bulk(self) -> Iterator[dict[str, Any]]:
        """Yield the N usage events in time order, msisdns drawn uniformly from the base."""
        rng = random.Random(self.seed + 1)
        step = BULK_SPAN_S / max(1, self.events)
        t0 = self.start_s
        for i in range(self.events):
            yield self.usage(rng, f"u{i:012d}", self.msisdn(rng.randrange(self.subscribers)), t0 + i * step)


def records(workload: Workload) -> Iterator[tuple[str, bytes, bytes]]:
    """Yield (topic base, key, value) for the profiles first, then the usage events."""
    for doc in workload.profiles():
        yield PROFILES, doc["msisdn"].encode(), orjson.dumps(doc)
    for doc in workload.bulk():
        yield USAGE, doc["msisdn"].encode(), orjson.dumps(doc)


def prepaid_msisdns(workload: Workload) -> list[str]:
    return [doc["msisdn"] for doc in workload.profiles() if doc["prepaid"]]


# --- small measurement helpers -----------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Return the q-quantile (0..1) of `values` by linear interpolation, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Return the q-quantile of cumulative (upper bound, count) buckets as Prometheus estimates it."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bucket: its bound is all one can say
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Return the samples of a Prometheus exposition by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def peak_rss_bytes(pid: int) -> int | None:
    """Return the peak resident set (VmHWM) of a live process, None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rate(count: float, seconds: float | None) -> float | None:
    return count / seconds if seconds and seconds > 0 and count > 0 else None


# --- the worker subprocess ---------------------------------------------------------------------


def worker_env(settings: Settings) -> dict[str, str]:
    """Return the environment that makes a `churnlight worker` run exactly with `settings`."""
    env = settings.worker_env()
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class BenchWorker:
    """One `python -m streams.cli worker` child with its own port, data dir and log file."""

    name: str
    settings: Settings
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> BenchWorker:
        from streams.embedded import _die_with_parent

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"], env=worker_env(self.settings),
                cwd=str(self.log_path.parent), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # Dies with the bench even on SIGKILL; ignores the terminal's Ctrl-C, the bench stops it.
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"worker {self.name} exited with code {code}:\n{self.tail()}")

    def _get(self, path: str, timeout_s: float = 2.0) -> tuple[int, bytes] | None:
        url = f"http://127.0.0.1:{self.settings.web_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, ValueError):
            return None

    def health(self) -> dict[str, Any] | None:
        """Return /health's body when it answers 200, else None."""
        got = self._get("/health")
        if got is None or got[0] != 200:
            return None
        try:
            doc = orjson.loads(got[1])
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]] | None:
        got = self._get("/metrics")
        if got is None or got[0] != 200:
            return None
        return parse_metrics(got[1].decode("utf-8", "replace"))

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Return seconds from start to the first 200 of /health."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if self.health() is not None:
                return time.monotonic() - self.started_at
            time.sleep(POLL_S)
        raise BenchError(f"worker {self.name} not healthy after {timeout_s:.0f} s:\n{self.tail()}")

    def peak_rss(self) -> int | None:
        return peak_rss_bytes(self.pid) if self.alive() else None

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        from streams.embedded import stop_process

        stop_process(self.proc, 20)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if "rdkafka" not in line][-lines:])


def events_counted(samples: dict[str, list[tuple[dict[str, str], float]]]) -> tuple[float, dict[str, float]]:
    """Return the sum of churnlight_events_total and its split by outcome."""
    by_outcome: dict[str, float] = {}
    for labels, value in samples.get("churnlight_events_total", []):
        outcome = labels.get("outcome", "?")
        by_outcome[outcome] = by_outcome.get(outcome, 0.0) + value
    return sum(by_outcome.values()), by_outcome


def e2e_buckets(samples: dict[str, list[tuple[dict[str, str], float]]], channel: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for labels, value in samples.get("churnlight_end_to_end_seconds_bucket", []):
        if labels.get("channel") == channel:
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + value
    return out


@dataclass
class Throughput:
    """Events counted by workers over the window from the first to the last progress."""

    expected: int
    counted: float = 0.0
    window_events: float = 0.0
    window_s: float | None = None
    startup_s: float | None = None  # worker start to the window's start, excluded from the rate
    complete: bool = False
    outcomes: dict[str, float] = field(default_factory=dict)
    # What the workers themselves report as left to read at the end (churnlight_consumer_lag,
    # refreshed every 5 s): 0 while `counted` < `expected` means events were read but never counted.
    reported_lag: float | None = None
    # Gaps of PAUSE_S or more between two increases inside the window: the rate includes them.
    pauses: int = 0
    paused_s: float = 0.0
    note: str | None = None

    @property
    def events_per_s(self) -> float | None:
        return _rate(self.window_events, self.window_s)

    def as_json(self) -> dict[str, Any]:
        return {"expected": self.expected, "counted": self.counted, "complete": self.complete,
                "window_events": self.window_events, "window_s": self.window_s,
                "events_per_s": self.events_per_s, "startup_s": self.startup_s,
                "outcomes": self.outcomes, "reported_lag": self.reported_lag, "pauses": self.pauses,
                "paused_s": self.paused_s, "note": self.note}


def measure_throughput(
    workers: list[BenchWorker],
    expected: int,
    on_progress: Callable[[float], None],
    *,
    ready: Callable[[], bool] | None = None,
    max_s: float,
) -> Throughput:
    """Sample the workers' event counters until `expected` are counted, they stall, or `max_s` passes.

    The window runs from the last sample before the first increase (or from the first sample once
    `ready()` holds, when given) to the first sample showing the final count, so start-up and the
    tail of idle sampling are both left out; the sampling period bounds the error of its ends.
    """
    result = Throughput(expected)
    samples: list[tuple[float, float]] = []
    outcomes: dict[str, float] = {}
    began = time.monotonic()
    last_change = began
    last_total = -1.0
    is_ready = ready is None
    while True:
        now = time.monotonic()
        for w in workers:
            w.check_alive()
        scraped = [w.metrics() for w in workers]
        if all(s is not None for s in scraped):
            total = 0.0
            outcomes = {}
            result.reported_lag = 0.0
            for s in scraped:
                assert s is not None
                t, by = events_counted(s)
                total += t
                result.reported_lag += sum(v for _, v in s.get("churnlight_consumer_lag", []))
                for k, v in by.items():
                    outcomes[k] = outcomes.get(k, 0.0) + v
            if total != last_total:
                last_change, last_total = now, total
            if not is_ready and ready is not None and ready():
                is_ready = True  # the window starts at this sample
            if is_ready:
                samples.append((now, total))
            on_progress(total)
            if total >= expected:
                break
        if now - last_change > STALL_S:
            result.note = f"stopped: no progress for {STALL_S:.0f} s"
            break
        if now - began > max_s:
            result.note = f"stopped after the step's limit of {max_s:.0f} s"
            break
        time.sleep(POLL_S)
    result.outcomes = outcomes
    if not samples:
        result.note = result.note or "no metrics sample"
        return result
    final = samples[-1][1]
    result.counted = final
    result.complete = final >= expected
    first_up = next((i for i, (_, c) in enumerate(samples) if c > samples[0][1]), None)
    if first_up is None:
        result.note = result.note or "no progress inside the measured window"
        return result
    start_t, start_c = samples[max(0, first_up - 1)]
    end_t, end_c = next((t, c) for t, c in samples if c >= final)
    result.window_events = end_c - start_c
    result.window_s = end_t - start_t if end_t > start_t else None
    changes = [t for (t, c), (_, before) in zip(samples[1:], samples) if c > before and t <= end_t]
    gaps = [b - a for a, b in zip(changes, changes[1:]) if b - a >= PAUSE_S]
    result.pauses, result.paused_s = len(gaps), sum(gaps)
    result.startup_s = start_t - min(w.started_at for w in workers)
    if result.window_s is None:
        result.note = "all events counted between two samples: rate not measurable at this size"
    return result


# --- Kafka helpers -----------------------------------------------------------------------------


def produce_all(settings: Settings, items: Iterable[tuple[str, bytes, bytes]],
                on_progress: Callable[[int], None]) -> tuple[int, float]:
    """Produce (topic base, key, value) records with murmur2 keys; return (sent, seconds)."""
    from confluent_kafka import KafkaError

    from streams.tools.replay import make_producer

    producer = make_producer(settings)
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failed.append(err.name())

    started = time.monotonic()
    sent = 0
    for base, key, value in items:
        while True:
            try:
                producer.produce(settings.topic(base), key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 5000 == 0:
            producer.poll(0)
            on_progress(sent)
    remaining = producer.flush(120)
    on_progress(sent)
    if remaining or failed:
        raise BenchError(f"{remaining} records not flushed, {len(failed)} failed ({sorted(set(failed))[:3]})")
    return sent, time.monotonic() - started


def _consumer(settings: Settings, **extra: Any) -> Any:
    from confluent_kafka import Consumer

    from streams.topics import client_config

    conf = client_config(settings)
    conf.update({"group.id": f"churnlight-bench-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                 "enable.partition.eof": False})
    conf.update(extra)
    return Consumer(conf)


def _partitions(consumer: Any, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        raise BenchError(f"topic {topic} does not exist")
    return sorted(meta.partitions)


def raw_baseline(settings: Settings, expected: int, on_progress: Callable[[int], None],
                 max_s: float) -> dict[str, Any]:
    """Consume every bench message with a plain consumer: orjson decode, a charge sum per msisdn."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = _consumer(settings)
    try:
        tps = [TopicPartition(settings.topic(base), p, OFFSET_BEGINNING)
               for base in (PROFILES, USAGE) for p in _partitions(consumer, settings.topic(base))]
        consumer.assign(tps)
        totals: dict[bytes, float] = {}
        seen = 0
        first_batch = 0
        first = last = None
        began = time.monotonic()
        while seen < expected and time.monotonic() - began < max_s:
            batch = consumer.consume(1000, 0.5)
            if not batch:
                if last is not None and time.monotonic() - last > 10:
                    break
                continue
            for msg in batch:
                if msg.error():
                    continue
                doc = orjson.loads(msg.value())
                key = msg.key()
                totals[key] = totals.get(key, 0.0) + doc.get("charge", 0.0)
                seen += 1
            now = time.monotonic()
            if first is None:
                first, first_batch = now, seen
            last = now
            if seen % 20000 < len(batch):
                on_progress(seen)
        on_progress(seen)
    finally:
        consumer.close()
    # The clock starts when the first batch is in hand: connecting and the first fetch are
    # start-up, so that batch's messages are not counted in the rate either.
    seconds = (last - first) if first is not None and last is not None else None
    return {"messages": seen, "expected": expected, "complete": seen >= expected, "seconds": seconds,
            "events_per_s": _rate(seen - first_batch, seconds), "keys": len(totals)}


def read_latest_values(settings: Settings, topic: str, max_s: float) -> tuple[dict[bytes, int], int]:
    """Read `topic` from the beginning; return the latest non-null value's size per key, and the records read."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = _consumer(settings)
    sizes: dict[bytes, int] = {}
    read = 0
    try:
        parts = _partitions(consumer, topic)
        highs = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        positions = {p: -1 for p in parts}
        began = time.monotonic()
        idle_since = time.monotonic()
        while time.monotonic() - began < max_s:
            batch = consumer.consume(1000, 0.3)
            now = time.monotonic()
            for msg in batch:
                if msg.error():
                    continue
                positions[msg.partition()] = msg.offset()
                read += 1
                key = msg.key() or b""
                value = msg.value()
                if value is None:
                    sizes.pop(key, None)
                else:
                    sizes[key] = len(value)
            if batch:
                idle_since = now
            # Some brokers (Tansu) report the high watermark as the last batch's base offset, so
            # "reached the high watermark" is followed by a short idle wait for that last batch.
            caught_up = all(positions[p] + 1 >= highs[p] for p in parts)
            if caught_up and now - idle_since > 1.0:
                break
    finally:
        consumer.close()
    return sizes, read


# --- the steps ---------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one bench run holds on to, so that `finally` can stop all of it."""

    base: Settings
    work_dir: Path
    workload: Workload
    partitions: int
    progress: Progress
    worker_log_level: str = "warn"
    workers: list[BenchWorker] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    def tenant(self, suffix: str = "") -> Settings:
        prefix = f"bench-{uuid.uuid4().hex[:8]}{suffix}."
        self.prefixes.append(prefix)
        return self.base.model_copy(update={"topic_prefix": prefix, "partitions": self.partitions})

    def worker(self, settings: Settings, name: str, *, log_level: str | None = None) -> BenchWorker:
        from streams.embedded import free_port

        data_dir = self.work_dir / name
        own = settings.model_copy(update={
            "data_dir": data_dir, "web_port": free_port(), "web_host": "127.0.0.1",
            "log_level": log_level or self.worker_log_level,
        })
        w = BenchWorker(name, own, data_dir / "worker.log")
        self.workers.append(w)
        return w

    def step(self, description: str, total: float | None) -> TaskID:
        return self.progress.add_task(description, total=total)

    def stop_all(self, *, graceful: bool) -> None:
        """Stop every worker; after an error or Ctrl-C, SIGKILL at once (their state is throwaway)."""
        for w in self.workers:
            try:
                if graceful:
                    w.stop()
                else:
                    w.kill()
            except Exception:  # a cleanup must reach every worker
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.kill()


def step_produce(run: Run, settings: Settings, label: str) -> dict[str, Any]:
    from streams.topics import ensure_topics

    ensure_topics(settings)
    total = run.workload.subscribers + run.workload.events
    task = run.step(label, total)
    sent, seconds = produce_all(settings, records(run.workload), lambda n: run.progress.update(task, completed=n))
    photographed = sum(1 for doc in run.workload.profiles() if doc["photo"] is not None)
    return {"profiles": run.workload.subscribers, "photographed": photographed, "events": run.workload.events,
            "messages": sent, "seconds": seconds, "messages_per_s": _rate(sent, seconds),
            "event_days": BULK_SPAN_S / DAY_S, "first_day": run.workload.start_day.isoformat()}


def step_worker(run: Run, settings: Settings, expected: int) -> tuple[BenchWorker, Throughput]:
    task = run.step("3/8 one churnlight worker (b)", expected)
    w = run.worker(settings, "worker-1").start()
    result = measure_throughput([w], expected, lambda n: run.progress.update(task, completed=n),
                                max_s=START_TIMEOUT_S + max(300.0, expected / 200))
    return w, result


def step_latency(run: Run, settings: Settings, w: BenchWorker, rate_b: float, duration_s: float) -> dict[str, Any]:
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
    task = run.step(f"4/8 latency at {rate:,.0f} events/s", duration_s)
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
    tc = _consumer(settings, **{"fetch.wait.max.ms": 10})
    parts = _partitions(tc, sms_topic)
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


def step_state(run: Run, settings: Settings) -> dict[str, Any]:
    topic = f"{settings.topic_prefix}{settings.app_id}-state-changelog"
    task = run.step("5/8 state changelog", None)
    sizes, read = read_latest_values(settings, topic, max_s=120.0 + run.workload.events / 20000)
    # Keys starting with "~" are the pipeline's partition clocks and markers, not subscribers.
    per_subscriber = [float(v) for k, v in sizes.items() if not k.startswith(b"~")]
    run.progress.update(task, total=len(per_subscriber), completed=len(per_subscriber))
    # Recovery replays every record, not one per key, unless the broker has compacted the topic.
    return {"topic": topic, "subscribers": len(per_subscriber), "changelog_records": read,
            "median_bytes": percentile(per_subscriber, 0.5), "p99_bytes": percentile(per_subscriber, 0.99),
            "mean_bytes": (sum(per_subscriber) / len(per_subscriber)) if per_subscriber else None,
            "total_bytes": int(sum(per_subscriber))}


def step_recovery(run: Run, settings: Settings, subscribers: int) -> dict[str, Any]:
    """Start a worker with an empty data dir after the crash; time health and the complete load.

    The worker reads its partitions of the changelog after its assignment and answers /health 200
    once the state is loaded; its log says how many subscribers it loaded and in how long (reading
    the changelog included). Once /health answers the bench sends one valid usage event, as the
    next event of traffic would be.
    """
    from streams.tools.replay import make_producer

    task = run.step("7/8 recovery from the changelog", subscribers)
    w = run.worker(settings, "worker-recovered", log_level="info").start()
    limit = START_TIMEOUT_S + (run.workload.events + subscribers) / 1000
    wl = run.workload
    health_s: float | None = None
    loaded: tuple[int, list[int], float] | None = None
    loaded_s: float | None = None
    while time.monotonic() - w.started_at < limit:
        w.check_alive()
        now = time.monotonic() - w.started_at
        if health_s is None and w.health() is not None:
            health_s = now
            nudge = make_producer(settings)
            doc = wl.usage(random.Random(wl.seed + 4), "r000000000000", wl.msisdn(0), wl.live_start_s + 3600)
            nudge.produce(settings.topic(USAGE), key=doc["msisdn"].encode(), value=orjson.dumps(doc))
            nudge.flush(10)
        try:
            found = LOADED_RE.findall(w.log_path.read_text(errors="replace"))
        except OSError:
            found = []
        if found:
            n, parts, secs = found[-1]
            owned = [int(p) for p in parts.replace(" ", "").split(",") if p]
            loaded = (int(n), owned, float(secs))
            run.progress.update(task, completed=int(n))
            if loaded_s is None and int(n) >= subscribers and len(owned) == run.partitions:
                loaded_s = now
        if health_s is not None and loaded_s is not None:
            break
        time.sleep(POLL_S)
    w.stop()
    out: dict[str, Any] = {
        "seconds": max(health_s, loaded_s) if health_s is not None and loaded_s is not None else None,
        "health_s": health_s, "complete_load_seen_s": loaded_s,
        "subscribers_loaded": loaded[0] if loaded else None, "subscribers_expected": subscribers,
        "partitions": loaded[1] if loaded else None, "load_s_logged": loaded[2] if loaded else None,
    }
    if out["seconds"] is None:
        out["note"] = f"not complete within {limit:.0f} s"
    return out


def step_scaling(run: Run, rate_one: float | None) -> dict[str, Any]:
    settings = run.tenant("-x2")
    run.progress.console.print(f"scaling on topic prefix {settings.topic_prefix}")
    step_produce(run, settings, "8/8 scaling: produce a fresh copy")
    expected = run.workload.subscribers + run.workload.events
    task = run.step("8/8 scaling: two workers", expected)
    pair = [run.worker(settings, "scale-a"), run.worker(settings, "scale-b")]
    for w in pair:
        w.start()

    def both_consuming() -> bool:
        owned: list[list[int]] = []
        for w in pair:
            doc = w.health()
            if doc is None or not doc.get("partitions"):
                return False
            owned.append(list(doc["partitions"]))
        union = set(owned[0]) | set(owned[1])
        return not set(owned[0]) & set(owned[1]) and len(union) == run.partitions

    result = measure_throughput(pair, expected, lambda n: run.progress.update(task, completed=n),
                                ready=both_consuming, max_s=START_TIMEOUT_S + max(300.0, expected / 200))
    rss = [w.peak_rss() for w in pair]
    for w in pair:
        w.stop()
    rate = result.events_per_s
    return {"workers": 2, **result.as_json(), "one_worker_events_per_s": rate_one,
            "speedup": (rate / rate_one) if rate and rate_one else None,
            "peak_rss_bytes": rss, "cpus": os.cpu_count()}


# --- reporting ---------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def render_table(doc: dict[str, Any]) -> Table:
    table = Table(title=f"churnlight bench: {doc['config']['events']:,} events, "
                        f"{doc['config']['subscribers']:,} subscribers, {doc['config']['partitions']} partitions")
    table.add_column("step")
    table.add_column("figure")
    table.add_column("value", justify="right")
    p = doc["produce"]
    table.add_row("1 produce", "messages (profiles + usage) / s", _fmt(p.get("messages_per_s")))
    raw = doc["raw_baseline"]
    table.add_row("2 raw consumer (a)", "events / s", _fmt(raw.get("events_per_s")))
    wk = doc["worker"]
    table.add_row("3 one worker (b)", "events / s", _fmt(wk.get("events_per_s")))
    table.add_row("", "b / a", _fmt(wk.get("ratio_to_raw"), digits=3))
    table.add_row("", "start-up excluded", _fmt(wk.get("startup_s"), " s", 1))
    _pauses_row(table, wk)
    table.add_row("", "outcomes", ", ".join(f"{k} {int(v):,}" for k, v in sorted((wk.get("outcomes") or {}).items())))
    _incomplete_row(table, wk)
    lat = doc["latency"]
    if lat.get("skipped"):
        table.add_row("4 latency", "skipped", lat["reason"])
    else:
        e2e, hist, est = lat["tasks_end_to_end"], lat["worker_histogram"], lat["usage_lag_estimate"]
        table.add_row("4 latency", "offered rate (half of b)", _fmt(lat["rate_target_per_s"], " /s"))
        table.add_row("", f"task end to end p50/p95/p99 ({e2e['tasks_seen']}/{e2e['triggers']} tasks)",
                      " / ".join(_ms(e2e[k]) for k in ("p50_s", "p95_s", "p99_s")))
        table.add_row("", f"worker histogram p50/p95/p99 ({int(hist['tasks'])} tasks)",
                      " / ".join(_ms(hist[k]) for k in ("p50_s", "p95_s", "p99_s")))
        table.add_row("", "usage backlog/rate ESTIMATE p50/p95/p99",
                      " / ".join(_ms(est[k]) for k in ("p50_s", "p95_s", "p99_s")))
    st = doc["state"]
    if st.get("skipped"):
        table.add_row("5 state", "skipped", st["reason"])
    else:
        table.add_row("5 state per subscriber", "median / p99 bytes",
                      f"{_fmt(st['median_bytes'])} / {_fmt(st['p99_bytes'])}")
        table.add_row("", "subscribers / records in changelog",
                      f"{_fmt(st['subscribers'])} / {_fmt(st['changelog_records'])}")
    rss = doc["rss"]
    table.add_row("6 worker peak RSS", "VmHWM", "-" if rss.get("peak_bytes") is None
                  else f"{rss['peak_bytes'] / 2**20:,.0f} MiB")
    rec = doc["recovery"]
    if rec.get("skipped"):
        table.add_row("7 recovery", "skipped", rec["reason"])
    else:
        table.add_row("7 recovery", "seconds to healthy + fully loaded", _fmt(rec.get("seconds"), " s", 1))
        table.add_row("", "of which to /health 200 (state loaded)", _fmt(rec.get("health_s"), " s", 1))
        table.add_row("", "subscribers loaded (worker's own load time)",
                      f"{_fmt(rec.get('subscribers_loaded'))} ({_fmt(rec.get('load_s_logged'), ' s', 2)})")
    sc = doc["scaling"]
    if sc.get("skipped"):
        table.add_row("8 scaling", "skipped", sc["reason"])
    else:
        table.add_row("8 scaling", "2 workers events / s", _fmt(sc.get("events_per_s")))
        table.add_row("", "vs 1 worker", _fmt(sc.get("speedup"), "x", 2))
        _pauses_row(table, sc)
        _incomplete_row(table, sc)
    if doc.get("status") not in (None, "ok", "running"):
        table.add_row("[red]run[/red]", f"[red]{doc['status']}[/red]", str(doc.get("error", ""))[:200])
    return table


def _pauses_row(table: Table, part: dict[str, Any]) -> None:
    if part.get("pauses"):
        table.add_row("", f"[yellow]pauses >= {PAUSE_S:.0f} s without progress (in the rate)[/yellow]",
                      f"[yellow]{part['pauses']}, {part['paused_s']:,.0f} s in all[/yellow]")


def _incomplete_row(table: Table, part: dict[str, Any]) -> None:
    """Flag a throughput whose workers did not count every produced event: its rate covers only part."""
    if not part or part.get("complete", True):
        return
    lag = part.get("reported_lag")
    table.add_row("", "[red]INCOMPLETE[/red]",
                  f"[red]counted {_fmt(int(part.get('counted') or 0))} of {_fmt(part.get('expected'))}; "
                  f"worker-reported lag {_fmt(None if lag is None else int(lag))}; {part.get('note') or ''}[/red]")


def _skipped(reason: str) -> dict[str, Any]:
    return {"skipped": True, "reason": reason}


@click.command()
@click.option("--events", type=click.IntRange(1, 50_000_000), default=None,
              help="usage events to produce [default: 1000000; 3000 with --quick]")
@click.option("--subscribers", type=click.IntRange(1, 10_000_000), default=None,
              help="subscriber pool (one profile each) [default: 100000; 300 with --quick]")
@click.option("--partitions", type=click.IntRange(1, 256), default=4, show_default=True,
              help="partitions of the bench topics")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("churnlight-bench.json"), show_default=True, help="write the figures here")
@click.option("--skip", "skip", type=click.Choice([*SKIPPABLE, "all"]), multiple=True,
              help="skip a slow step (repeatable; 'all' = latency, recovery and scaling)")
@click.option("--quick", is_flag=True, help="CI smoke sizes; shorter latency phase; no scaling step")
@click.option("--latency-seconds", type=click.FloatRange(1, 300), default=None,
              help="length of the latency phase [default: 20; 5 with --quick]")
@click.option("--worker-log-level", type=click.Choice(["debug", "info", "warn", "error"]), default="warn",
              show_default=True, help="log level of the measured workers (the recovery worker logs at info)")
@click.option("--keep", is_flag=True,
              help="keep the run's directory (worker logs); kept anyway when a step fails or stalls")
def bench(events: int | None, subscribers: int | None, partitions: int, json_path: Path, skip: tuple[str, ...],
          quick: bool, latency_seconds: float | None, worker_log_level: str, keep: bool) -> None:
    """Measure throughput (raw consumer vs one worker), latency, state size, memory, recovery and scaling."""
    from streams.cli import _settings, connected, setup_logging

    events = events or (QUICK_EVENTS if quick else 1_000_000)
    subscribers = subscribers or (QUICK_SUBSCRIBERS if quick else 100_000)
    latency_s = latency_seconds or (5.0 if quick else 20.0)
    # step -> why it is skipped, as the table and the JSON report it
    skipped = {part: "--skip " + ("all" if "all" in skip else part)
               for part in SKIPPABLE if part in skip or "all" in skip}
    if quick:
        skipped.setdefault("scaling", "--quick (two workers on smoke sizes finish before both consume)")
    settings = _settings()
    setup_logging("warn")
    work_dir = Path(tempfile.mkdtemp(prefix="churnlight-bench-"))
    today = datetime.now(settings.zone).date()
    offset = 0 if settings.redis is None else random.randrange(10**8)  # see Workload.msisdn_offset
    workload = Workload(events, subscribers, settings.zone, today - timedelta(days=START_DAYS_AGO),
                        msisdn_offset=offset)
    doc: dict[str, Any] = {
        "version": 1, "status": "running", "started_at": datetime.now(settings.zone).isoformat(timespec="seconds"),
        "config": {"events": events, "subscribers": subscribers, "partitions": partitions, "quick": quick,
                   "skipped": sorted(skipped), "latency_s": latency_s},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "kafka": "external (CHURNLIGHT_KAFKA)" if settings.kafka else "embedded Tansu, memory only",
                    "redis": "external (CHURNLIGHT_REDIS)" if settings.redis else "embedded redis-server"},
        "produce": {}, "raw_baseline": {}, "worker": {}, "latency": _skipped("not reached"),
        "state": _skipped("not reached"), "rss": {}, "recovery": _skipped("not reached"),
        "scaling": _skipped("not reached"),
    }
    ok = False
    _sigterm_as_exit()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=False)
    try:
        # The bench's own data dir: an embedded stack here never joins another command's stack.
        with connected(settings.model_copy(update={"data_dir": work_dir / "embedded"})) as resolved, progress:
            run = Run(resolved.model_copy(update={"data_dir": work_dir}), work_dir, workload, partitions, progress,
                      worker_log_level)
            try:
                _run_steps(run, doc, skipped, latency_s)
                ok = True
            finally:
                run.stop_all(graceful=ok)
                if resolved.kafka and settings.kafka:  # an external cluster keeps nothing of the bench
                    _delete_topics(resolved, run.prefixes)
        doc["status"] = "ok"
    except BenchError as exc:
        doc["status"] = "failed"
        doc["error"] = str(exc)
        console.print(f"[red]churnlight bench: {exc}[/red]")
    except (KeyboardInterrupt, SystemExit):
        doc["status"] = "interrupted"
        raise
    except Exception as exc:  # unexpected: the JSON still says what happened, then the traceback
        doc["status"] = "failed"
        doc["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        doc["incomplete"] = incomplete_steps(doc)
        kept = keep or doc["status"] == "failed" or bool(doc["incomplete"])
        doc["work_dir"] = str(work_dir) if kept else None
        json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        if kept:
            console.print(f"[yellow]worker logs and data kept in {work_dir}[/yellow]")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    Console().print(render_table(doc))
    console.print(f"figures written to {json_path}")
    if not ok:
        raise SystemExit(1)


def incomplete_steps(doc: dict[str, Any]) -> list[str]:
    """Name the steps that ran but did not finish what they measure (a stall, a time limit)."""
    found = []
    for step in ("worker", "scaling"):
        part = doc.get(step) or {}
        if not part.get("skipped") and part and not part.get("complete"):
            found.append(step)
    latency = doc.get("latency") or {}
    if not latency.get("skipped") and latency and not latency.get("caught_up"):
        found.append("latency")
    e2e = latency.get("tasks_end_to_end") or {}
    if e2e and e2e.get("tasks_seen") != e2e.get("triggers"):
        found.append("latency tasks")
    recovery = doc.get("recovery") or {}
    if not recovery.get("skipped") and recovery and recovery.get("seconds") is None:
        found.append("recovery")
    return found


def _sigterm_as_exit() -> None:
    """Turn SIGTERM into SystemExit so that the cleanup runs and the JSON says `interrupted`."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding caller): keep its handling
        pass


def _run_steps(run: Run, doc: dict[str, Any], skipped: dict[str, str], latency_s: float) -> None:
    wl = run.workload
    settings = run.tenant()
    run.progress.console.print(f"bench topics under prefix {settings.topic_prefix}")
    expected = wl.subscribers + wl.events

    doc["produce"] = step_produce(run, settings, "1/8 produce profiles and usage")

    task = run.step("2/8 raw consumer (a)", expected)
    doc["raw_baseline"] = raw_baseline(settings, expected, lambda n: run.progress.update(task, completed=n),
                                       max_s=120.0 + expected / 5000)

    w, b = step_worker(run, settings, expected)
    rate_a, rate_b = doc["raw_baseline"]["events_per_s"], b.events_per_s
    doc["worker"] = {**b.as_json(), "ratio_to_raw": (rate_b / rate_a) if rate_a and rate_b else None,
                     "store": "memory + changelog"}

    if "latency" in skipped:
        doc["latency"] = _skipped(skipped["latency"])
    elif rate_b is None:
        doc["latency"] = _skipped("worker rate not measured")
    elif not b.complete:
        # Half of b's rate on a worker that has not read the bulk would measure the backlog.
        doc["latency"] = _skipped(f"the worker did not count every bulk event ({b.note})")
    else:
        doc["latency"] = step_latency(run, settings, w, rate_b, latency_s)

    doc["state"] = step_state(run, settings)
    rss = w.peak_rss()
    doc["rss"] = {"peak_bytes": rss, "source": "/proc/<pid>/status VmHWM of the worker in steps 3-5"}
    state_subscribers = doc["state"].get("subscribers") or wl.subscribers

    if "recovery" in skipped:
        w.stop()
        doc["recovery"] = _skipped(skipped["recovery"])
    else:
        task = run.step("6/8 SIGKILL the worker", 1)
        w.kill()
        run.progress.update(task, completed=1)
        doc["recovery"] = step_recovery(run, settings, state_subscribers)

    if "scaling" in skipped:
        doc["scaling"] = _skipped(skipped["scaling"])
    else:
        doc["scaling"] = step_scaling(run, rate_b)


def _delete_topics(settings: Settings, prefixes: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    from streams.topics import client_config

    admin = AdminClient(client_config(settings))
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if any(t.startswith(p) for p in prefixes)]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                try:
                    fut.result()
                except Exception:  # best effort: report, never mask the bench's own result
                    pass
            console.print(f"deleted {len(names)} bench topics")
    except Exception as exc:
        console.print(f"[yellow]could not delete the bench topics ({exc}); prefixes: {', '.join(prefixes)}[/yellow]")
