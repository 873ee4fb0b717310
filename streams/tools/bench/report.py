"""The bench's table (what `churnlight bench` prints) and the check of what did not finish."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.table import Table

from streams.tools.bench.measure import PAUSE_S


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def render_table(doc: dict[str, Any]) -> Table:
    cfg = doc["config"]
    sizes = "" if doc["worker"].get("skipped") else (
        f": {cfg['events']:,} events, {cfg['subscribers']:,} subscribers, {cfg['partitions']} partitions")
    table = Table(title=f"churnlight bench{sizes}")
    table.add_column("step")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for step, key, rows in _STEPS:
        part = doc.get(key) or {"skipped": True, "reason": "not run"}
        if part.get("skipped"):
            table.add_row(step, "skipped", part["reason"])
        else:
            rows(table, doc)
    if doc.get("status") not in (None, "ok", "running"):
        table.add_row("[red]run[/red]", f"[red]{doc['status']}[/red]", str(doc.get("error", ""))[:200])
    return table


def _throughput_rows(table: Table, doc: dict[str, Any]) -> None:
    wk = doc["worker"]
    p = doc["produce"]
    table.add_row("1 produce", "messages (profiles + usage) / s", _fmt(p.get("messages_per_s")))
    raw = doc["raw_baseline"]
    table.add_row("2 raw consumer (a)", "events / s", _fmt(raw.get("events_per_s")))
    table.add_row("3 one worker (b)", "events / s", _fmt(wk.get("events_per_s")))
    table.add_row("", "b / a", _fmt(wk.get("ratio_to_raw"), digits=3))
    table.add_row("", "start-up excluded", _fmt(wk.get("startup_s"), " s", 1))
    _pauses_row(table, wk)
    table.add_row("", "outcomes", ", ".join(f"{k} {int(v):,}" for k, v in sorted((wk.get("outcomes") or {}).items())))
    _incomplete_row(table, wk)


def _latency_rows(table: Table, doc: dict[str, Any]) -> None:
    lat = doc["latency"]
    e2e, hist, est = lat["tasks_end_to_end"], lat["worker_histogram"], lat["usage_lag_estimate"]
    table.add_row("4 latency", "offered rate (half of b)", _fmt(lat["rate_target_per_s"], " /s"))
    table.add_row("", f"task end to end p50/p95/p99 ({e2e['tasks_seen']}/{e2e['triggers']} tasks)",
                  " / ".join(_ms(e2e[k]) for k in ("p50_s", "p95_s", "p99_s")))
    table.add_row("", f"worker histogram p50/p95/p99 ({int(hist['tasks'])} tasks)",
                  " / ".join(_ms(hist[k]) for k in ("p50_s", "p95_s", "p99_s")))
    table.add_row("", "usage backlog/rate ESTIMATE p50/p95/p99",
                  " / ".join(_ms(est[k]) for k in ("p50_s", "p95_s", "p99_s")))


def _state_rows(table: Table, doc: dict[str, Any]) -> None:
    st = doc["state"]
    table.add_row("5 state per subscriber", "median / p99 bytes",
                  f"{_fmt(st['median_bytes'])} / {_fmt(st['p99_bytes'])}")
    table.add_row("", "subscribers / records in changelog",
                  f"{_fmt(st['subscribers'])} / {_fmt(st['changelog_records'])}")


def _rss_rows(table: Table, doc: dict[str, Any]) -> None:
    peak = doc["rss"].get("peak_bytes")
    table.add_row("6 worker peak RSS", "VmHWM", "-" if peak is None else f"{peak / 2**20:,.0f} MiB")


def _recovery_rows(table: Table, doc: dict[str, Any]) -> None:
    rec = doc["recovery"]
    restart = rec.get("restart") or {}
    health, full = restart.get("health_s"), restart.get("complete_load_seen_s")
    table.add_row("7 restart on local state", "seconds to /health 200 / fully loaded",
                  f"{_fmt(health, ' s', 1)} / {_fmt(full, ' s', 1)}")
    table.add_row("", "records: local store / changelog tail / whole changelog",
                  f"{_fmt(restart.get('local_records'))} / {_fmt(restart.get('tail_records'))} / "
                  f"{_fmt(restart.get('changelog_records'))}")
    table.add_row("", "after its launch: preloaded / group's assignment",
                  f"{_fmt(restart.get('preloaded_s'), ' s', 1)} / {_fmt(restart.get('assigned_s'), ' s', 1)}")
    table.add_row("7 recovery from the changelog", "seconds to healthy + fully loaded",
                  _fmt(rec.get("seconds"), " s", 1))
    table.add_row("", "after its launch: the group's assignment", _fmt(rec.get("assigned_s"), " s", 1))
    table.add_row("", "of which to /health 200 (state loaded)", _fmt(rec.get("health_s"), " s", 1))
    table.add_row("", "subscribers loaded (worker's own load time)",
                  f"{_fmt(rec.get('subscribers_loaded'))} ({_fmt(rec.get('load_s_logged'), ' s', 2)})")

def _scaling_rows(table: Table, doc: dict[str, Any]) -> None:
    sc = doc["scaling"]
    table.add_row("8 scaling", "2 workers events / s", _fmt(sc.get("events_per_s")))
    table.add_row("", "vs 1 worker", _fmt(sc.get("speedup"), "x", 2))
    _pauses_row(table, sc)
    _incomplete_row(table, sc)


def _scoring_rows(table: Table, doc: dict[str, Any]) -> None:
    sc = doc["scoring"]
    h, plain, scored = sc["history"], sc["plain"], sc["scored"]
    table.add_row("9 scoring", "history (simulated)", f"{h['days']} days, {h['subscribers']:,} subscribers, "
                                                       f"{h['events']:,} events")
    for label, part in ((f"plain rule set ({plain.get('rule_set')})", plain), ("with the risk model", scored)):
        table.add_row("", f"{label}: events / s (window)",
                      f"{_fmt(part.get('events_per_s'))} ({_fmt(part.get('window_s'), ' s', 1)})")
        _pauses_row(table, part)
        _incomplete_row(table, part)
    table.add_row("", "light changes carrying a risk (plain / scored)",
                  f"{_fmt(plain.get('light_changes_with_risk'))} of {_fmt(plain.get('light_changes'))} / "
                  f"{_fmt(scored.get('light_changes_with_risk'))} of {_fmt(scored.get('light_changes'))}")
    share = sc.get("added_share")
    table.add_row("", "scoring adds to the worker's time", "-" if share is None else f"{share:+.1%}")


def _join_rows(table: Table, doc: dict[str, Any]) -> None:
    jn = doc["join"]
    if jn.get("note"):
        table.add_row("7b join", "[red]INCOMPLETE[/red]", f"[red]{jn['note']}[/red]")
        return
    table.add_row("7b join", "kept partitions' stall (let go to reading again)",
                  f"{_fmt(jn.get('stall_s'), ' s', 3)} over {len(jn['rebalances'])} rebalance(s)")
    table.add_row("", "of which the worker's own part (load, outputs, assign)", _fmt(jn.get("reader_ready_s"), " s", 3))
    table.add_row("", "read on through the rebalance", "yes" if jn.get("read_on") else "no")
    table.add_row("", "first keeps / reloads / second takes",
                  f"{jn['kept']} / {jn['reloaded_by_first']} / {jn['partitions_after']['second']}")


def _memory_rows(table: Table, doc: dict[str, Any]) -> None:
    mem = doc["memory"]
    table.add_row("10 memory", f"RSS per subscriber at {_fmt(mem['subscribers'])} (no broker)",
                  _fmt(mem.get("rss_per_subscriber_bytes"), " bytes"))
    table.add_row("", "the same once the decoded cache turned over",
                  _fmt(mem.get("rss_per_subscriber_cycled_bytes"), " bytes"))
    table.add_row("", "decoded (hot_states) / serialised median",
                  f"{_fmt(mem.get('decoded'))} / {_fmt(mem.get('state_bytes_median'), ' bytes')}")


# The table's steps: the label of a skipped step's row, its part of the bench document, its rows.
_STEPS: tuple[tuple[str, str, Callable[[Table, dict[str, Any]], None]], ...] = (
    ("1-3 throughput", "worker", _throughput_rows),
    ("4 latency", "latency", _latency_rows),
    ("5 state", "state", _state_rows),
    ("6 worker peak RSS", "rss", _rss_rows),
    ("7 recovery", "recovery", _recovery_rows),
    ("7b join", "join", _join_rows),
    ("8 scaling", "scaling", _scaling_rows),
    ("9 scoring", "scoring", _scoring_rows),
    ("10 memory", "memory", _memory_rows),
)


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
    if not recovery.get("skipped") and recovery and (recovery.get("seconds") is None
                                                    or (recovery.get("restart") or {}).get("seconds") is None):
        found.append("recovery")
    join = doc.get("join") or {}
    if not join.get("skipped") and join and (join.get("note") or join.get("stall_s") is None):
        found.append("join")
    scoring = doc.get("scoring") or {}
    for run in ("plain", "scored"):
        if not scoring.get("skipped") and scoring.get(run) and not scoring[run].get("complete"):
            found.append(f"scoring {run}")
    if not scoring.get("skipped") and scoring.get("scored") and not scoring["scored"].get("light_changes_with_risk"):
        found.append("scoring: no light change carries a risk")
    return found

