"""`churnlight train`: deterministic for a seed, validated by time, a model file that round-trips."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import orjson
import pytest

from rules import features
from rules.risk import RiskModelError, call_list, load_model
from rules.ruleset import load_rule_set
from streams.settings import Settings
from streams.tools.sim import SimConfig
from streams.tools.sim.config import UNFLATTERING
from streams.tools.sim.run import write_history
from streams.tools.train import LabelsError, churn_days_from, collect, judge_model, load_labels, train
from tests.conftest import env_of

RULES = load_rule_set("cmcc-2010")
CFG = SimConfig(subscribers=500, days=125, seed=3, activity=0.1, bad_share=0.0, dup_share=0.0, **UNFLATTERING)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("train")
    write_history(CFG, d / "h.jsonl", d / "labels.jsonl")
    return d / "h.jsonl", d / "labels.jsonl"


@pytest.fixture(scope="module")
def trained(history: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "model.json"
    out.write_bytes(train(history[0], RULES, Settings().zone, seed=5).model_bytes)
    return out


def test_training_is_deterministic_for_a_seed_and_prints_its_figures(history: tuple[Path, Path], trained: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "again.json"
    settings = Settings(data_dir=tmp_path)
    done = subprocess.run([sys.executable, "-m", "streams.cli", "train", str(history[0]), "--out", str(out),
                           "--seed", "5", "--rules", "cmcc-2010"], env=env_of(settings), capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert out.read_bytes() == trained.read_bytes()
    text = " ".join(done.stdout.decode().split())
    assert "validation days" in text and "AUC" in text and "top-decile lift" in text and "recall" in text


def test_the_model_is_judged_only_on_days_after_what_it_learned(trained: Path, history: tuple[Path, Path]) -> None:
    model = load_model(trained)
    meta = model.meta
    figures = meta["figures"]
    known_until = date.fromisoformat(meta["trained"]["labels_known_until"])
    assert figures["training"]["in_sample"] and not figures["validation"]["in_sample"]
    assert date.fromisoformat(figures["training"]["days"][1]) < known_until
    assert date.fromisoformat(figures["validation"]["days"][0]) > known_until
    assert figures["validation"]["positives"] > 0 and figures["validation"]["auc"] is not None

    ex, run = collect(history[0], RULES, Settings().zone)
    churn = churn_days_from(run)
    assert run.last_day is not None
    end = run.last_day.toordinal() + 1
    # On its own history, the training days are left out of the judgement ...
    judged = judge_model(model, history[0], ex, churn, end)
    assert not judged["in_sample"] and date.fromisoformat(judged["days"][0]) > known_until
    # ... and with only those days, the figures are in-sample, not validation.
    own = ex.take(ex.day <= known_until.toordinal())
    assert judge_model(model, history[0], own, churn, end)["in_sample"]

    # The call list of the last day: ranked by expected saved revenue, masked numbers, three reasons.
    calls = call_list(run.states, model, run.last_day, RULES, Settings().zone, limit=10)
    assert len(calls) == 10
    assert [c.expected_saved_cny for c in calls] == sorted((c.expected_saved_cny for c in calls), reverse=True)
    for c in calls:
        assert "****" in c.masked and len(c.reasons) == 3 and 0 <= c.risk <= 1
        assert c.expected_saved_cny == pytest.approx(c.risk * c.arpu_cny, rel=1e-3, abs=0.01)


def test_the_model_file_round_trips_and_scores_with_reasons(trained: Path, tmp_path: Path) -> None:
    model = load_model(trained)
    assert model.features == features.NAMES and model.horizon_days == RULES.risk_horizon_days
    copy = tmp_path / "copy.json"
    copy.write_bytes(trained.read_bytes())
    rng = np.random.default_rng(1)
    x = np.abs(rng.normal(100, 60, (50, len(features.NAMES))))
    x[::7, 2] = np.nan  # no photo: a missing ratio
    risk, reasons = model.score(x)
    again, reasons_again = load_model(copy).score(x)
    assert np.array_equal(risk, again) and reasons == reasons_again
    assert ((risk >= 0) & (risk <= 1)).all() and len(reasons) == 50
    for row in reasons:
        assert len(row) == 3 and all(name in features.INDEX for name, _, _ in row)
        contributions = [c for _, _, c in row]
        assert contributions == sorted(contributions, reverse=True)
    assert model.score(np.empty((0, len(features.NAMES))))[0].shape == (0,)


@pytest.mark.parametrize("damage, says", [
    (lambda doc, raw: raw[: len(raw) // 2], "not JSON"),
    (lambda doc, raw: orjson.dumps({**doc, "format": "something-else"}), "not a churnlight model file"),
    (lambda doc, raw: orjson.dumps({**doc, "version": 99}), "version 99"),
    (lambda doc, raw: orjson.dumps({**doc, "features": [{"name": "shoe_size"}, *doc["features"][1:]]}), "shoe_size"),
    (lambda doc, raw: orjson.dumps({**doc, "features": doc["features"][:-1]}), "features"),
    (lambda doc, raw: orjson.dumps({**doc, "lightgbm": "tree\nnonsense"}), "lightgbm"),
    (lambda doc, raw: orjson.dumps({**doc, "horizon_days": "sixty"}), "horizon_days"),
])
def test_a_corrupt_or_mismatched_model_file_is_one_error_naming_the_file(trained: Path, tmp_path: Path, damage,  # type: ignore[no-untyped-def]
                                                                         says: str) -> None:
    raw = trained.read_bytes()
    bad = tmp_path / "bad-model.json"
    bad.write_bytes(damage(orjson.loads(raw), raw))
    with pytest.raises(RiskModelError) as info:
        load_model(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: ") and says in message and "\n" not in message
    with pytest.raises(RiskModelError, match="no such model file"):
        load_model(tmp_path / "missing.json")


@pytest.mark.parametrize("line, field", [
    (b'{"churn_date": null}', "msisdn"),
    (b'{"msisdn": "13800000001"}', "churn_date"),
    (b'{"msisdn": "13800000001", "churn_date": "2026-13-01"}', "churn_date"),
    (b'{"msisdn": "13800000001", "churn_date": null, "photographed": "yes"}', "photographed"),
    (b'[1]', "not a JSON object"),
])
def test_a_malformed_labels_file_is_one_line_naming_the_field(tmp_path: Path, line: bytes, field: str) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b'{"msisdn": "13800000002", "churn_date": "2026-08-01"}\n' + line + b"\n")
    with pytest.raises(LabelsError) as info:
        load_labels(path)
    assert str(info.value).startswith(f"{path}:2: ") and field in str(info.value)
    with pytest.raises(LabelsError, match="no such labels file"):
        load_labels(tmp_path / "missing.jsonl")


def test_the_backtest_judges_a_model_beside_the_lights(trained: Path, history: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    from streams.tools.backtest import run_many

    scores = run_many(history[0], ["cmcc-2010", "seed-004"], Settings(data_dir=tmp_path), history[1],
                      models=[trained])
    for s in scores:
        figures = s.models["model.json"]
        # Its own history: judged on the days after its training only, so not in-sample.
        assert not figures["in_sample"] and figures["examples"] > 0
        assert figures["top_decile_lift"] is not None and figures["at_lights_load"]["recall"] is not None
        assert s.engine == "fold" and s.watched > 0 and 0 < s.churners < s.watched
    # seed 004 has no minutes condition: fewer alarms on the same base.
    assert scores[1].alarms < scores[0].alarms
