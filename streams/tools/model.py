"""A risk model for a simulated run, as the demo and the bench use one: trained on another seed of
the same simulator, and a copy of the rule set that names it."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from streams.tools.sim import SimConfig, write_history

# The model learns on a simulated operator of its own (the run's seed + 1): 125 days, the
# shortest history `churnlight train` validates by time (30 days of window, 30 to learn from, 30
# to judge on, 30 of labels).
TRAIN_DAYS = 125


@dataclass(frozen=True)
class SimulatedModel:
    """A model file written by `train_simulated`, with what its training took and gave."""

    path: Path
    seconds: float
    validation: dict[str, Any]  # the model's own validation (its training seed's later days)


def training_config(run: SimConfig) -> SimConfig:
    """Return the simulated operator a model for `run` learns from."""
    # 2,000 subscribers: 500 gave a dozen churn examples to learn from, a model no better than chance.
    return replace(run, seed=run.seed + 1, days=TRAIN_DAYS, subscribers=max(2000, min(run.subscribers, 5000)),
                   activity=0.05)


def train_simulated(run: SimConfig, out_dir: Path, rules: str, zone: ZoneInfo) -> SimulatedModel:
    """Simulate `training_config(run)`, train on it with the rule set `rules`, write `out_dir/model.json`.

    Raises ValueError when the history gives nothing to learn from (streams.tools.train.train)."""
    from rules.ruleset import load_rule_set
    from streams.tools.train import train

    cfg = training_config(run)
    started = time.monotonic()
    history = out_dir / "train-history.jsonl"
    write_history(cfg, history, out_dir / "train-labels.jsonl")
    trained = train(history, load_rule_set(rules), zone, seed=cfg.seed)
    model = out_dir / "model.json"
    model.write_bytes(trained.model_bytes)
    return SimulatedModel(model, time.monotonic() - started, trained.figures["validation"])


def scored_rule_set(rules: str, model: Path, out_dir: Path) -> Path:
    """Write `out_dir/rules-scored.yaml`: `rules` naming `model` (risk scores on tasks, lights, /subscribers)."""
    import yaml

    from rules.ruleset import resolve

    doc = yaml.safe_load(resolve(rules)[0].read_text(encoding="utf-8"))
    named = model.name if model.parent.resolve() == out_dir.resolve() else str(model.resolve())
    doc["risk"] = {**(doc.get("risk") or {}), "model": named}
    path = out_dir / "rules-scored.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
