"""`churnlight demo`: a simulated operator through a real worker on the embedded stack, then a report."""

from __future__ import annotations

import secrets
import time
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
