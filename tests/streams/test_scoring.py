"""The risk score in the worker (issue 16): a rule set naming a model scores the watched base at each
day close; tasks, light changes and /subscribers carry the risk and its reasons; a green subscriber
crossing the threshold gets a `risk` task; a model file that cannot be used stops the start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest
import redis as redis_lib
import yaml
from confluent_kafka.admin import AdminClient

from rules import features
from rules.risk import load_model
from rules.ruleset import RULES_DIR, load_rule_set
from rules.state import SubscriberState
from rules.task_message import RISK_SCALE
from streams.history import fold
from streams.scoring import to_bp
from streams.tools.replay import iter_file, replay
from streams.settings import Settings
from streams.tools.sim import SimConfig
from streams.tools.sim.config import UNFLATTERING
from streams.tools.sim.run import write_history
from streams.tools.train import train
from tests.conftest import WorkerProc, consume_all, wait_for

RULES = load_rule_set("cmcc-2010")
# The model learns on one seed; the worker runs another (a base of its own, 50 days: 20 of them scored).
TRAIN = SimConfig(subscribers=500, days=125, seed=3, activity=0.1, bad_share=0.0, dup_share=0.0, **UNFLATTERING)
RUN = SimConfig(subscribers=150, days=50, seed=11, activity=0.1, bad_share=0.0, dup_share=0.0, **UNFLATTERING)
TASK_TOPICS = ("retention.tasks.callcentre", "retention.tasks.sms")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scoring")
    write_history(TRAIN, d / "train.jsonl", d / "train-labels.jsonl")
    (d / "model.json").write_bytes(train(d / "train.jsonl", RULES, Settings().zone, seed=5).model_bytes)
    write_history(RUN, d / "run.jsonl", d / "run-labels.jsonl")
    return d


def offline_risks(model_dir: Path) -> dict[tuple[str, date], tuple[str | None, float]]:
    """The light and risk of every watched, not churned subscriber at every judged close of the run's
    history, folded offline (streams.history) and scored with the same model."""
    model = load_model(model_dir / "model.json")
    out: dict[tuple[str, date], tuple[str | None, float]] = {}

    def on_close(open_day: date, states: dict[str, SubscriberState], first_day: date) -> None:
        if open_day - timedelta(days=RULES.window_days) < first_day:
            return
        chosen = [(m, s) for m, s in states.items() if s.photo is not None and s.churned is None]
        risk = model.risk(features.matrix([s for _, s in chosen], open_day, RULES, Settings().zone))
        for (m, s), r in zip(chosen, risk.tolist()):
            out[(m, open_day)] = (s.light, r)

    fold(model_dir / "run.jsonl", RULES, Settings().zone, on_close=on_close, decide_tasks=False)
    return out


def rule_file(where: Path, threshold: float | None, model: str = "model.json") -> Path:
    doc = yaml.safe_load((RULES_DIR / "cmcc-2010.yaml").read_text(encoding="utf-8"))
    doc["risk"] = {"model": model, "horizon_days": 60, "task_threshold": threshold}
    path = where / "scored.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def validate(topic: str, doc: dict[str, Any]) -> None:
    schema = json.loads(files("streams").joinpath("schemas", f"{topic}.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)


def assert_reasons(doc: dict[str, Any]) -> None:
    assert 0 <= doc["risk"] <= 1 and round(doc["risk"], 4) == doc["risk"]
    reasons = doc["risk_reasons"]
    assert len(reasons) == 3 and all(r["feature"] in features.INDEX for r in reasons)
    contributions = [r["contribution"] for r in reasons]
    assert contributions == sorted(contributions, reverse=True)


def test_a_scored_worker_shows_risk_on_tasks_lights_and_subscribers_and_calls_the_green_leavers(
        model_dir: Path, worker: WorkerProc, settings: Settings, redis_client: redis_lib.Redis) -> None:
    offline = offline_risks(model_dir)
    # The simulator photographs its base with profiles written at a local midnight: the worker, as
    # the fold, applies them where their time puts them, and scores the base from that close on.
    scored_days = sorted({day for _, day in offline})
    assert len(scored_days) >= 15
    # A threshold that some green subscribers cross at the first scored close (never scored before:
    # a first judgement) and some later, from below.
    first = [r for (m, day), (light, r) in offline.items() if day == scored_days[0] and light == "green"]
    threshold = round(float(np.quantile(first, 0.9)), 4)
    # The worker keeps a risk in basis points and compares it so with the threshold: a risk of 0.12346
    # is shown as 0.1235 and crosses 0.1235. The fold's risks are judged the same way.
    limit = round(threshold * RISK_SCALE)
    crossings = {(m, day) for (m, day), (light, r) in offline.items() if light == "green" and to_bp(r) >= limit and (
        day == scored_days[0] or day > scored_days[0]
        and to_bp(offline.get((m, day - timedelta(days=1)), (None, 1.0))[1]) < limit)}
    assert any(day > scored_days[0] for _, day in crossings), "no crossing from below in the run"

    # The rule file names the model relative to its own folder; the worker runs elsewhere.
    rules_path = rule_file(model_dir, threshold)
    worker.settings = settings = settings.model_copy(update={"rules": str(rules_path)})
    # Two thirds of the history, a restart, the rest: the risk of the last close before the restart
    # comes back from the state (a lost one would make every green subscriber above the threshold
    # cross again).
    lines = list(iter_file(model_dir / "run.jsonl"))
    cut = len(lines) * 2 // 3
    first_part = replay(settings, lines[:cut])
    assert first_part.ok
    worker.start()
    wait_for(lambda: worker.metric("churnlight_events_total") >= first_part.sent, timeout_s=180,
             what="the first part read")
    worker.stop()
    rest = replay(settings, lines[cut:])
    assert rest.ok
    worker.start()
    wait_for(lambda: worker.metric("churnlight_events_total") >= rest.sent, timeout_s=180, what="the rest read")

    tasks = [orjson.loads(m.value()) for topic in TASK_TOPICS for m in consume_all(settings, topic)]
    lights = [orjson.loads(m.value()) for m in consume_all(settings, "churn.lights")]
    scored_from = datetime.combine(scored_days[0], datetime.min.time()).isoformat()
    for doc in tasks:
        validate(f"retention.tasks.{doc['channel']}", doc)
    for doc in lights:
        validate("churn.lights", doc)

    # Every task of a scored, not churned subscriber carries its risk and top 3 reasons.
    scored_tasks = [d for d in tasks if "risk" in d]
    assert len(scored_tasks) >= 10
    for doc in scored_tasks:
        assert_reasons(doc)
        assert doc["created_at"][:19] >= scored_from  # nothing is scored before the window is whole
    assert all("risk" not in d for d in tasks if d["created_at"][:19] < scored_from)
    assert all("risk" not in d for d in tasks if d["kind"] == "black_light")

    # The risk tasks: green subscribers whose risk crossed the threshold at a close, as the offline
    # fold of the same history and model says, with the score that crossed it.
    risk_tasks = [d for d in tasks if d["kind"] == "risk"]
    assert risk_tasks
    for doc in risk_tasks:
        day = date.fromisoformat(doc["created_at"][:10])
        assert doc["created_at"].endswith("T00:00:00+08:00") and (doc["channel"], doc["priority"]) == (
            "callcentre", "normal")
        assert doc["light"] == "green" and doc["risk"] >= threshold
        assert doc["reasons"] == [{"code": "risk_above", "value": doc["risk"], "threshold": threshold}]
        assert (doc["msisdn"], day) in crossings
        assert doc["risk"] == pytest.approx(offline[(doc["msisdn"], day)][1], abs=1e-4)
    feed = [{k.decode(): v.decode() for k, v in f.items()} for _, f in redis_client.xrange("churnlight:feed")]
    decided = {(f["msisdn"], json.loads(f["task"])["created_at"][:10]) for f in feed if f["kind"] == "risk"}
    # Issued or held by the cooldown, every crossing is decided once.
    assert decided == {(m, day.isoformat()) for m, day in crossings}
    assert len(feed) == len({f["task_id"] for f in feed})

    # Light changes of scored subscribers carry the score too; before the first scored close none does.
    scored_lights = [d for d in lights if "risk" in d]
    assert scored_lights and all(d["light"] != "black" for d in scored_lights)
    for doc in scored_lights:
        assert_reasons(doc)
    assert all("risk" not in d for d in lights if d["at"][:19] < scored_from)

    # /subscribers: the risk with its reasons, for a watched subscriber.
    someone = risk_tasks[0]["msisdn"]
    status, found = worker.get(f"/subscribers/{someone}")
    assert status == 200, found
    assert_reasons(found)


def test_no_model_named_means_no_score_anywhere(model_dir: Path, tmp_path: Path) -> None:
    # The same history through the worker's pipeline offline (`backtest`): no risk field, no risk task.
    from streams.tools.backtest import run

    result = run(model_dir / "run.jsonl", RULES, Settings(data_dir=tmp_path))
    assert result.decisions and all(d.task.risk is None for d in result.decisions)
    assert all(d.task.kind != "risk" for d in result.decisions)


@pytest.mark.parametrize("damage, says", [
    (lambda raw: raw[: len(raw) // 2], "not JSON"),
    (lambda raw: orjson.dumps({**orjson.loads(raw), "version": 99}), "version 99"),
    (None, "no such model file"),
])
def test_a_model_that_cannot_be_used_stops_the_worker_in_one_line_naming_the_file(
        model_dir: Path, settings: Settings, tmp_path: Path, damage: Any, says: str) -> None:
    bad = tmp_path / "model.json"
    if damage is not None:
        bad.write_bytes(damage((model_dir / "model.json").read_bytes()))
    rules_path = rule_file(tmp_path, 0.5)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHURNLIGHT_")},
           **settings.worker_env({}), "CHURNLIGHT_RULES": str(rules_path)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"churnlight worker: {rules_path}: risk.model: {bad}: "), lines
    assert says in lines[0]
    assert time.monotonic() - started < 30
    # Nothing was started or created.
    assert settings.kafka is not None
    topics = AdminClient({"bootstrap.servers": settings.kafka}).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(settings.topic_prefix)]
