"""The churn risk model a rule set may name: its file, and scoring a partition's watched subscribers.

A model file (written by `churnlight train`) is JSON: a format name and version, the features it
was trained on (names and units, rules.features), the churn horizon, the training figures, and
LightGBM's own text model. Loading it parses text only: no code runs (no pickle). Scoring takes a
feature matrix in rules.features order, one row per subscriber: `risk` gives the risk (0-1) of
every row (about 10 us a row), `reasons` the three largest per-feature contributions (LightGBM's
SHAP values, `pred_contrib`; about 1 ms a row, so for the rows shown or tasked).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import lightgbm
import numpy as np
import numpy.typing as npt
import orjson

from rules.event_types import mask
from rules.features import INDEX, matrix
from rules.offers import ContractTerms, light_offer
from rules.ruleset import RuleSet
from rules.subscriber import SubscriberState
from rules.task_message import SubscriberFacts

FORMAT: Final = "churnlight.risk-model"
VERSION: Final = 1
TOP_REASONS: Final = 3
# LightGBM predicts on its OpenMP threads by default. The worker scores a partition's watched
# subscribers (tens to thousands of rows) between batches on its one busy thread: waking the
# pool for each call cost more than the trees (3.1 ms against 0.5 ms for 25 rows, 2 cores).
PREDICT_THREADS: Final = 1

Reason = tuple[str, float | None, float]  # (feature, value, contribution to the log-odds)


class RiskModelError(ValueError):
    """A model file that cannot be used; the message names the file and says why, on one line."""


@dataclass(frozen=True)
class RiskModel:
    """A loaded model: score feature matrices with `score`."""

    path: str
    features: tuple[str, ...]
    horizon_days: int
    meta: dict[str, Any]
    booster: Any  # lightgbm.Booster
    columns: npt.NDArray[np.intp]  # the model's features as columns of a rules.features matrix

    def risk(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Return each row's risk (0-1): the call for a partition's watched subscribers at a day close."""
        x = self._columns_of(matrix)
        if not len(x):
            return np.empty(0, dtype=np.float64)
        return np.asarray(self.booster.predict(x, num_threads=PREDICT_THREADS), dtype=np.float64)

    def reasons(self, matrix: npt.NDArray[np.float64]) -> list[list[Reason]]:
        """Return each row's top 3 reasons (feature, value, contribution to the log-odds), largest first.

        LightGBM's TreeSHAP costs about a millisecond a row with this model's trees (100x the risk
        itself): ask for the rows that are shown or tasked, not for a whole partition."""
        x = self._columns_of(matrix)
        if not len(x):
            return []
        contrib = np.asarray(self.booster.predict(x, pred_contrib=True, num_threads=PREDICT_THREADS),
                             dtype=np.float64)[:, :-1]  # last: bias
        k = min(TOP_REASONS, contrib.shape[1])
        top = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
        names = self.features
        return [
            [(names[j], _value(x[i, j]), round(float(contrib[i, j]), 4)) for j in row]
            for i, row in enumerate(top.tolist())
        ]

    def score(self, matrix: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], list[list[Reason]]]:
        """Return each row's risk and its top 3 reasons (`risk` and `reasons` together)."""
        return self.risk(matrix), self.reasons(matrix)

    def _columns_of(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if matrix.ndim != 2 or matrix.shape[1] != len(INDEX):
            raise ValueError(f"expected a matrix of {len(INDEX)} feature columns, got shape {matrix.shape}")
        return matrix[:, self.columns]


def _value(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 2)


def dumps(booster: Any, features: list[str], horizon_days: int, meta: dict[str, Any]) -> bytes:
    """Return the bytes of a model file for `booster` trained on `features`."""
    from rules.features import describe

    doc = {"format": FORMAT, "version": VERSION, "features": describe(features), "horizon_days": horizon_days,
           **meta, "lightgbm": booster.model_to_string()}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def load_model(path: str | Path) -> RiskModel:
    """Load a model file; raise RiskModelError naming the file when it is missing, corrupt or mismatched."""
    shown = str(path)

    def fail(why: str) -> RiskModelError:
        return RiskModelError(f"{shown}: {why}")

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise fail("no such model file") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise fail("not a churnlight model file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise fail(f"not a churnlight model file (format is not {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise fail(f"model file version {doc.get('version')!r}; this churnlight reads version {VERSION}")
    specs = doc.get("features")
    if not isinstance(specs, list) or not specs or not all(isinstance(f, dict) and "name" in f for f in specs):
        raise fail("features: missing or malformed")
    names = tuple(str(f["name"]) for f in specs)
    unknown = [n for n in names if n not in INDEX]
    if unknown:
        raise fail(f"features {unknown} are unknown to this churnlight (a model of another version)")
    horizon = doc.get("horizon_days")
    if type(horizon) is not int or horizon < 1:
        raise fail("horizon_days: missing or not a whole number >= 1")
    text = doc.get("lightgbm")
    if not isinstance(text, str) or not text:
        raise fail("lightgbm: missing model text")
    try:
        booster = lightgbm.Booster(model_str=text)
    except lightgbm.basic.LightGBMError as exc:
        raise fail(f"lightgbm: corrupt model text ({str(exc).splitlines()[0][:120]})") from None
    if booster.num_feature() != len(names):
        raise fail(f"the model uses {booster.num_feature()} features, the file lists {len(names)}")
    meta = {k: v for k, v in doc.items() if k not in ("lightgbm", "features")}
    columns = np.asarray([INDEX[n] for n in names], dtype=np.intp)
    return RiskModel(shown, names, horizon, meta, booster, columns)


@dataclass(frozen=True, slots=True)
class Call:
    """One line of the day's call list: whom to call, how likely they leave, why, and what to offer."""

    masked: str  # rules.events.mask: never the full number on a screen or in a report
    risk: float
    expected_saved_cny: float  # risk x the window's revenue (the capacity queue's order)
    arpu_cny: float
    light: str | None
    reasons: list[Reason]
    offer: dict[str, str] | None


def call_list(states: Mapping[str, SubscriberState], model: RiskModel, open_day: date, rules: RuleSet,
              tz: ZoneInfo, limit: int = 20) -> list[Call]:
    """Rank the watched, not churned subscribers of `states` at the close before `open_day` by
    expected saved revenue (risk x 30-day ARPU), highest first; at most `limit` of them."""
    chosen = [(m, s) for m, s in states.items() if s.photo is not None and s.churned is None]
    if not chosen:
        return []
    x = matrix([s for _, s in chosen], open_day, rules, tz)
    risk = model.risk(x)
    arpu = [s.window(open_day, rules.window_days)[0] / 100 for _, s in chosen]
    saved = risk * np.asarray(arpu)
    top = np.argsort(-saved, kind="stable")[:limit]
    reasons = dict(zip(top.tolist(), model.reasons(x[top])))
    out = []
    for i in top.tolist():
        msisdn, s = chosen[i]
        who = SubscriberFacts(msisdn, s.region or "unknown", s.brand or "unknown", s.segment, s.activated_on,
                              s.birthday, s.prepaid, s.light)
        c = s.contract
        terms = None if c is None else ContractTerms(c.ends_on, c.committed_fen, s.contract_spend(open_day))
        offer, _ = light_offer(who, terms, open_day, rules)
        out.append(Call(mask(msisdn), round(float(risk[i]), 4), round(float(saved[i]), 2), arpu[i], s.light,
                        reasons[i], None if offer is None else {"code": offer.code, "detail": offer.detail}))
    return out
