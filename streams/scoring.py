"""The rule set's risk model in the worker: score at each day close, explain what is shown.

At a day close the partition's watched, not churned subscribers are scored in one vectorised
call (rules.features -> rules.risk) once their window is whole (as the model's examples were),
after the closing day's light evaluations and before the opening day's tasks; each keeps its
risk in its state (`risk_bp`). Reasons (TreeSHAP, about a millisecond a row) are computed only
for what is shown: the close's light changes and tasks in one batch, and one row at a time for
a lifecycle event's change or task and for `GET /subscribers`, from the features as they stand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from zoneinfo import ZoneInfo

import numpy as np

from rules import features
from rules.risk import RiskModel, load_model
from rules.ruleset import RuleSet
from rules.state import SubscriberState
from rules.tasks import RISK_SCALE, RiskReason

# What is shown of a subscriber's score: its risk (0-1, 4 decimals) and its top reasons.
Shown = tuple[float, tuple[RiskReason, ...]]


def to_bp(risk: float) -> int:
    """Return a risk (0-1) in basis points, as the state keeps it."""
    return int(round(risk * RISK_SCALE))


def scored(state: SubscriberState) -> bool:
    """Tell whether `state` has a risk to show: watched, not churned, and scored at a close."""
    return state.risk_bp is not None and state.photo is not None and state.churned is None


class Scorer:
    """Score a partition's watched subscribers at a day close; explain the rows shown."""

    def __init__(self, model: RiskModel, rules: RuleSet, tz: ZoneInfo) -> None:
        self.model = model
        self.rules = rules
        self.tz = tz
        # The features of the close being run (`close` .. `forget`): a row per subscriber scored.
        self._x: np.ndarray | None = None
        self._keys: list[bytes] = []
        self._row: dict[bytes, int] = {}
        self._bp: list[int] = []
        self._shown: dict[bytes, Shown] = {}

    @classmethod
    def of(cls, rules: RuleSet, tz: ZoneInfo) -> Scorer | None:
        """Load the model `rules` names (rules.risk.RiskModelError naming the file); None without one."""
        return None if rules.risk_model is None else cls(load_model(rules.risk_model), rules, tz)

    def close(self, subscribers: Sequence[tuple[bytes, SubscriberState]],
              open_day: date) -> list[tuple[bytes, SubscriberState, int | None]]:
        """Score the watched, not churned of `subscribers` as of the close before `open_day` in one
        call and keep each one's risk in its state; return them with their risk (basis points) of
        the close before (None: never scored)."""
        self.forget()
        live = [(key, s) for key, s in subscribers if s.photo is not None and s.churned is None]
        x = features.matrix([s for _, s in live], open_day, self.rules, self.tz)
        bps = np.rint(self.model.risk(x) * RISK_SCALE).astype(np.int64).tolist()
        self._x, self._keys, self._bp = x, [key for key, _ in live], bps
        self._row = {key: i for i, key in enumerate(self._keys)}
        out: list[tuple[bytes, SubscriberState, int | None]] = []
        for (key, state), bp in zip(live, bps):
            out.append((key, state, state.risk_bp))
            state.risk_bp = bp
        return out

    def explain(self, keys: Iterable[bytes]) -> None:
        """Compute the reasons of these subscribers scored at this close, in one batch."""
        if self._x is None:
            return
        todo = sorted({self._row[k] for k in keys if k in self._row and k not in self._shown})
        if not todo:
            return
        for i, reasons in zip(todo, self.model.reasons(self._x[todo])):
            self._shown[self._keys[i]] = (self._bp[i] / RISK_SCALE, tuple(reasons))

    def shown(self, key: bytes, state: SubscriberState, open_day: date | None) -> Shown | None:
        """Return the risk and reasons to show with a task, a light change or /subscribers; None
        when `state` is not scored. At a close: that close's score; else from the features now."""
        if not scored(state) or open_day is None:
            return None
        if key in self._row:
            self.explain((key,))
            return self._shown[key]
        risk, reasons = self.model.score(features.matrix([state], open_day, self.rules, self.tz))
        return to_bp(float(risk[0])) / RISK_SCALE, tuple(reasons[0])

    def forget(self) -> None:
        """End the close: from now on what is shown is computed from the features as they stand."""
        self._x, self._keys, self._row, self._bp, self._shown = None, [], {}, [], {}
