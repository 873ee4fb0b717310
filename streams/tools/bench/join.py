"""Bench step: a second worker joins a worker that holds the bulk workload's state (issue 15).

The first worker starts on the bulk topics, loads every partition's state from the changelog and
reads to the end; then a second worker of the same group starts. Faust's rebalance is eager
(every partition is revoked): the first worker reads its partitions on through it, and at the new
assignment releases those it loses and goes on with the others (streams.runtime.claims); when it
cannot (it lost its membership), it lets them all go, and keeps those that come back without
reading them again. From the first worker's log (info level): for each revocation, the time from
letting its input partitions go to reading again (the stall of the partitions it keeps), the
worker's own part of it (its `ready in` figure; when it let all go, the rest is the group's join
and sync), whether it read on through the rebalance, and which partitions its load kept in memory
and which it read from the changelog.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any, Final

from streams.settings import Settings
from streams.tools.bench.run import LOADED_RE, POLL_S, STEPS, Run, split_between
from streams.tools.harness import START_TIMEOUT_S, WorkerProcess

_STAMP: Final = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO "
LET_GO_RE: Final = re.compile(_STAMP + r"streams\.runtime\.reader: the reader let \d+ input partitions go", re.M)
READING_RE: Final = re.compile(
    _STAMP + r"streams\.runtime\.reader: the reader reads partitions \[([0-9, ]*)\].*\(ready in ([0-9.]+) s\b", re.M)
READ_ON_RE: Final = re.compile(_STAMP + r"streams\.runtime\.reader: the group is rebalancing: the reader reads "
                              r"partitions \[[0-9, ]*\] on", re.M)
LOAD_RE: Final = re.compile(
    _STAMP + r"streams\.runtime\.processor: loaded (\d+) subscribers of partitions \[([0-9, ]*)\] in ([0-9.]+) s"
    r"(?:; kept in memory \[([0-9, ]*)\], read from the changelog \[([0-9, ]*)\])?", re.M)
# After both workers read, how long the first worker's log is watched for a further rebalance.
SETTLE_S: Final = 5.0


def _at(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _parts(text: str | None) -> list[int]:
    return [int(p) for p in (text or "").replace(" ", "").split(",") if p]


def rebalances(log: str) -> list[dict[str, Any]]:
    """Each revocation in `log` (a worker's, info level) with the load and the reading after it."""
    let_go = [_at(m.group(1)) for m in LET_GO_RE.finditer(log)]
    read_on = [_at(m.group(1)) for m in READ_ON_RE.finditer(log)]
    reads = [(_at(m.group(1)), _parts(m.group(2)), float(m.group(3))) for m in READING_RE.finditer(log)]
    loads = [(_at(m.group(1)), int(m.group(2)), _parts(m.group(3)), float(m.group(4)), m.group(5) is not None,
              _parts(m.group(5)), _parts(m.group(6))) for m in LOAD_RE.finditer(log)]
    out: list[dict[str, Any]] = []
    for i, start in enumerate(let_go):
        end = let_go[i + 1] if i + 1 < len(let_go) else float("inf")
        read = next((r for r in reads if start <= r[0] < end), None)
        load = next((x for x in loads if start <= x[0] < end), None)
        begun = let_go[i - 1] if i else float("-inf")
        entry: dict[str, Any] = {"stall_s": None if read is None else round(read[0] - start, 3),
                                 "reader_ready_s": None if read is None else read[2],
                                 "read_on": any(begun <= at <= start for at in read_on),
                                 "partitions": None if read is None else read[1]}
        if load is not None:
            _, n, owned, load_s, partial, kept, fresh = load
            entry.update({"subscribers": n, "load_s": load_s, "kept": kept if partial else [],
                          "reloaded": fresh if partial else owned})
        out.append(entry)
    return out


def step_join(run: Run, settings: Settings, subscribers: int) -> dict[str, Any]:
    """Start a worker on the bulk topics, wait for its complete load, start a second one; measure
    the first worker's stall of the partitions it keeps and whether any of them was read again."""
    task = run.step(f"8/{STEPS} join: a second worker joins a loaded one", subscribers)
    first = run.worker(settings, "join-first", log_level="info").launch()
    limit = START_TIMEOUT_S + (run.workload.events + subscribers) / 1000
    loaded = False
    while time.monotonic() - first.started_at < limit and not loaded:
        first.check_alive()
        found = LOADED_RE.findall(first.log())
        if found and first.health() is not None:
            n, parts, _ = found[-1]
            run.progress.update(task, completed=int(n))
            loaded = int(n) >= subscribers and len(_parts(parts)) == run.partitions
        time.sleep(POLL_S)
    if not loaded:
        first.stop()
        return {"seconds": None, "note": f"the first worker did not load every subscriber within {limit:.0f} s"}
    # Caught up: nothing left to read (the lag gauge is refreshed every 5 s).
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline and _lag(first) != 0:
        time.sleep(1.0)
    mark = len(first.log())
    joined_at = time.time()
    second = run.worker(settings, "join-second", log_level="info").launch()
    pair = [first, second]
    split_s: float | None = None
    while time.monotonic() - second.started_at < limit:
        second.check_alive()
        if split_between(pair, run.partitions):
            split_s = time.monotonic() - second.started_at
            break
        time.sleep(POLL_S)
    time.sleep(SETTLE_S)
    owned = [sorted((w.health() or {}).get("partitions") or []) for w in pair]
    log = first.log()[mark:]
    for w in pair:
        w.stop()
    steps = rebalances(log)
    stalls = [s["stall_s"] for s in steps if s["stall_s"] is not None]
    out: dict[str, Any] = {
        "subscribers": subscribers, "second_started_at": joined_at,
        "both_reading_s": split_s, "partitions_after": {"first": owned[0], "second": owned[1]},
        "rebalances": steps,
        # The kept partitions are not read from letting go to reading again, at each rebalance.
        "stall_s": round(sum(stalls), 3) if stalls and len(stalls) == len(steps) else None,
        "reader_ready_s": round(sum(s["reader_ready_s"] for s in steps if s["reader_ready_s"] is not None), 3),
        # Whether the first worker read its partitions on through every rebalance.
        "read_on": bool(steps) and all(s["read_on"] for s in steps),
        "kept": sorted(set(owned[0]) & {p for s in steps for p in s.get("kept", [])}),
        "reloaded_by_first": sorted({p for s in steps for p in s.get("reloaded", [])}),
    }
    if split_s is None:
        out["note"] = f"the two workers did not split the partitions within {limit:.0f} s"
    elif not steps:
        out["note"] = "the first worker's log shows no revocation"
    return out


def _lag(w: WorkerProcess) -> float | None:
    try:
        return w.metric("churnlight_consumer_lag")
    except Exception:
        return None

