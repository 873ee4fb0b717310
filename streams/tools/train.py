"""Learn a churn risk score from an event history (`churnlight train`), and judge one (`backtest`).

Examples: at each day close (every `step_days`-th), each watched subscriber not churned, once the
window is whole: its features (rules.features) and whether it churned (`deactivated` or
`ported_out`, or the labels file's `churn_date`) on the opening day or within `horizon_days`
after. Validation is by time: the model learns from the days before a split day, with labels
only as far as the split (what was known then), and is judged on the days after it; the first
days of the history, whose windows are not whole, give no examples. The learner is LightGBM
(gradient-boosted trees; per-feature contributions natively, a text model format).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import orjson

from rules import features, lights
from rules.ruleset import RuleSet
from rules.risk import RiskModel, dumps
from rules.state import SubscriberState
from streams.history import HistoryRun, fold
from streams.tools.replay import iter_file

ALARM_CODES: Final = (features.LIGHT_CODES["yellow"], features.LIGHT_CODES["red"])
# The shortest label window an example may have: one that ends before it says too little.
MIN_LABEL_DAYS: Final = 30
ROUNDS: Final = 200
F64 = npt.NDArray[np.float64]


class LabelsError(ValueError):
    """A labels file that cannot be used; the message names the file, the line and the field."""


@dataclass
class Examples:
    """Feature rows at day closes: one per watched, not churned subscriber and day."""

    day: npt.NDArray[np.int64]  # the opening local day's ordinal
    msisdn: list[str]
    x: F64
    alarm: npt.NDArray[np.bool_]  # yellow or red at that close

    def take(self, mask: npt.NDArray[np.bool_]) -> Examples:
        idx = np.nonzero(mask)[0]
        return Examples(self.day[idx], [self.msisdn[i] for i in idx.tolist()], self.x[idx], self.alarm[idx])

    def __len__(self) -> int:
        return len(self.day)


def collect(path: Path, rules: RuleSet, tz: ZoneInfo, *, step_days: int = 1,
            decide_tasks: bool = False) -> tuple[Examples, HistoryRun]:
    """Fold the history at `path` and collect the examples of every `step_days`-th judged day."""
    days: list[int] = []
    who: list[str] = []
    rows: list[F64] = []
    alarms: list[bool] = []

    def on_close(open_day: date, states: dict[str, SubscriberState], first_day: date) -> None:
        if not lights.judged(open_day, first_day, rules.window_days):
            return
        if (open_day - first_day).days % step_days:
            return
        chosen = [(m, s) for m, s in states.items() if s.photo is not None and s.churned is None]
        if not chosen:
            return
        rows.append(features.matrix([s for _, s in chosen], open_day, rules, tz))
        o = open_day.toordinal()
        for m, s in chosen:
            days.append(o)
            who.append(m)
            alarms.append(s.light in ("yellow", "red"))

    run = fold(path, rules, tz, on_close=on_close, decide_tasks=decide_tasks)
    x = np.vstack(rows) if rows else np.empty((0, len(features.FEATURES)))
    return Examples(np.asarray(days, dtype=np.int64), who, x, np.asarray(alarms, dtype=bool)), run


# --- labels ------------------------------------------------------------------------------------


def churn_days_from(run: HistoryRun) -> dict[str, list[int]]:
    """The history's own labels: the local days of each subscriber's `deactivated` / `ported_out`."""
    return {m: sorted(d.toordinal() for d in days) for m, days in run.churn_days.items()}


def load_labels(path: Path) -> dict[str, dict[str, Any]]:
    """Read a labels file (JSON lines: `msisdn` string, `churn_date` YYYY-MM-DD or null, optional
    `photographed` bool); raise LabelsError naming the file, line and field of the first problem."""
    out: dict[str, dict[str, Any]] = {}
    try:
        lines = list(iter_file(path))
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such labels file") from None
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    for n, line in enumerate(lines, start=1):
        where = f"{path}:{n}"
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise LabelsError(f"{where}: not a JSON object") from None
        if not isinstance(doc, dict):
            raise LabelsError(f"{where}: not a JSON object")
        msisdn = doc.get("msisdn")
        if not isinstance(msisdn, str) or not msisdn:
            raise LabelsError(f"{where}: msisdn: missing or not a string")
        if "churn_date" not in doc:
            raise LabelsError(f"{where}: churn_date: missing (a date YYYY-MM-DD, or null for a stayer)")
        churn = doc["churn_date"]
        if churn is not None:
            try:
                date.fromisoformat(churn)
            except (TypeError, ValueError):
                raise LabelsError(f"{where}: churn_date: {churn!r} is not a date YYYY-MM-DD") from None
        if "photographed" in doc and not isinstance(doc["photographed"], bool):
            raise LabelsError(f"{where}: photographed: must be true or false")
        out[msisdn] = doc
    return out


def churn_days_of(labels: Mapping[str, Mapping[str, Any]]) -> dict[str, list[int]]:
    """The churn days of a labels file (`churn_date`)."""
    return {m: [date.fromisoformat(d["churn_date"]).toordinal()] for m, d in labels.items() if d.get("churn_date")}


def label(examples: Examples, churn: Mapping[str, list[int]], horizon_days: int, known_until: int) -> npt.NDArray[np.int8]:
    """Return 1 where the subscriber churned on the example's day or within `horizon_days` after,
    counting only churn before day ordinal `known_until` (what was known then)."""
    y = np.zeros(len(examples), dtype=np.int8)
    for i, (o, m) in enumerate(zip(examples.day.tolist(), examples.msisdn)):
        days = churn.get(m)
        if days:
            end = min(o + horizon_days, known_until)
            y[i] = any(o <= c < end for c in days)
    return y


# --- figures -----------------------------------------------------------------------------------


def auc(y: npt.NDArray[np.int8], score: F64) -> float | None:
    """The area under the ROC curve (ties counted half); None without both classes."""
    from scipy.stats import rankdata

    pos = int(y.sum())
    neg = len(y) - pos
    if not pos or not neg:
        return None
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _top(score: F64, k: int) -> npt.NDArray[np.intp]:
    # Stable on ties: the same examples in the same order on every run.
    return np.argsort(-score, kind="stable")[:k]


def judge(y: npt.NDArray[np.int8], score: F64 | None, alarm: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """Figures of a score and of the lights on the same examples: AUC, top-decile lift, and lift and
    recall of the lights' alarms (yellow or red) and of the score's top at the same load."""
    n, pos = len(y), int(y.sum())
    rate = pos / n if n else 0.0
    lit = int(alarm.sum())
    out: dict[str, Any] = {
        "examples": n, "positives": pos, "churn_rate": _r(rate),
        "lights": {"load": _r(lit / n) if n else None,
                   "lift": _r(float(y[alarm].mean()) / rate) if lit and rate else None,
                   "recall": _r(float(y[alarm].sum()) / pos) if pos else None},
    }
    if score is None or not n:
        return out
    decile = max(1, math.ceil(n / 10))
    top = _top(score, decile)
    out["auc"] = _r(auc(y, score))
    out["top_decile_lift"] = _r(float(y[top].mean()) / rate) if rate else None
    at_load = _top(score, lit)
    out["at_lights_load"] = {"lift": _r(float(y[at_load].mean()) / rate) if lit and rate else None,
                             "recall": _r(float(y[at_load].sum()) / pos) if pos and lit else None}
    return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


# --- training ----------------------------------------------------------------------------------


def fingerprint(path: Path) -> str:
    """A hash of the history's bytes: a model judged on its own history is known as such."""
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def params(seed: int) -> dict[str, Any]:
    """LightGBM's settings: deterministic for a seed (one row-wise histogram, fixed threads)."""
    return {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 100,
            "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
            "seed": seed, "deterministic": True, "force_row_wise": True, "num_threads": 2, "verbose": -1}


@dataclass
class Trained:
    model_bytes: bytes
    figures: dict[str, Any]  # training (in-sample) and validation
    meta: dict[str, Any]


def train(path: Path, rules: RuleSet, tz: ZoneInfo, *, horizon_days: int | None = None,
          labels_path: Path | None = None, seed: int = 7, step_days: int = 3,
          examples: tuple[Examples, HistoryRun] | None = None) -> Trained:
    """Learn a risk model from the history at `path`: earlier days to learn, later days to judge."""
    import lightgbm

    horizon = horizon_days or rules.risk_horizon_days
    churn = churn_days_of(load_labels(labels_path)) if labels_path is not None else None
    ex, run = examples or collect(path, rules, tz, step_days=step_days)
    if churn is None:
        churn = churn_days_from(run)
    if not len(ex) or run.last_day is None:
        raise ValueError(f"{path}: no watched subscriber with a whole window: nothing to learn from")
    first, end = int(ex.day.min()), run.last_day.toordinal() + 1  # churn is known before `end`
    last_usable = end - MIN_LABEL_DAYS
    if last_usable - first < 2 * MIN_LABEL_DAYS:
        raise ValueError(f"{path}: {end - first} judged days; training needs at least {3 * MIN_LABEL_DAYS}: "
                         f"{MIN_LABEL_DAYS} to learn from, {MIN_LABEL_DAYS} to judge on, {MIN_LABEL_DAYS} of labels")
    split = first + (last_usable - first + MIN_LABEL_DAYS) // 2
    learn = ex.take(ex.day <= split - MIN_LABEL_DAYS)
    check = ex.take((ex.day >= split) & (ex.day <= last_usable))
    y_learn = label(learn, churn, horizon, split)
    y_check = label(check, churn, horizon, end)
    if y_learn.sum() == 0 or y_learn.sum() == len(y_learn):
        raise ValueError(f"{path}: the training days hold {int(y_learn.sum())} churn examples of {len(y_learn)}: "
                         "nothing to learn")
    booster = lightgbm.train(params(seed), lightgbm.Dataset(learn.x, y_learn.astype(np.float64),
                                                            feature_name=list(features.NAMES), free_raw_data=False),
                             num_boost_round=ROUNDS)
    figures = {
        "training": {"in_sample": True, **_days(learn), **judge(y_learn, booster.predict(learn.x), learn.alarm)},
        "validation": {"in_sample": False, **_days(check),
                       **judge(y_check, booster.predict(check.x) if len(check) else None, check.alarm)},
    }
    meta = {
        "rule_set": rules.name, "window_days": rules.window_days, "seed": seed, "step_days": step_days,
        "trained": {"history": path.name, "fingerprint": fingerprint(path),
                    "labels": "file" if labels_path is not None else "history",
                    "first_day": date.fromordinal(first).isoformat(), "last_day": run.last_day.isoformat(),
                    "train_days": [date.fromordinal(int(learn.day.min())).isoformat(),
                                   date.fromordinal(int(learn.day.max())).isoformat()],
                    "labels_known_until": date.fromordinal(split - 1).isoformat()},
        "figures": figures,
    }
    return Trained(dumps(booster, list(features.NAMES), horizon, meta), figures, meta)


def _days(ex: Examples) -> dict[str, Any]:
    if not len(ex):
        return {"days": None}
    return {"days": [date.fromordinal(int(ex.day.min())).isoformat(), date.fromordinal(int(ex.day.max())).isoformat()]}


def judge_model(model: RiskModel, path: Path, ex: Examples, churn: Mapping[str, list[int]],
                end: int) -> dict[str, Any]:
    """Judge `model` on the examples of the history at `path` (labels known until day ordinal `end`).
    On the model's own training history, only the days after its training days count; with none
    left the figures are marked in-sample, never validation."""
    trained = model.meta.get("trained") or {}
    usable = ex.day <= end - MIN_LABEL_DAYS
    in_sample = False
    if trained.get("fingerprint") == fingerprint(path):
        after = date.fromisoformat(trained["labels_known_until"]).toordinal() + 1
        if (usable & (ex.day >= after)).any():
            usable &= ex.day >= after
        else:
            in_sample = True
    chosen = ex.take(usable)
    y = label(chosen, churn, model.horizon_days, end)
    risk = model.risk(chosen.x) if len(chosen) else None  # not `score`: its reasons cost 1 ms a row
    return {"in_sample": in_sample, **_days(chosen), **judge(y, risk, chosen.alarm)}


def figures_line(name: str, f: Mapping[str, Any]) -> str:
    """One line of figures, as `train` prints them."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lights_, at = f.get("lights", {}), f.get("at_lights_load", {})
    return (f"{name}: {f.get('examples', 0):,} examples, churn rate {pct(f.get('churn_rate'))}, "
            f"AUC {num(f.get('auc'))}, top-decile lift {num(f.get('top_decile_lift'))}; lights' load "
            f"{pct(lights_.get('load'))}: lights lift {num(lights_.get('lift'))} recall {pct(lights_.get('recall'))}, "
            f"score lift {num(at.get('lift'))} recall {pct(at.get('recall'))}")

