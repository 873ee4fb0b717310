"""`churnlight demo`: a simulated operator through a real worker on the embedded stack, then a report."""

from __future__ import annotations

import html
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streams.auth import write_user
from streams.embedded import free_port
from streams.settings import Settings
from streams.tools import scrape
from streams.tools.harness import WorkerFailed, WorkerProcess
from streams.tools.model import scored_rule_set, train_simulated, training_config
from streams.tools.replay import iter_file, replay
from streams.tools.sim import SimConfig, write_history
from streams.tools.topic_reader import read_topic
from streams.topics import LIGHTS, TASKS_CALLCENTRE, TASKS_SMS, ensure_topics

LIGHT_ORDER = ("green", "yellow", "red", "black")
COLOURS = {"green": "#2e9e44", "yellow": "#d9a400", "red": "#d0342c", "black": "#333333",
           "callcentre": "#3b6fb6", "sms": "#8e5ab5", "lead": "#3b6fb6"}


@dataclass
class DemoResult:
    settings: Settings  # as the demo's worker runs: its topic prefix, web port, access settings
    events: int
    seconds: float
    totals: dict[str, int]
    changes: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    feed: list[dict[str, str]]
    labels: dict[str, dict[str, Any]]
    photographed: int
    lead_days: list[int] = field(default_factory=list)
    lit: int = 0
    churners: int = 0
    access: Access | None = None
    scoring: DemoScoring | None = None


@dataclass
class DemoScoring:
    """The risk model of the demo: trained on another seed, named by the worker's rule set, judged here."""

    model: Path
    trained_seconds: float
    validation: dict[str, Any]  # the model's own validation (its training seed's later days)
    judged: dict[str, Any] = field(default_factory=dict)  # on this run's history: lights beside score
    calls: list[Any] = field(default_factory=list)  # rules.risk.Call, the last day's ranked call list
    call_day: date | None = None
    judged_seconds: float = 0.0
    horizon_days: int = 60  # the model's: churned within this many days of a close


# Ctrl-C stops the demo within 3 s: the console, then the worker (each gets this long to exit
# cleanly before SIGKILL; the demo's state is thrown away anyway), then the embedded servers.
STOP_TIMEOUT_S = 1.2
_children: list[WorkerProcess] = []


@contextmanager
def _child(command: str, settings: Settings, log_path: Path) -> Iterator[WorkerProcess]:
    """Run `churnlight COMMAND` with `settings` until the block ends."""
    proc = WorkerProcess(settings, log_path, name=f"the {command}", command=command,
                         stop_timeout_s=STOP_TIMEOUT_S).launch()
    _children.append(proc)
    try:
        yield proc
    finally:
        proc.stop()
        _children.remove(proc)


def signal_children() -> None:
    """Ask every child of the demo to stop at once (each is then waited for in turn, in order)."""
    for proc in _children:
        proc.terminate()


@dataclass(frozen=True)
class Access:
    """Who can sign in to the demo's console: the screenshots sign in as `user`."""

    user: str
    password: str
    note: str


def demo_access(settings: Settings, out_dir: Path) -> tuple[Settings, Access | None]:
    """Give the demo an API token and a users file of its own unless the settings have them.

    The passwords go to a file only its owner can read, never to the screen or a log."""
    if settings.api_token is not None or settings.users_file is not None:
        token = settings.api_token.get_secret_value() if settings.api_token is not None else None
        access = Access("", token, "sign in with your users file or the API token") if token else None
        return settings, access
    passwords = {role: secrets.token_urlsafe(12) for role in ("manager", "supervisor")}
    users = out_dir / "console-users"
    users.unlink(missing_ok=True)
    for role, password in passwords.items():
        write_user(users, role, role, password)  # type: ignore[arg-type]
    secret_file = out_dir / "console-passwords.txt"
    secret_file.unlink(missing_ok=True)
    secret_file.touch(mode=0o600)
    secret_file.write_text("".join(f"{role} {pw}\n" for role, pw in passwords.items()), encoding="utf-8")
    updated = settings.model_copy(update={"api_token": SecretStr(secrets.token_urlsafe(24)), "users_file": users})
    note = f"sign in as manager (masked numbers) or supervisor (full); passwords in {secret_file.resolve()}"
    return updated, Access("manager", passwords["manager"], note)


@contextmanager
def console_process(settings: Settings, out_dir: Path) -> Iterator[str]:
    """Run `churnlight console` for the demo's worker; yield its URL once it answers."""
    port = settings.console_port if _port_free(settings.console_port) else free_port()
    settings = settings.model_copy(update={"console_port": port,
                                           "workers": f"http://127.0.0.1:{settings.web_port}"})
    with _child("console", settings, out_dir / "console.log") as proc:
        try:
            proc.wait_healthy(30)
        except WorkerFailed:
            raise RuntimeError(f"the console did not start; see {out_dir / 'console.log'}") from None
        yield proc.url


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _read_topic(settings: Settings, base: str) -> list[dict[str, Any]]:
    return [orjson.loads(msg.value()) for msg in read_topic(settings, settings.topic(base))]


def run_demo(settings: Settings, out_dir: Path, *, subscribers: int, days: int, activity: float, seed: int,
             console: Console, keep: ExitStack, fresh_redis: bool) -> DemoResult:
    """Simulate, run a worker, replay, watch it work; return what happened.

    The worker stays up until `keep` closes; `fresh_redis`: empty the (demo's own) Redis first."""
    import redis as redis_lib

    out_dir.mkdir(parents=True, exist_ok=True)
    history, labels_path = out_dir / "history.jsonl", out_dir / "labels.jsonl"
    cfg = SimConfig(subscribers=subscribers, days=days, activity=activity, seed=seed)
    with console.status(f"simulating {subscribers:,} subscribers over {days} days..."):
        stats = write_history(cfg, history, labels_path)
    console.print(f"simulated {stats.lines:,} events ({stats.photographed:,} photographed subscribers, "
                  f"{stats.churners:,} churners) in {stats.seconds:.1f} s -> {history}")

    scoring = train_model(cfg, out_dir, settings, console)
    if scoring is not None:
        settings = settings.model_copy(update={"rules": str(scored_rule_set(settings.rules, scoring.model, out_dir))})
    settings = settings.model_copy(update={
        "topic_prefix": settings.topic_prefix or f"demo{int(time.time())}.",
        "web_port": free_port(), "web_host": "127.0.0.1",
        "data_dir": out_dir / "worker-data", "log_level": "info",
    })
    settings, access = demo_access(settings, out_dir)
    ensure_topics(settings)
    assert settings.redis is not None
    rclient = redis_lib.Redis.from_url(settings.redis.get_secret_value())
    if fresh_redis:
        # The embedded Redis keeps its append-only file: an earlier demo's publication claims would
        # hold back this run's tasks (same task ids).
        rclient.flushdb()
    else:
        # A configured Redis is not the demo's to empty: a fresh feed at least.
        rclient.delete("churnlight:feed")
    proc = keep.enter_context(_child("worker", settings, out_dir / "worker.log"))
    with console.status("starting the worker (consumer-group join, table recovery)..."):
        try:
            proc.wait_healthy(120)
        except WorkerFailed:
            raise RuntimeError(f"the worker exited or did not become healthy; see {out_dir / 'worker.log'}") from None
    with console.status("replaying the history into Kafka..."):
        report = replay(settings, iter_file(history))
    sent = report.sent
    started = time.monotonic()
    last_change = (0.0, time.monotonic())
    with Live(console=console, refresh_per_second=2) as live:
        while True:
            if not proc.alive():
                raise RuntimeError(f"the worker exited; see {out_dir / 'worker.log'}")
            samples = proc.metrics() or {}
            done = scrape.total(samples, "churnlight_events_total")
            live.update(_progress_table(samples, done, sent, time.monotonic() - started))
            if done != last_change[0]:
                last_change = (done, time.monotonic())
            if done >= sent and time.monotonic() - last_change[1] > 3:
                break
            if time.monotonic() - last_change[1] > 120:
                console.print("[yellow]the worker made no progress for 2 minutes; reporting what it did[/yellow]")
                break
            time.sleep(0.5)
    seconds = last_change[1] - started
    tasks = _read_topic(settings, TASKS_CALLCENTRE) + _read_topic(settings, TASKS_SMS)
    outcome_lines = simulated_outcomes(tasks, seed)
    if outcome_lines:
        with console.status(f"the call centre and the SMS gateway report {len(outcome_lines):,} outcomes..."):
            replay(settings, iter(outcome_lines))
            want = done + len(outcome_lines)
            deadline = time.monotonic() + 60
            while done < want and time.monotonic() < deadline and proc.alive():
                time.sleep(0.3)
                done = scrape.total(proc.metrics() or {}, "churnlight_events_total")
    got = proc.request("/lights/summary")
    totals = orjson.loads(got[1]).get("totals", {}) if got is not None and got[0] == 200 else {}
    changes = _read_topic(settings, LIGHTS)
    feed = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rclient.xrange("churnlight:feed")]
    labels = {d["msisdn"]: d for d in (orjson.loads(line) for line in iter_file(labels_path))}
    for name, rows in (("light_changes.jsonl", changes), ("tasks.jsonl", tasks)):
        (out_dir / name).write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    result = DemoResult(settings, int(done) - len(outcome_lines), seconds, totals, changes, tasks, feed, labels, stats.photographed,
                        access=access, scoring=scoring)
    _score(result)
    if scoring is not None:
        with console.status("ranking the last day's call list and judging lights and score..."):
            judge_run(scoring, history, labels_path, settings)
    return result


def train_model(run: SimConfig, out_dir: Path, settings: Settings, console: Console) -> DemoScoring | None:
    """Train the demo's risk model on another seed of the same simulator; None if it cannot learn."""
    cfg = training_config(run)
    with console.status(f"training a risk model on another simulated operator ({cfg.subscribers:,} subscribers, "
                        f"{cfg.days} days, seed {cfg.seed})..."):
        try:
            trained = train_simulated(run, out_dir, settings.rules, settings.zone)
        except ValueError as exc:
            console.print(f"[yellow]no risk model: {exc}[/yellow]")
            return None
    console.print(f"trained a risk model in {trained.seconds:.1f} s -> {trained.path}")
    return DemoScoring(trained.path, trained.seconds, trained.validation)


def judge_run(scoring: DemoScoring, history: Path, labels_path: Path, settings: Settings) -> None:
    """Fold the run's history offline: the last day's call list, and the lights' and the score's lift."""
    from rules.risk import call_list, load_model
    from rules.ruleset import load_rule_set
    from streams.tools.train import churn_days_of, collect, judge_model, load_labels

    started = time.monotonic()
    rules = load_rule_set(settings.rules)
    model = load_model(scoring.model)
    scoring.horizon_days = model.horizon_days
    examples, run = collect(history, rules, settings.zone)
    if run.last_day is not None:
        scoring.call_day = run.last_day - timedelta(days=1)
        scoring.calls = call_list(run.states, model, run.last_day, rules, settings.zone, limit=10)
        churn = churn_days_of(load_labels(labels_path))
        scoring.judged = judge_model(model, history, examples, churn, run.last_day.toordinal() + 1)
    scoring.judged_seconds = time.monotonic() - started



# What the simulated call centre and SMS gateway report back, with the share of tasks (the rest
# report nothing): a call centre works through about 70 % of its list, an SMS gateway nearly all.
OUTCOME_SHARES = {
    "callcentre": (("reached", 0.25), ("accepted", 0.15), ("declined", 0.12), ("unreachable", 0.18)),
    "sms": (("delivered", 0.88), ("failed", 0.04)),
}


def simulated_outcomes(tasks: list[dict[str, Any]], seed: int, window_days: int = 30) -> list[bytes]:
    """Return `retention.outcomes` history lines for the demo's tasks of its last `window_days` days
    (seeded, one at most per task): older outcomes would be older than the worker's window, which
    drops them as late."""
    import hashlib

    if not tasks:
        return []
    since = max(datetime.fromisoformat(t["created_at"]) for t in tasks) - timedelta(days=window_days - 1)
    lines = []
    for task in tasks:
        if datetime.fromisoformat(task["created_at"]) < since:
            continue
        draw = int(hashlib.sha256(f"{seed}:{task['task_id']}".encode()).hexdigest()[:8], 16) / 2**32
        status = None
        for name, share in OUTCOME_SHARES.get(task["channel"], ()):
            if draw < share:
                status = name
                break
            draw -= share
        if status is None:
            continue
        after = timedelta(hours=3) if task["channel"] == "callcentre" else timedelta(minutes=2)
        sent = datetime.fromisoformat(task.get("send_after") or task["created_at"]) + after
        lines.append(orjson.dumps({"topic": "retention.outcomes", "value": {
            "task_id": task["task_id"], "msisdn": task["msisdn"], "ts": sent.isoformat(),
            "channel": task["channel"], "status": status}}))
    return lines


def _progress_table(samples: scrape.Samples, done: float, sent: int, seconds: float) -> Table:
    table = Table(title="churnlight demo: the worker at work", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rate = done / seconds if seconds > 0 else 0.0
    table.add_row("events processed", f"{int(done):,} / {sent:,} ({done / max(sent, 1):.0%})")
    table.add_row("throughput", f"{rate:,.0f} events/s")
    lights = "  ".join(f"{light} {int(scrape.total(samples, 'churnlight_lights', {'light': light})):,}" for light in LIGHT_ORDER)
    table.add_row("lights now", lights)
    table.add_row("light changes", f"{int(scrape.total(samples, 'churnlight_light_changes_total')):,}")
    table.add_row("tasks issued", f"{int(scrape.total(samples, 'churnlight_tasks_total', {'status': 'issued'})):,}")
    table.add_row("tasks suppressed", f"{int(scrape.total(samples, 'churnlight_tasks_total', {'status': 'suppressed'})):,}")
    table.add_row("dead letters", f"{int(scrape.total(samples, 'churnlight_deadletter_total')):,}")
    return table


def _score(r: DemoResult) -> None:
    first_alarm: dict[str, date] = {}
    for change in sorted(r.changes, key=lambda c: c["at"]):
        if change["light"] in ("yellow", "red"):
            first_alarm.setdefault(change["msisdn"], datetime.fromisoformat(change["at"]).date())
    churners = {m: d for m, d in r.labels.items() if d.get("churn_date") and d.get("photographed")}
    r.churners = len(churners)
    for msisdn, label in churners.items():
        alarm = first_alarm.get(msisdn)
        churn = date.fromisoformat(label["churn_date"])
        if alarm is not None and alarm <= churn:
            r.lit += 1
            r.lead_days.append((churn - alarm).days)


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
