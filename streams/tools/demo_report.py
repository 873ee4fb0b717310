"""What `churnlight demo` shows of its run: the summary tables and the HTML report."""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from streams.tools.demo import LIGHT_ORDER, DemoResult, DemoScoring

COLOURS = {"green": "#2e9e44", "yellow": "#d9a400", "red": "#d0342c", "black": "#333333",
           "callcentre": "#3b6fb6", "sms": "#8e5ab5", "lead": "#3b6fb6"}


def print_summary(r: DemoResult, console: Console) -> None:
    """Print what a retention manager wants to know, in tables."""
    lights = Table(title="Watched base at the end (photographed subscribers)")
    for light in LIGHT_ORDER:
        lights.add_column(light, justify="right")
    lights.add_row(*(f"{r.totals.get(light, 0):,}" for light in LIGHT_ORDER))
    console.print(lights)

    moves = Counter((c["previous"] or "green", c["light"]) for c in r.changes)
    changes = Table(title=f"Light changes ({len(r.changes):,})")
    changes.add_column("from")
    changes.add_column("to")
    changes.add_column("count", justify="right")
    for (prev, light), n in sorted(moves.items(), key=lambda x: -x[1]):
        changes.add_row(prev, light, f"{n:,}")
    console.print(changes)

    tasks = Table(title="Retention tasks")
    tasks.add_column("channel")
    tasks.add_column("kind")
    tasks.add_column("issued", justify="right")
    tasks.add_column("suppressed", justify="right")
    by_kind: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for entry in r.feed:
        by_kind[(entry["channel"], entry["kind"])][entry["status"]] += 1
    for (channel, kind), counts in sorted(by_kind.items()):
        tasks.add_row(channel, kind, f"{counts['issued']:,}", f"{counts['suppressed']:,}")
    console.print(tasks)

    reasons = Counter(e["reason"] for e in r.feed if e["status"] == "suppressed")
    if reasons:
        suppressed = Table(title="Suppressed, and why")
        suppressed.add_column("reason")
        suppressed.add_column("count", justify="right")
        for reason, n in reasons.most_common():
            suppressed.add_row(reason, f"{n:,}")
        console.print(suppressed)

    outcome = Table(title="Did the lights catch the churners?", show_header=False)
    outcome.add_column()
    outcome.add_column(justify="right")
    outcome.add_row("labelled churners in the photographed base", f"{r.churners:,}")
    outcome.add_row("lit yellow or red before they left",
                    f"{r.lit:,} ({r.lit / r.churners:.0%})" if r.churners else "-")
    if r.lead_days:
        ordered = sorted(r.lead_days)
        outcome.add_row("days of warning, median (range)",
                        f"{ordered[len(ordered) // 2]} ({ordered[0]}-{ordered[-1]})")
    outcome.add_row("throughput", f"{r.events:,} events in {r.seconds:.0f} s = {r.events / max(r.seconds, 0.001):,.0f}/s")
    console.print(outcome)
    if r.scoring is not None:
        _print_scoring(r.scoring, console)


def _reasons_text(reasons: list[Any], values: bool = True) -> str:
    if not values:
        return ", ".join(name for name, _, _ in reasons)
    return ", ".join(f"{name} {'-' if value is None else f'{value:g}'}" for name, value, _ in reasons)


def _lift_rows(s: DemoScoring) -> list[tuple[str, str, str]]:
    """(what, lights, score) rows of the judgement on the run's history."""
    j = s.judged
    lights, at = j.get("lights") or {}, j.get("at_lights_load") or {}

    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    def pct(v: Any) -> str:
        return "-" if v is None else f"{v:.0%}"

    return [
        ("lift over the base's churn rate, at the lights' alarm load", num(lights.get("lift")), num(at.get("lift"))),
        ("recall at that load", pct(lights.get("recall")), pct(at.get("recall"))),
        ("top-decile lift", "", num(j.get("top_decile_lift"))),
        ("AUC", "", num(j.get("auc"))),
    ]


def _print_scoring(s: DemoScoring, console: Console) -> None:
    if s.call_day is not None:
        calls = Table(title=f"Call list for {s.call_day} (top {len(s.calls)} by expected saved revenue = risk x "
                            "30-day ARPU)")
        for name, justify in (("#", "right"), ("subscriber", "left"), ("risk", "right"), ("saved CNY", "right"),
                              ("light", "left"), ("why (the score's top 3)", "left"), ("offer", "left")):
            calls.add_column(name, justify=justify)  # type: ignore[arg-type]
        for i, c in enumerate(s.calls, start=1):
            calls.add_row(str(i), c.masked, f"{c.risk:.2f}", f"{c.expected_saved_cny:,.2f}", c.light or "-",
                          _reasons_text(c.reasons, values=False), (c.offer or {}).get("code", "-"))
        console.print(calls)
    j = s.judged
    lift = Table(title=f"Lights and score on this run ({j.get('examples', 0):,} subscriber-days, churn within "
                       f"{s.horizon_days} days {j.get('churn_rate') or 0:.1%}; model trained on another seed)")
    lift.add_column("")
    lift.add_column("lights", justify="right")
    lift.add_column("score", justify="right")
    for row in _lift_rows(s):
        lift.add_row(*row)
    console.print(lift)
    console.print(f"risk model: trained in {s.trained_seconds:.1f} s; call list and judgement in "
                  f"{s.judged_seconds:.1f} s")


# --- the HTML report ----------------------------------------------------------------------------

def _svg_lines(series: dict[str, list[int]], days: list[str], title: str, height: int = 220) -> str:
    width, pad = 760, 40
    top = max((max(v) for v in series.values() if v), default=1) or 1
    n = max(len(days) - 1, 1)
    parts = [f'<svg viewBox="0 0 {width} {height + 30}" role="img" aria-label="{html.escape(title)}">']
    parts.append(f'<line x1="{pad}" y1="{height}" x2="{width - 10}" y2="{height}" stroke="#999"/>')
    for i, day in enumerate(days):
        if i % max(len(days) // 6, 1) == 0:
            x = pad + i * (width - pad - 10) / n
            parts.append(f'<text x="{x:.0f}" y="{height + 18}" font-size="11" text-anchor="middle">{day[5:]}</text>')
    parts.append(f'<text x="{pad - 4}" y="12" font-size="11" text-anchor="end">{top:,}</text>')
    for name, values in series.items():
        points = " ".join(f"{pad + i * (width - pad - 10) / n:.1f},{height - v * (height - 20) / top:.1f}"
                          for i, v in enumerate(values))
        parts.append(f'<polyline fill="none" stroke="{COLOURS.get(name, "#555")}" stroke-width="2" points="{points}">'
                     f'<title>{html.escape(name)}</title></polyline>')
    legend = " ".join(f'<tspan fill="{COLOURS.get(k, "#555")}">&#9632; {html.escape(k)}</tspan>' for k in series)
    parts.append(f'<text x="{width - 10}" y="12" font-size="12" text-anchor="end">{legend}</text></svg>')
    return "".join(parts)


def _svg_bars(values: dict[str, int], title: str, colour: str, height: int = 200) -> str:
    width, pad = 760, 40
    keys = list(values)
    top = max(values.values(), default=1) or 1
    bar = (width - pad - 10) / max(len(keys), 1)
    parts = [f'<svg viewBox="0 0 {width} {height + 30}" role="img" aria-label="{html.escape(title)}">']
    for i, key in enumerate(keys):
        h = values[key] * (height - 20) / top
        x = pad + i * bar
        parts.append(f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{max(bar - 2, 1):.1f}" height="{h:.1f}" '
                     f'fill="{colour}"><title>{html.escape(key)}: {values[key]}</title></rect>')
        if i % max(len(keys) // 8, 1) == 0:
            parts.append(f'<text x="{x + bar / 2:.0f}" y="{height + 18}" font-size="11" text-anchor="middle">'
                         f'{html.escape(key[5:] if len(key) == 10 else key)}</text>')
    parts.append(f'<text x="{pad - 4}" y="12" font-size="11" text-anchor="end">{top:,}</text>')
    parts.append(f'<line x1="{pad}" y1="{height}" x2="{width - 10}" y2="{height}" stroke="#999"/></svg>')
    return "".join(parts)


def _report_scoring(s: DemoScoring) -> str:
    """The report's risk section: the last day's call list, and the lights' and the score's lift."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{i}</td><td>{e(c.masked)}</td><td>{c.risk:.2f}</td><td>{c.expected_saved_cny:,.2f}</td>"
        f"<td>{e(c.light or '-')}</td><td>{e(_reasons_text(c.reasons))}</td>"
        f"<td>{e((c.offer or {}).get('code', '-'))}</td></tr>" for i, c in enumerate(s.calls, start=1))
    lift = "".join(f"<tr><td>{e(what)}</td><td>{a}</td><td>{b}</td></tr>" for what, a, b in _lift_rows(s))
    return f"""<h2>Call list for {s.call_day}</h2><p>Watched subscribers not yet gone, ranked by expected saved
revenue (risk of leaving within {s.horizon_days} days x 30-day ARPU); the reasons are the score's three largest contributions.</p>
<table><tr><th>#</th><th>subscriber</th><th>risk</th><th>saved CNY</th><th>light</th><th>why</th><th>offer</th></tr>
{rows}</table><h2>Lights and score</h2><p>On this run's history ({s.judged.get('examples', 0):,} subscriber-days
with 30 days of labels after them), the model trained on another simulated operator.</p>
<table><tr><th></th><th>lights</th><th>score</th></tr>{lift}</table>"""


def write_report(r: DemoResult, path: Path) -> Path:
    """Write the HTML report: lights over time, tasks per day, lead-time histogram, the tables."""
    days = sorted({c["at"][:10] for c in r.changes} | {t["created_at"][:10] for t in r.tasks})
    if days:
        first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
        days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    # Lights over time: the watched base starts green; each change moves one subscriber.
    current: dict[str, str] = {}
    per_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for change in sorted(r.changes, key=lambda c: c["at"]):
        per_day[change["at"][:10]].append(change)
    series: dict[str, list[int]] = {light: [] for light in ("yellow", "red", "black")}
    for day in days:
        for change in per_day.get(day, []):
            current[change["msisdn"]] = change["light"]
        counts = Counter(current.values())
        for light in series:
            series[light].append(counts.get(light, 0))
    tasks_per_day: dict[str, dict[str, int]] = {ch: {d: 0 for d in days} for ch in ("callcentre", "sms")}
    for task in r.tasks:
        tasks_per_day[task["channel"]][task["created_at"][:10]] = tasks_per_day[task["channel"]].get(task["created_at"][:10], 0) + 1
    lead = Counter(r.lead_days)
    lead_bars = {str(d): lead.get(d, 0) for d in range(0, max(r.lead_days, default=0) + 1)}
    reasons = Counter(e["reason"] for e in r.feed if e["status"] == "suppressed")
    kinds = Counter((e["channel"], e["kind"], e["status"]) for e in r.feed)
    rows = "".join(f"<tr><td>{c}</td><td>{k}</td><td>{s}</td><td>{n:,}</td></tr>" for (c, k, s), n in sorted(kinds.items()))
    reason_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{n:,}</td></tr>" for k, n in reasons.most_common())
    lit = f"{r.lit:,} of {r.churners:,} ({r.lit / r.churners:.0%})" if r.churners else "-"
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>churnlight demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:820px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:right}}
td:first-child,th:first-child{{text-align:left}}h2{{margin-top:1.6em}}svg{{width:100%;height:auto}}</style></head><body>
<h1>churnlight demo report</h1>
<p>{len(r.labels):,} labelled subscribers in the history; {r.photographed:,} photographed (watched) subscribers;
{r.events:,} events processed in {r.seconds:.0f} s ({r.events / max(r.seconds, 0.001):,.0f} events/s).</p>
<h2>Watched base at the end</h2><table><tr>{"".join(f"<th>{k}</th>" for k in LIGHT_ORDER)}</tr>
<tr>{"".join(f"<td>{r.totals.get(k, 0):,}</td>" for k in LIGHT_ORDER)}</tr></table>
<h2>Lights over time (subscribers not green)</h2>{_svg_lines(series, days, "lights over time")}
<h2>Tasks per day</h2><h3>call centre</h3>{_svg_bars(tasks_per_day["callcentre"], "call-centre tasks per day", COLOURS["callcentre"])}
<h3>SMS</h3>{_svg_bars(tasks_per_day["sms"], "SMS tasks per day", COLOURS["sms"])}
<h2>Warning before leaving</h2><p>Labelled churners of the photographed base lit yellow or red before they left: {lit}.</p>
{_svg_bars(lead_bars, "days of warning", COLOURS["lead"]) if r.lead_days else "<p>No churner was lit.</p>"}
<p>Days between the first yellow or red light and the day the subscriber left.</p>
<h2>Task decisions</h2><table><tr><th>channel</th><th>kind</th><th>status</th><th>count</th></tr>{rows}</table>
<h2>Suppressed, and why</h2><table><tr><th>reason</th><th>count</th></tr>{reason_rows}</table>
{_report_scoring(r.scoring) if r.scoring is not None else ""}
</body></html>"""
    path.write_text(body, encoding="utf-8")
    return path
