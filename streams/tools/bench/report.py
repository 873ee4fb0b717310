"""The bench's table (what `churnlight bench` prints) and the check of what did not finish."""

from __future__ import annotations

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
    _throughput_rows(table, doc)
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
    if rss.get("skipped"):
        table.add_row("6 worker peak RSS", "skipped", rss["reason"])
    else:
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
    _scoring_rows(table, doc["scoring"])
    _memory_rows(table, doc.get("memory") or {"skipped": True, "reason": "not run"})
    if doc.get("status") not in (None, "ok", "running"):
        table.add_row("[red]run[/red]", f"[red]{doc['status']}[/red]", str(doc.get("error", ""))[:200])
    return table


def _throughput_rows(table: Table, doc: dict[str, Any]) -> None:
    wk = doc["worker"]
    if wk.get("skipped"):
        table.add_row("1-3 throughput", "skipped", wk["reason"])
        return
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


def _scoring_rows(table: Table, sc: dict[str, Any]) -> None:
    if sc.get("skipped"):
        table.add_row("9 scoring", "skipped", sc["reason"])
        return
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


def _memory_rows(table: Table, mem: dict[str, Any]) -> None:
    if mem.get("skipped"):
        table.add_row("10 memory", "skipped", mem["reason"])
        return
    table.add_row("10 memory", f"RSS per subscriber at {_fmt(mem['subscribers'])} (no broker)",
                  _fmt(mem.get("rss_per_subscriber_bytes"), " bytes"))
    table.add_row("", "the same once the decoded cache turned over",
                  _fmt(mem.get("rss_per_subscriber_cycled_bytes"), " bytes"))
    table.add_row("", "decoded (hot_states) / serialised median",
                  f"{_fmt(mem.get('decoded'))} / {_fmt(mem.get('state_bytes_median'), ' bytes')}")


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
    if not recovery.get("skipped") and recovery and recovery.get("seconds") is None:
        found.append("recovery")
    scoring = doc.get("scoring") or {}
    for run in ("plain", "scored"):
        if not scoring.get("skipped") and scoring.get(run) and not scoring[run].get("complete"):
            found.append(f"scoring {run}")
    if not scoring.get("skipped") and scoring.get("scored") and not scoring["scored"].get("light_changes_with_risk"):
        found.append("scoring: no light change carries a risk")
    return found

