"""`churnlight bench` (issues 7 and 16): how fast one worker is next to a raw consumer, and what it costs.

Nine steps, each bounded in time and count, against the configured Kafka and Redis or an embedded
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
7. recovery: SIGKILL, then the worker restarts on its own data dir (local state and the changelog's
   tail), SIGKILL again, then a worker with an empty data dir rebuilds the state from the changelog;
8. scaling: two workers of one group on a fresh copy of the events; join: a worker loads the bulk
   state, a second one joins, and the first's log says how long the partitions it keeps were not
   read (letting go to reading again) and that none of them was read from the changelog again;
9. scoring: a simulated history longer than the 30-day window, one worker over it with the plain
   rule set and with a risk model, and the share the scoring adds to the worker's time;
10. memory: the resident bytes a subscriber costs a worker's store at 1M subscribers, in a child
   process without a broker (streams.tools.bench.memory).

No figure is invented: a step that did not run or could not measure says so in the table and the
JSON (`skipped` with a reason, or null values with a note).
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import signal
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streams.connect import connected, settings_or_exit
from streams.logs import setup_logging
from streams.tools.bench.kafka import BenchError, delete_topics, raw_baseline
from streams.tools.bench.report import incomplete_steps, render_table
from streams.tools.bench.run import STEPS, Run, step_produce, step_recovery, step_scaling, step_state, step_worker
from streams.tools.bench.join import step_join
from streams.tools.bench.latency import step_latency
from streams.tools.bench.memory import SUBSCRIBERS as MEMORY_SUBSCRIBERS, step_memory
from streams.tools.bench.scoring import DAYS as SCORING_DAYS, SUBSCRIBERS as SCORING_SUBSCRIBERS
from streams.tools.bench.scoring import WINDOW_DAYS, ScoringSize, step_scoring
from streams.tools.bench.workload import START_DAYS_AGO, Workload
from streams.tools.harness import WorkerFailed

console = Console(stderr=True)

# "throughput": steps 1-7, everything measured on the bulk workload (steps 4-7 need its worker).
SKIPPABLE: Final = ("throughput", "latency", "recovery", "join", "scaling", "scoring", "memory")
ALL: Final = ("latency", "recovery", "join", "scaling", "scoring", "memory")  # --skip all: the worker step alone
QUICK_EVENTS: Final = 3000
QUICK_SUBSCRIBERS: Final = 300
QUICK_MEMORY_SUBSCRIBERS: Final = 20_000


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
              help="skip a step (repeatable): throughput (steps 1-7, the bulk workload and its worker), "
                   "latency, recovery, join, scaling, scoring; 'all' = all but throughput")
@click.option("--quick", is_flag=True, help="CI smoke sizes; shorter latency phase; no scaling or scoring step")
@click.option("--latency-seconds", type=click.FloatRange(1, 300), default=None,
              help="length of the latency phase [default: 20; 5 with --quick]")
@click.option("--worker-log-level", type=click.Choice(["debug", "info", "warn", "error"]), default="warn",
              show_default=True, help="log level of the measured workers (the recovery worker logs at info)")
@click.option("--keep", is_flag=True,
              help="keep the run's directory (worker logs); kept anyway when a step fails or stalls")
@click.option("--scoring-subscribers", type=click.IntRange(10, 1_000_000), default=SCORING_SUBSCRIBERS,
              show_default=True, help="scoring step: simulated subscribers (activity 1.0)")
@click.option("--scoring-days", type=click.IntRange(WINDOW_DAYS + 5, 365), default=SCORING_DAYS, show_default=True,
              help="scoring step: days of history (the model scores at the day closes after the first 30)")
@click.option("--memory-subscribers", type=click.IntRange(1000, 50_000_000), default=None,
              help=f"memory step: subscribers loaded [default: {MEMORY_SUBSCRIBERS}; "
                   f"{QUICK_MEMORY_SUBSCRIBERS} with --quick]")
@click.option("--scoring-model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="scoring step: this model file (churnlight train) instead of one trained on another seed")
def bench(events: int | None, subscribers: int | None, partitions: int, json_path: Path, skip: tuple[str, ...],
          quick: bool, latency_seconds: float | None, worker_log_level: str, keep: bool, scoring_subscribers: int,
          scoring_days: int, scoring_model: Path | None, memory_subscribers: int | None) -> None:
    """Measure throughput (raw consumer vs one worker), latency, state size, memory, recovery, scaling, and
    what the risk score adds to the worker's time."""

    events = events or (QUICK_EVENTS if quick else 1_000_000)
    subscribers = subscribers or (QUICK_SUBSCRIBERS if quick else 100_000)
    latency_s = latency_seconds or (5.0 if quick else 20.0)
    # step -> why it is skipped, as the table and the JSON report it
    skipped: dict[str, str] = {part: "--skip " + ("all" if "all" in skip and part in ALL else part)
                               for part in SKIPPABLE if part in skip or ("all" in skip and part in ALL)}
    if "throughput" in skipped:
        for part in ("latency", "recovery", "join"):
            skipped.setdefault(part, "--skip throughput (it measures the bulk workload's worker)")
    if quick:
        skipped.setdefault("scaling", "--quick (two workers on smoke sizes finish before both consume)")
        skipped.setdefault("scoring", "--quick (training a model takes longer than the smoke run)")
    scoring = ScoringSize(scoring_subscribers, scoring_days, scoring_model)
    settings = settings_or_exit()
    setup_logging("warn")
    work_dir = Path(tempfile.mkdtemp(prefix="churnlight-bench-"))
    today = datetime.now(settings.zone).date()
    offset = 0 if settings.redis is None else random.randrange(10**8)  # see Workload.msisdn_offset
    workload = Workload(events, subscribers, settings.zone, today - timedelta(days=START_DAYS_AGO),
                        msisdn_offset=offset)
    doc: dict[str, Any] = {
        "version": 1, "status": "running", "started_at": datetime.now(settings.zone).isoformat(timespec="seconds"),
        "config": {"events": events, "subscribers": subscribers, "partitions": partitions, "quick": quick,
                   "skipped": sorted(skipped), "latency_s": latency_s,
                   "scoring": {"subscribers": scoring_subscribers, "days": scoring_days,
                               "model": None if scoring_model is None else str(scoring_model)}},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "kafka": "external (CHURNLIGHT_KAFKA)" if settings.kafka else "embedded Tansu, memory only",
                    "redis": "external (CHURNLIGHT_REDIS)" if settings.redis else "embedded redis-server"},
        "produce": {}, "raw_baseline": {}, "worker": {}, "latency": _skipped("not reached"),
        "state": _skipped("not reached"), "rss": {}, "recovery": _skipped("not reached"),
        "join": _skipped("not reached"), "scaling": _skipped("not reached"), "scoring": _skipped("not reached"),
        "memory": _skipped("not reached"),
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
                _run_steps(run, doc, skipped, latency_s, scoring)
                if "memory" in skipped:
                    doc["memory"] = _skipped(skipped["memory"])
                else:
                    n = memory_subscribers or (QUICK_MEMORY_SUBSCRIBERS if quick else MEMORY_SUBSCRIBERS)
                    run.step(f"10 memory: {n:,} subscribers in a worker's store", None)
                    doc["memory"] = step_memory(run.base.model_copy(update={"partitions": partitions}), n)
                ok = True
            finally:
                run.stop_all(graceful=ok)
                if resolved.kafka and settings.kafka:  # an external cluster keeps nothing of the bench
                    delete_topics(resolved, run.prefixes)
        doc["status"] = "ok"
    except (BenchError, WorkerFailed) as exc:
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


def _sigterm_as_exit() -> None:
    """Turn SIGTERM into SystemExit so that the cleanup runs and the JSON says `interrupted`."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding caller): keep its handling
        pass


def _run_steps(run: Run, doc: dict[str, Any], skipped: dict[str, str], latency_s: float,
               scoring: ScoringSize) -> None:
    if "throughput" in skipped:
        for part in ("produce", "raw_baseline", "worker", "state", "rss"):
            doc[part] = _skipped(skipped["throughput"])
        for part in ("latency", "recovery", "join"):
            doc[part] = _skipped(skipped[part])
        rate_b = None
    else:
        rate_b = _bulk_steps(run, doc, skipped, latency_s)
    if "scaling" in skipped:
        doc["scaling"] = _skipped(skipped["scaling"])
    else:
        doc["scaling"] = step_scaling(run, rate_b)
    if "scoring" in skipped:
        doc["scoring"] = _skipped(skipped["scoring"])
    else:
        doc["scoring"] = step_scoring(run, scoring)


def _bulk_steps(run: Run, doc: dict[str, Any], skipped: dict[str, str], latency_s: float) -> float | None:
    """Steps 1-7 on the bulk workload; return the one worker's rate (b)."""
    wl = run.workload
    settings = run.tenant()
    run.progress.console.print(f"bench topics under prefix {settings.topic_prefix}")
    expected = wl.subscribers + wl.events

    doc["produce"] = step_produce(run, settings, f"1/{STEPS} produce profiles and usage")

    task = run.step(f"2/{STEPS} raw consumer (a)", expected)
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
        task = run.step(f"6/{STEPS} SIGKILL the worker", 1)
        w.kill()
        run.progress.update(task, completed=1)
        doc["recovery"] = step_recovery(run, settings, state_subscribers)
    if "join" in skipped:
        doc["join"] = _skipped(skipped["join"])
    else:
        doc["join"] = step_join(run, settings, state_subscribers)
    return rate_b
