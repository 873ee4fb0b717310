"""Bench step 9: what the risk score adds to the worker's time (issue 16: under 5 %).

The bulk workload spans 29.5 days, so no day close of it is judged and nothing is scored. This
step simulates an operator over a history longer than the 30-day window (the simulator: a photo
after 30 days, churners, top-ups, complaints), trains a model on another seed as the demo does
(or takes `--scoring-model`), and runs one worker over the same history twice, on topics of
their own: with the plain rule set, then with a copy of it naming the model. Both runs start
from an empty Redis of the step's own (task claims of the first would hold back the second's).
The added share is that of the worker's time per event: rate of the plain run / rate of the
scored run - 1, over the whole history (the days before the window is whole are not scored).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
from pydantic import SecretStr

from streams.settings import Settings
from streams.tools.bench.kafka import BenchError
from streams.tools.bench.measure import measure_throughput
from streams.tools.bench.run import STEPS, Run
from streams.tools.harness import START_TIMEOUT_S
from streams.tools.topic_reader import iter_topic

SUBSCRIBERS: Final = 800  # at activity 1.0 and 60 days: about 560k events a run
DAYS: Final = 60  # half of it after the 30-day window is whole: every day close of that half scores
WINDOW_DAYS: Final = 30


@dataclass(frozen=True)
class ScoringSize:
    """The step's history and model: `model` None trains one (streams.tools.model)."""

    subscribers: int
    days: int
    model: Path | None = None


def step_scoring(run: Run, size: ScoringSize) -> dict[str, Any]:
    """Time one worker over one history with the plain rule set and with the model; return the figures."""
    from streams.embedded import EmbeddedStack
    from streams.tools.model import scored_rule_set, train_simulated
    from streams.tools.sim import SimConfig, write_history

    out = run.work_dir / "scoring"
    out.mkdir(parents=True, exist_ok=True)
    zone = run.base.zone
    # Far enough from the wall clock that no partition counts as live.
    start = datetime.now(zone).date() - timedelta(days=size.days + 15)
    cfg = SimConfig(subscribers=size.subscribers, days=size.days, start=start, seed=run.workload.seed, tz=run.base.tz,
                    activity=1.0, bad_share=0.0, dup_share=0.0)
    task = run.step(f"9/{STEPS} scoring: simulate {size.days} days of {size.subscribers:,} subscribers", None)
    history = out / "history.jsonl"
    stats = write_history(cfg, history)
    doc: dict[str, Any] = {
        "history": {"subscribers": size.subscribers, "days": size.days, "window_days": WINDOW_DAYS,
                    "events": stats.lines, "photographed": stats.photographed, "churners": stats.churners,
                    "first_day": start.isoformat()},
    }
    if size.model is None:
        run.progress.update(task, description=f"9/{STEPS} scoring: train a model on another seed")
        try:
            trained = train_simulated(cfg, out, run.base.rules, zone)
        except ValueError as exc:
            raise BenchError(f"scoring: no model could be trained: {exc}") from None
        model = trained.path
        doc["model"] = {"path": None, "trained_s": trained.seconds, "validation": trained.validation}
    else:
        model = size.model
        doc["model"] = {"path": str(model)}
    scored = scored_rule_set(run.base.rules, model, out)
    run.progress.update(task, total=1, completed=1)
    with EmbeddedStack(out / "redis", kafka=False) as own:
        assert own.redis is not None
        for name, rules in (("plain", run.base.rules), ("scored", str(scored))):
            doc[name] = _timed_run(run, name, rules, history, own.redis)
    doc["plain"]["rule_set"] = run.base.rules
    plain, with_model = doc["plain"].get("events_per_s"), doc["scored"].get("events_per_s")
    doc["added_share"] = (plain / with_model - 1) if plain and with_model else None
    return doc


def _timed_run(run: Run, name: str, rules: str, history: Path, redis_url: str) -> dict[str, Any]:
    """Produce `history` into topics of their own, run a worker with `rules` over it, and time it."""
    import redis as redis_lib

    from streams.tools.replay import iter_file, replay
    from streams.topics import LIGHTS, ensure_topics

    settings = run.tenant(f"-{name}").model_copy(update={"rules": rules, "redis": SecretStr(redis_url)})
    ensure_topics(settings)
    task = run.step(f"9/{STEPS} scoring: produce the history ({name})", None)
    report = replay(settings, iter_file(history), progress=lambda n: run.progress.update(task, completed=n))
    if not report.ok:
        raise BenchError(f"scoring: {len(report.unreadable)} history lines unreadable, "
                         f"{sum(report.failed.values())} not delivered")
    run.progress.update(task, total=report.sent, completed=report.sent)
    redis_lib.Redis.from_url(redis_url).flushall()  # the step's own Redis
    label = "the plain rule set" if name == "plain" else "the rule set with the model"
    task = run.step(f"9/{STEPS} scoring: one worker, {label}", report.sent)
    w = run.worker(settings, f"scoring-{name}").launch()
    result = measure_throughput([w], report.sent, lambda n: run.progress.update(task, completed=n),
                                max_s=START_TIMEOUT_S + max(300.0, report.sent / 200))
    rss = w.peak_rss()
    w.stop()
    return {**result.as_json(), "peak_rss_bytes": rss, **_scored_outputs(settings, LIGHTS)}


def _scored_outputs(settings: Settings, lights: str) -> dict[str, int]:
    """Count the run's light changes and those carrying a risk: the scored run's proof that it scored."""
    changes = with_risk = 0
    for msg in iter_topic(settings, settings.topic(lights)):
        changes += 1
        with_risk += "risk" in orjson.loads(msg.value())
    return {"light_changes": changes, "light_changes_with_risk": with_risk}
