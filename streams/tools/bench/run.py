"""The bench run and its steps on the bulk workload: produce, one worker (b), state, recovery, scaling."""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from rich.progress import Progress, TaskID

from rules.events import USAGE
from streams.settings import Settings
from streams.tools.bench.kafka import produce_all
from streams.tools.bench.measure import Throughput, measure_throughput, percentile, rate
from streams.tools.bench.workload import BULK_SPAN_S, DAY_S, Workload, records
from streams.tools.harness import START_TIMEOUT_S, WorkerProcess
from streams.tools.topic_reader import iter_topic

POLL_S: Final = 0.2
STEPS: Final = 9  # the "n/9" of the progress lines
LOADED_RE: Final = re.compile(r"loaded (\d+) subscribers of partitions \[([0-9, ]*)\] in ([0-9.]+) s")
# streams.runtime.recovery's line: where a load's records came from.
READ_RE: Final = re.compile(r"read partitions \[[0-9, ]*\] of \S+ in [0-9.]+ s: (.*)")
_STAMP: Final = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO "
PRELOADED_RE: Final = re.compile(_STAMP + r"streams\.runtime\.reader: preloaded \d+ subscribers", re.M)
ASSIGNED_RE: Final = re.compile(_STAMP + r"faust\.app\.base: Executing _on_partitions_assigned", re.M)
# The group identity of the single worker of steps 3 and 7 (a static member: its restart takes its
# place in the group at once, as a StatefulSet pod's would; CHURNLIGHT_INSTANCE_ID).
SINGLE: Final = "bench-single"


@dataclass
class Run:
    """Everything one bench run holds on to, so that `finally` can stop all of it."""

    base: Settings
    work_dir: Path
    workload: Workload
    partitions: int
    progress: Progress
    worker_log_level: str = "warn"
    workers: list[WorkerProcess] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    def tenant(self, suffix: str = "") -> Settings:
        prefix = f"bench-{uuid.uuid4().hex[:8]}{suffix}."
        self.prefixes.append(prefix)
        return self.base.model_copy(update={"topic_prefix": prefix, "partitions": self.partitions})

    def worker(self, settings: Settings, name: str, *, log_level: str | None = None,
               instance_id: str | None = None) -> WorkerProcess:
        """A worker of its own data dir; `instance_id`: a static group member (CHURNLIGHT_INSTANCE_ID)."""
        from streams.embedded import free_port

        data_dir = self.work_dir / name
        own = settings.model_copy(update={
            "data_dir": data_dir, "web_port": free_port(), "web_host": "127.0.0.1",
            "log_level": log_level or self.worker_log_level, "instance_id": instance_id,
        })
        # Started in its data dir: a `.env` where the bench runs is not the bench's settings.
        w = WorkerProcess(own, data_dir / "worker.log", name=name, cwd=data_dir)
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
            "messages": sent, "seconds": seconds, "messages_per_s": rate(sent, seconds),
            "event_days": BULK_SPAN_S / DAY_S, "first_day": run.workload.start_day.isoformat()}


def step_worker(run: Run, settings: Settings, expected: int) -> tuple[WorkerProcess, Throughput]:
    task = run.step(f"3/{STEPS} one churnlight worker (b)", expected)
    w = run.worker(settings, "worker-1", instance_id=SINGLE).launch()
    result = measure_throughput([w], expected, lambda n: run.progress.update(task, completed=n),
                                max_s=START_TIMEOUT_S + max(300.0, expected / 200))
    return w, result


def step_state(run: Run, settings: Settings) -> dict[str, Any]:
    topic = f"{settings.topic_prefix}{settings.app_id}-state-changelog"
    task = run.step(f"5/{STEPS} state changelog", None)
    sizes: dict[bytes, int] = {}
    read = 0
    for msg in iter_topic(settings, topic, timeout_s=120.0 + run.workload.events / 20000):
        read += 1
        key, value = msg.key() or b"", msg.value()
        if value is None:
            sizes.pop(key, None)
        else:
            sizes[key] = len(value)
    # Keys starting with "~" are the pipeline's partition clocks and markers, not subscribers.
    per_subscriber = [float(v) for k, v in sizes.items() if not k.startswith(b"~")]
    run.progress.update(task, total=len(per_subscriber), completed=len(per_subscriber))
    # Recovery replays every record, not one per key, unless the broker has compacted the topic.
    return {"topic": topic, "subscribers": len(per_subscriber), "changelog_records": read,
            "median_bytes": percentile(per_subscriber, 0.5), "p99_bytes": percentile(per_subscriber, 0.99),
            "mean_bytes": (sum(per_subscriber) / len(per_subscriber)) if per_subscriber else None,
            "total_bytes": int(sum(per_subscriber))}


def step_recovery(run: Run, settings: Settings, subscribers: int) -> dict[str, Any]:
    """Restart the killed worker on its own data dir (its local state and the changelog's tail) and
    SIGKILL it again; then start a worker with an empty data dir (the whole changelog). Time each to
    /health 200 and to its complete load.

    A worker answers /health 200 once its state is loaded; its log says where the records came from
    (local store, tail, whole changelog: how many each) and how many subscribers it loaded in how
    long. Once /health answers the bench sends one valid usage event, as the next event of traffic
    would be. The cold figures stay at the top level of the step's JSON, the restart's under `restart`.
    """
    task = run.step(f"7/{STEPS} recovery: restart on local state, then from the changelog", 2 * subscribers)
    restart = _recover(run, settings, "worker-1", subscribers, lambda n: run.progress.update(task, completed=n))
    cold = _recover(run, settings, "worker-recovered", subscribers,
                    lambda n: run.progress.update(task, completed=subscribers + n))
    return {**cold, "restart": restart}


def _recover(run: Run, settings: Settings, name: str, subscribers: int,
             progress: Callable[[int], None]) -> dict[str, Any]:
    """Start worker `name` (its data dir as a worker of that name left it) and time its recovery."""
    from streams.tools.replay import make_producer

    w = run.worker(settings, name, log_level="info", instance_id=SINGLE)
    since = len(w.log())  # the log of an earlier run on this data dir is appended to
    launched = time.time()
    w.launch()
    limit = START_TIMEOUT_S + (run.workload.events + subscribers) / 1000
    wl = run.workload
    health_s: float | None = None
    loaded: tuple[int, list[int], float] | None = None
    loaded_s: float | None = None
    sources: dict[str, Any] = {}
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
            text = w.log()[since:]
        except OSError:
            text = ""
        found = LOADED_RE.findall(text)
        if found:
            n, parts, secs = found[-1]
            owned = [int(p) for p in parts.replace(" ", "").split(",") if p]
            loaded = (int(n), owned, float(secs))
            progress(int(n))
            if loaded_s is None and int(n) >= subscribers and len(owned) == run.partitions:
                loaded_s = now
                sources = _sources(text)
        if health_s is not None and loaded_s is not None:
            break
        time.sleep(POLL_S)
    if name == "worker-1":
        w.kill()  # as the crash before it: the cold recovery that follows has the machine to itself
    else:
        w.stop()
    out: dict[str, Any] = {
        "seconds": max(health_s, loaded_s) if health_s is not None and loaded_s is not None else None,
        "health_s": health_s, "complete_load_seen_s": loaded_s,
        "subscribers_loaded": loaded[0] if loaded else None, "subscribers_expected": subscribers,
        "partitions": loaded[1] if loaded else None, "load_s_logged": loaded[2] if loaded else None,
        **sources, **_timeline(text, launched),
    }
    if out["seconds"] is None:
        out["note"] = f"not complete within {limit:.0f} s"
    return out


def _sources(log: str) -> dict[str, Any]:
    """Where the recovery in `log` (one start's) read its records: local store, changelog tail, whole
    changelog (its preload's reads and its assignment's together)."""
    out: dict[str, Any] = {"local_records": 0, "tail_records": 0, "changelog_records": 0,
                           "partitions_local": [], "partitions_whole": []}
    for how in READ_RE.findall(log):
        local = re.search(r"the changelog's tail: \[([0-9, ]*)\] \((\d+) local records, (\d+) tail records\)", how)
        if local:
            out["partitions_local"] += [int(p) for p in local.group(1).replace(" ", "").split(",") if p]
            out["local_records"] += int(local.group(2))
            out["tail_records"] += int(local.group(3))
        whole = re.search(r"from the whole changelog: \[([0-9, ]*)\] \((\d+) records\)", how)
        if whole:
            out["partitions_whole"] += [int(p) for p in whole.group(1).replace(" ", "").split(",") if p]
            out["changelog_records"] += int(whole.group(2))
    return out


def _timeline(log: str, launched: float) -> dict[str, Any]:
    """When, after the launch, the worker (one start's `log`) had preloaded its local store and
    had its first assignment (seconds; None: not in the log)."""
    def seconds(pattern: re.Pattern[str]) -> float | None:
        found = pattern.search(log)
        if found is None:
            return None
        at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return round(at - launched, 2)

    return {"preloaded_s": seconds(PRELOADED_RE), "assigned_s": seconds(ASSIGNED_RE)}


def step_scaling(run: Run, rate_one: float | None) -> dict[str, Any]:
    settings = run.tenant("-x2")
    run.progress.console.print(f"scaling on topic prefix {settings.topic_prefix}")
    step_produce(run, settings, "8/{STEPS} scaling: produce a fresh copy")
    expected = run.workload.subscribers + run.workload.events
    task = run.step(f"8/{STEPS} scaling: two workers", expected)
    pair = [run.worker(settings, "scale-a"), run.worker(settings, "scale-b")]
    for w in pair:
        w.launch()

    result = measure_throughput(pair, expected, lambda n: run.progress.update(task, completed=n),
                                ready=lambda: split_between(pair, run.partitions),
                                max_s=START_TIMEOUT_S + max(300.0, expected / 200))
    rss = [w.peak_rss() for w in pair]
    for w in pair:
        w.stop()
    rate = result.events_per_s
    return {"workers": 2, **result.as_json(), "one_worker_events_per_s": rate_one,
            "speedup": (rate / rate_one) if rate and rate_one else None,
            "peak_rss_bytes": rss, "cpus": os.cpu_count()}


def split_between(workers: list[WorkerProcess], partitions: int) -> bool:
    """Say whether `workers` are all consuming and own the `partitions` between them, each once."""
    owned: list[set[int]] = []
    for w in workers:
        doc = w.health()
        if doc is None or not doc.get("partitions"):
            return False
        owned.append(set(doc["partitions"]))
    return sum(map(len, owned)) == partitions and len(set().union(*owned)) == partitions
