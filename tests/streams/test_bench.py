"""`churnlight bench`: a valid workload, honest arithmetic, and a smoke run that reports every step.

No test asserts a timing: only that the figures exist, are positive where they must be, and that
the counts behind them are the ones produced.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from rules.events import PROFILES, Profile, Usage, decode
from streams.tools.bench import measure as bench_module
from streams.tools.bench.measure import histogram_quantile, measure_throughput, percentile
from streams.tools.bench.workload import Workload, records

ROOT = Path(__file__).resolve().parents[2]


def test_workload_is_valid_input_in_time_order_with_unique_ids() -> None:
    wl = Workload(events=5000, subscribers=400, zone=ZoneInfo("Asia/Shanghai"), start_day=date(2026, 7, 1))
    profiles: list[Profile] = []
    usage: list[Usage] = []
    for topic, key, value in records(wl):
        event = decode(topic, key, value)
        if topic == PROFILES:
            assert isinstance(event, Profile), (event, value)
            profiles.append(event)
        else:
            assert isinstance(event, Usage), (event, value)
            usage.append(event)
    assert len(profiles) == 400 and len(usage) == 5000
    assert len({u.event_id for u in usage}) == 5000
    times = [u.ts_ms for u in usage]
    assert times == sorted(times)
    assert 29 <= (times[-1] - times[0]) / 86_400_000 < 30
    assert {u.msisdn for u in usage} <= {p.msisdn for p in profiles}
    assert {u.type for u in usage} == {"voice", "sms", "data"}
    photographed = sum(p.photo is not None for p in profiles) / len(profiles)
    assert 0.15 < photographed < 0.35
    assert any(p.prepaid for p in profiles)
    # The same seed gives the same bytes: two runs of the bench compare like with like.
    assert list(records(wl)) == list(records(wl))


def test_percentile_and_histogram_quantile() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.99) == 9.9
    # 10 observations, all in (0.1, 0.25]: the median interpolates to the middle of that bucket.
    buckets = [(0.1, 0.0), (0.25, 10.0), (math.inf, 10.0)]
    assert histogram_quantile(0.5, buckets) == 0.175
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    # Beyond the last finite bound all a histogram can say is that bound.
    assert histogram_quantile(0.99, [(1.0, 5.0), (math.inf, 10.0)]) == 1.0


class _ScriptedWorker:
    """Stands in for a WorkerProcess: /metrics answers with the next scripted events total (None = down)."""

    def __init__(self, totals: list[float | None]) -> None:
        self.totals = totals
        self.started_at = 0.0

    def check_alive(self) -> None:
        pass

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]] | None:
        total = self.totals.pop(0) if len(self.totals) > 1 else self.totals[0]
        if total is None:
            return None
        return {"churnlight_events_total": [({"topic": "usage.events", "outcome": "applied"}, total)]}


def test_throughput_window_leaves_out_start_up_and_idle_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_module, "POLL_S", 0.01)
    # Down, then up and idle, then 4 steps of progress to the expected 400.
    w = _ScriptedWorker([None, None, 0, 0, 0, 100, 200, 300, 400])
    w.started_at = time.monotonic()
    result = measure_throughput([w], 400, lambda n: None, max_s=10)  # type: ignore[list-item]
    assert result.complete and result.counted == 400 and result.window_events == 400
    assert result.window_s is not None and result.events_per_s is not None
    assert result.startup_s is not None and result.startup_s > 0
    # A worker that pauses mid-way is measured with its pause inside the window, and the pause is named.
    monkeypatch.setattr(bench_module, "PAUSE_S", 0.05)
    pausing = _ScriptedWorker([0.0, 100.0, *[100.0] * 10, 200.0])
    paused = measure_throughput([pausing], 200, lambda n: None, max_s=10)  # type: ignore[list-item]
    assert paused.complete and paused.window_events == 200 and paused.pauses >= 1 and paused.paused_s >= 0.05
    # A worker that stops counting is reported incomplete, never extrapolated.
    monkeypatch.setattr(bench_module, "STALL_S", 0.2)
    stuck = _ScriptedWorker([0, 50, 50])
    partial = measure_throughput([stuck], 400, lambda n: None, max_s=10)  # type: ignore[list-item]
    assert not partial.complete and partial.counted == 50 and "no progress" in (partial.note or "")


def test_quick_bench_runs_every_step_and_writes_the_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNLIGHT_")}  # embedded stack
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["COLUMNS"] = "160"
    done = subprocess.run(
        [sys.executable, "-c", "from streams.tools.bench import bench; bench()", "--quick", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, timeout=240,
    )
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr[-4000:]
    assert "churnlight bench" in stdout and "raw consumer (a)" in stdout and "b / a" in stdout
    assert "7/9 recovery" in stderr  # the progress lines
    assert "7 restart on local state" in stdout

    doc = orjson.loads(out.read_bytes())
    assert doc["status"] == "ok" and doc["incomplete"] == []
    assert doc["work_dir"] is None  # a clean run leaves no directory behind
    assert {"config", "machine", "produce", "raw_baseline", "worker", "latency", "state", "rss", "recovery",
            "join", "scaling", "scoring", "memory"} <= doc.keys()
    expected = 3000 + 300
    assert doc["produce"]["messages"] == expected
    raw = doc["raw_baseline"]
    assert raw["messages"] == expected and raw["keys"] == 300 and raw["events_per_s"] > 0

    worker = doc["worker"]
    assert worker["complete"] and worker["counted"] == expected
    assert worker["outcomes"] == {"applied": expected}  # every bench event is valid and new
    assert worker["events_per_s"] > 0 and worker["ratio_to_raw"] > 0 and worker["startup_s"] > 0

    latency = doc["latency"]
    assert not latency.get("skipped") and latency["caught_up"]
    e2e = latency["tasks_end_to_end"]
    assert e2e["triggers"] > 0 and e2e["tasks_seen"] == e2e["triggers"]
    assert 0 < e2e["p50_s"] <= e2e["p95_s"] <= e2e["p99_s"] <= e2e["max_s"]
    assert latency["worker_histogram"]["tasks"] == e2e["triggers"]
    assert latency["worker_histogram"]["p50_s"] > 0
    assert latency["usage_lag_estimate"]["samples"] > 0
    assert "ESTIMATE" in latency["usage_lag_estimate"]["method"]

    state = doc["state"]
    assert state["subscribers"] == 300 and 0 < state["median_bytes"] <= state["p99_bytes"]
    assert doc["rss"]["peak_bytes"] > 0

    recovery = doc["recovery"]
    assert recovery["subscribers_loaded"] == 300 and recovery["seconds"] > 0
    assert recovery["partitions"] == [0, 1, 2, 3]
    assert recovery["partitions_whole"] == [0, 1, 2, 3] and recovery["changelog_records"] > 300
    # The killed worker restarted on its own disk: every partition from its local store, a tail at most.
    restart = recovery["restart"]
    assert restart["subscribers_loaded"] == 300 and restart["seconds"] > 0
    assert restart["partitions_local"] == [0, 1, 2, 3] and restart["partitions_whole"] == []
    assert restart["local_records"] >= 300 and restart["tail_records"] < recovery["changelog_records"]

    join = doc["join"]
    # The first worker keeps its partitions when the second joins: none is read again.
    assert join["reloaded_by_first"] == [] and join["rebalances"], join
    assert join["kept"] == join["partitions_after"]["first"] and join["kept"], join
    assert sorted(join["kept"] + join["partitions_after"]["second"]) == [0, 1, 2, 3]
    # It read them on through the rebalance; its own part of the stall is all of it, give or take
    # the log's milliseconds.
    assert join["read_on"] and all(r["read_on"] for r in join["rebalances"]), join
    assert 0 < join["reader_ready_s"] <= join["stall_s"] + 0.001

    assert doc["scaling"] == {"skipped": True, "reason": doc["scaling"]["reason"]}
    assert "--quick" in doc["scaling"]["reason"]
    assert doc["scoring"]["skipped"] and "--quick" in doc["scoring"]["reason"]

    memory = doc["memory"]  # step 10: 20k subscribers loaded into a store in a child process
    assert memory["subscribers"] == 20_000 and memory["decoded"] == 20_000  # under the default cache
    assert memory["watched"] > 0 and memory["rss_per_subscriber_bytes"] > 0
