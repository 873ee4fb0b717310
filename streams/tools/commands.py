"""The tools' commands of `churnlight`: demo, simulate, train, replay, backtest and bench.

streams.cli adds them to its group; they drive the worker from outside (subprocesses, topics, the
offline fold) and import nothing of the command line itself.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rules.ruleset import RuleSetError
from streams import preflight
from streams.connect import connected, fail, settings_or_exit
from streams.logs import setup_logging
from streams.tools.bench import bench
from streams.topics import StartupError

console = Console(stderr=True)


@click.command()
@click.option("--subscribers", type=click.IntRange(100, 1_000_000), default=2000, show_default=True)
@click.option("--days", type=click.IntRange(35, 365), default=90, show_default=True)
@click.option("--activity", type=click.FloatRange(0.05, 1.0), default=0.25, show_default=True,
              help="usage events per day relative to a real base (same minutes and revenue)")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("churnlight-demo"),
              show_default=True, help="where the history, the labels and the report go")
@click.option("--no-console", is_flag=True, help="exit after the report instead of serving the console")
def demo(subscribers: int, days: int, activity: float, seed: int, out: Path, no_console: bool) -> None:
    """Simulate an operator, run the processor on it (embedded stack), summarise, write a report, then
    serve the console until Ctrl-C (in a terminal)."""
    from contextlib import ExitStack

    from streams.console import screenshots
    from streams.tools.demo import console_process, run_demo, signal_children
    from streams.tools.demo_report import print_summary, write_report

    settings = settings_or_exit().model_copy(update={"data_dir": out / "stack"})
    setup_logging("warn", settings.log_format)
    screen = Console()
    stay = not no_console and sys.stdin.isatty() and sys.stdout.isatty()
    try:
        with connected(settings) as resolved, ExitStack() as keep:
            result = run_demo(resolved, out, subscribers=subscribers, days=days, activity=activity, seed=seed,
                              console=screen, keep=keep, fresh_redis=settings.redis is None)
            print_summary(result, screen)
            report = write_report(result, out / "report.html")
            screen.print(f"\nreport written to [bold]{report.resolve()}[/bold]")
            if no_console:
                return
            url = keep.enter_context(console_process(result.settings, out))
            keep.callback(signal_children)  # runs first on the way out: console and worker stop side by side
            if result.access is None:
                screen.print("[yellow]no console screenshots: the console's users file is yours and no API token "
                             "is set[/yellow]")
            else:
                with screen.status("taking screenshots of the console..."):
                    shots = screenshots.take(url, out / "screenshots", user=result.access.user,
                                             password=result.access.password)
                if isinstance(shots, str):
                    screen.print(f"[yellow]no console screenshots: {shots}[/yellow]")
                else:
                    screen.print(f"console screenshots in [bold]{(out / 'screenshots').resolve()}[/bold]")
            if not stay:
                return
            screen.print(f"\n[bold]the console: {url}[/bold]  ({result.access.note if result.access else ''})")
            screen.print("the worker and the console stay up; Ctrl-C stops them")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        console.print("[yellow]demo stopped; the console, the worker and the embedded servers were shut down[/yellow]")
        raise SystemExit(130) from None
    except (RuntimeError, StartupError) as exc:
        fail("demo", exc)


@click.command()
@click.option("--subscribers", type=click.IntRange(1, 50_000_000), default=20000, show_default=True)
@click.option("--days", type=click.IntRange(1, 3650), default=90, show_default=True)
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), default="2026-07-01", show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--activity", type=click.FloatRange(0.01, 10), default=1.0, show_default=True,
              help="usage events per day relative to a real base (same minutes and revenue)")
@click.option("--bad-share", type=click.FloatRange(0, 0.5), default=0.001, show_default=True)
@click.option("--dup-share", type=click.FloatRange(0, 0.5), default=0.002, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="history file (JSON lines)")
@click.option("--labels", "labels_out", type=click.Path(dir_okay=False, path_type=Path), help="labels file")
@click.option("--produce", is_flag=True, help="produce into the input topics instead of (or besides) a file")
@click.option("--unflattering", is_flag=True,
              help="add stayers with dips and drops and leavers without a decline (streams.tools.sim.config.UNFLATTERING)")
def simulate(subscribers: int, days: int, start: datetime, seed: int, activity: float, bad_share: float,
             dup_share: float, out: Path | None, labels_out: Path | None, produce: bool, unflattering: bool) -> None:
    """Write a synthetic, labelled event history (JSON lines), or produce it into Kafka."""
    from streams.tools.sim import SimConfig, Simulation, write_labels
    from streams.tools.sim.config import UNFLATTERING

    if out is None and not produce:
        raise click.UsageError("give --out FILE, --produce, or both")
    try:
        cfg = SimConfig(subscribers=subscribers, days=days, start=start.date(), seed=seed, activity=activity,
                        bad_share=bad_share, dup_share=dup_share, **(UNFLATTERING if unflattering else {}))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = settings_or_exit()
    setup_logging("warn", settings.log_format)
    if produce:
        preflight.check(settings, redis=False)  # before the progress bar shows
    with _progress() as progress:
        bar = progress.add_task(f"simulating {subscribers:,} subscribers", total=days)
        sim = Simulation(cfg, lambda done, total: progress.update(bar, completed=done))
        lines = (line.encode() for chunk in sim.chunks() for line in chunk)
        if produce:
            from streams.tools.replay import replay as run_replay
            from streams.topics import ensure_topics

            with connected(settings, redis=False) as resolved:
                ensure_topics(resolved)
                with (out.open("wb") if out is not None else open(os.devnull, "wb")) as fh:
                    report = run_replay(resolved, _tee(lines, fh))
            if not report.ok:
                console.print(f"[red]{sum(report.failed.values())} message(s) not delivered[/red]")
                raise SystemExit(1)
        else:
            assert out is not None
            with out.open("wb") as fh:
                for line in lines:
                    fh.write(line)
    if labels_out is not None:
        write_labels(sim, labels_out)
    st = sim.stats
    assert st is not None
    Console().print(f"{st.lines:,} events ({st.bad:,} bad, {st.duplicates:,} resends), {st.photographed:,} "
                    f"photographed, {st.churners:,} churners, in {st.seconds:.1f} s"
                    + (f" -> {out}" if out else "") + (f"; labels -> {labels_out}" if labels_out else ""))


def _tee(lines: Iterator[bytes], fh: BinaryIO) -> Iterator[bytes]:
    """Yield `lines`, writing each to `fh` on the way."""
    for line in lines:
        fh.write(line)
        yield line


@click.command()
@click.argument("history", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="model file to write")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path),
              help="labels file (JSON lines: msisdn, churn_date); default: the history's own churn events")
@click.option("--horizon-days", type=click.IntRange(1, 366), help="churn horizon (default: the rule set's risk.horizon_days)")
@click.option("--rules", "rule_name", default=None, help="rule set (default: CHURNLIGHT_RULES)")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--step-days", type=click.IntRange(1, 30), default=3, show_default=True,
              help="examples every this many day closes")
def train(history: Path, out: Path, labels_path: Path | None, horizon_days: int | None, rule_name: str | None,
          seed: int, step_days: int) -> None:
    """Learn a churn risk model from an event HISTORY and write a model file a rule set can name."""
    from rules.ruleset import load_rule_set
    from streams.tools.train import LabelsError, figures_line, train as run_train

    settings = settings_or_exit()
    setup_logging("warn")
    try:
        rules = load_rule_set(rule_name or settings.rules)
        trained = run_train(history, rules, settings.zone, horizon_days=horizon_days, labels_path=labels_path,
                            seed=seed, step_days=step_days)
    except (RuleSetError, LabelsError, ValueError) as exc:
        fail("train", exc, 2)
    out.write_bytes(trained.model_bytes)
    screen = Console()
    fig = trained.figures
    screen.print(figures_line(f"training days {fig['training']['days']} (in-sample)", fig["training"]))
    screen.print(figures_line(f"validation days {fig['validation']['days']}", fig["validation"]))
    screen.print(f"model -> {out}")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def replay(file: Path) -> None:
    """Produce a JSON-lines event history FILE into the input topics."""
    settings = settings_or_exit()
    setup_logging("warn", settings.log_format)
    from streams.tools.replay import iter_file, replay as run_replay
    from streams.topics import ensure_topics

    total = sum(1 for _ in iter_file(file))
    with connected(settings, redis=False) as resolved:
        try:
            ensure_topics(resolved)
        except StartupError as exc:
            fail("replay", exc)
        with _progress() as progress:
            task = progress.add_task(f"replaying {file.name}", total=total)
            report = run_replay(resolved, iter_file(file), progress=lambda n: progress.update(task, completed=n))
    table = Table(title=f"replayed {file}")
    table.add_column("topic")
    table.add_column("messages", justify="right")
    for topic, count in sorted(report.per_topic.items()):
        table.add_row(resolved.topic(topic), str(count))
    Console().print(table)
    for number, why in report.unreadable[:20]:
        console.print(f"[yellow]line {number} not sent: {why}[/yellow]")
    if len(report.unreadable) > 20:
        console.print(f"[yellow]... and {len(report.unreadable) - 20} more unreadable lines[/yellow]")
    for error, count in report.failed.items():
        console.print(f"[red]{count} message(s) not delivered: {error}[/red]")
    if not report.ok:
        raise SystemExit(1)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="labels file (JSON lines: msisdn, churn_date; README: Labels); default: the history's own churn")
@click.option("--rules", "rule_sets", multiple=True, default=["cmcc-2010"], show_default=True,
              help="rule-set name or file; repeat to compare side by side")
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="risk model file (churnlight train) to judge on each rule set's base; repeatable")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="also write the figures here")
def backtest(file: Path, labels: Path | None, rule_sets: tuple[str, ...], models: tuple[Path, ...],
             json_out: Path | None) -> None:
    """Run rule sets offline over a history FILE and report how early and how well they lit churners."""
    from rules.risk import RiskModelError, load_model
    from streams.tools.backtest import run_many
    from streams.tools.train import LabelsError, load_labels

    settings = settings_or_exit()
    setup_logging("warn", settings.log_format)
    try:
        # The inputs first: a bad one is one line, before any progress is drawn.
        if labels is not None:
            load_labels(labels)
        for model in models:
            load_model(model)
        with _progress() as progress:
            # The bar's total is the file's lines (a first quick pass: 150k lines in about 0.1 s).
            from streams.tools.replay import iter_file

            total = sum(1 for _ in iter_file(file))
            bars = {name: progress.add_task(f"backtest {name}", total=total) for name in rule_sets}
            scores = run_many(file, list(rule_sets), settings, labels,
                              progress=lambda name, n: progress.update(bars[name], completed=n), models=list(models))
    except (RuleSetError, LabelsError, RiskModelError) as exc:
        fail("backtest", exc, 2)
    Console().print(backtest_table(file.name, scores))
    unknown = scores[0].unknown_topics if scores else {}
    if unknown:
        console.print("[yellow]records on unknown topics, not read: "
                      + ", ".join(f"{t} {n:,}" for t, n in sorted(unknown.items())) + "[/yellow]", soft_wrap=True)
    if json_out:
        import orjson

        json_out.write_bytes(orjson.dumps([{
            "rule_set": s.name, "engine": s.engine, "watched": s.watched, "churners": s.churners,
            "churn_rate": s.churn_rate, "alarms": s.alarms, "alarm_share": s.alarm_share, "lit": s.lit,
            "recall": s.recall, "precision": s.precision, "lift": s.lift, "lead_days": s.lead_days,
            "light_changes": s.changes, "final_lights": dict(s.final_lights),
            "tasks": [{"channel": c, "kind": k, "status": st, "count": n} for (c, k, st), n in sorted(s.tasks.items())],
            "callcentre_per_day": s.callcentre_per_day, "callcentre_per_day_median": s.callcentre_median,
            "callcentre_per_day_max": s.callcentre_max, "events": dict(s.events),
            "unknown_topics": dict(s.unknown_topics), "models": s.models} for s in scores],
            option=orjson.OPT_INDENT_2))
        console.print(f"figures written to {json_out}")


def backtest_table(title: str, scores: list[Any]) -> Table:
    """The backtest's side-by-side table: one column per rule set, model rows under each."""
    table = Table(title=f"backtest of {title}")
    table.add_column("")
    for s in scores:
        table.add_column(s.name, justify="right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    rows: list[tuple[str, list[str]]] = [
        ("events applied / dup / late", [f"{s.events['applied']} / {s.events['duplicate']} / {s.events['late_dropped']}" for s in scores]),
        ("records on unknown topics", [str(sum(s.unknown_topics.values())) for s in scores]),
        ("light changes", [str(s.changes) for s in scores]),
        ("lights at the end (g/y/r/b)", ["/".join(str(s.final_lights.get(k, 0)) for k in ("green", "yellow", "red", "black")) for s in scores]),
        ("watched base", [str(s.watched) for s in scores]),
        ("churners in it (rate)", [f"{s.churners} ({pct(s.churn_rate)})" for s in scores]),
        ("alarms: lit yellow/red (share)", [f"{s.alarms} ({pct(s.alarm_share)})" for s in scores]),
        ("precision of yellow/red", [pct(s.precision) for s in scores]),
        ("lift over the churn rate", [num(s.lift) for s in scores]),
        ("lit before leaving (recall)", [f"{s.lit} ({pct(s.recall)})" for s in scores]),
        ("median lead time, days", ["-" if s.median_lead is None else f"{s.median_lead:.0f}" for s in scores]),
        ("tasks issued", [str(sum(n for (_, _, st), n in s.tasks.items() if st == "issued")) for s in scores]),
        ("tasks suppressed", [str(sum(n for (_, _, st), n in s.tasks.items() if st != "issued")) for s in scores]),
        ("call-centre tasks a day, median / max", [f"{s.callcentre_median:g} / {s.callcentre_max}" for s in scores]),
    ]
    names = sorted({m for s in scores for m in s.models})
    if names:
        rows.append(("day closes judged (lights' load)",
                     [f"{next(iter(s.models.values()), {}).get('examples', 0):,} "
                      f"({pct(next(iter(s.models.values()), {}).get('lights', {}).get('load'))})" for s in scores]))
        rows.append(("lights: lift / recall per day close",
                     [f"{num(next(iter(s.models.values()), {}).get('lights', {}).get('lift'))} / "
                      f"{pct(next(iter(s.models.values()), {}).get('lights', {}).get('recall'))}" for s in scores]))
    for name in names:
        def fig(s: Any, *keys: str) -> Any:
            value: Any = s.models.get(name, {})
            for k in keys:
                value = value.get(k) if isinstance(value, dict) else None
            return value

        tag = f"{name}{' (in-sample)' if any(fig(s, 'in_sample') for s in scores) else ''}"
        rows.append((f"{tag}: AUC", [num(fig(s, "auc")) for s in scores]))
        rows.append((f"{tag}: top-decile lift", [num(fig(s, "top_decile_lift")) for s in scores]))
        rows.append((f"{tag}: at the lights' load, lift / recall",
                     [f"{num(fig(s, 'at_lights_load', 'lift'))} / {pct(fig(s, 'at_lights_load', 'recall'))}"
                      for s in scores]))
    for label, values in rows:
        table.add_row(label, *values)
    return table


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )


TOOLS = (demo, simulate, train, replay, backtest, bench)
