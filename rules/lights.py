"""The warning lights: judge a subscriber's state against a rule set (CONTRACT §5).

Pure functions of (state, rule set, time): `evaluate` says what the light should be and why,
`change` moves the state's light and reports a change only when there is one.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final, Protocol

from rules.ruleset import RuleSet
from rules.localtime import DAY_MS
from rules.subscriber import SubscriberState
from rules.vocabulary import LIGHTS, Light, Reason

__all__ = ["LIGHTS", "Judgement", "Light", "LightChange", "Reason", "change", "evaluate", "is_worsening", "judged",
           "steady_before_window"]

_RANK: Final = {light: rank for rank, light in enumerate(LIGHTS)}
# decline_ratio is compared in integers, exact for ratios with up to 6 decimals.
_RATIO_SCALE: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class Judgement:
    light: Light
    reasons: tuple[Reason, ...]
    arpu_fen: int
    mou_seconds: int


@dataclass(frozen=True, slots=True)
class LightChange:
    previous: Light | None
    light: Light
    at_ms: int
    reasons: tuple[Reason, ...]
    arpu_fen: int
    mou_seconds: int


def is_worsening(previous: Light | None, light: Light | None) -> bool:
    """Tell whether `light` is worse than `previous` (green < yellow < red < black; None = green)."""
    return _RANK[light or "green"] > _RANK[previous or "green"]


def judged(open_day: date, first_day: date | None, window_days: int) -> bool:
    """Tell whether the whole window before `open_day` has been seen, so thresholds apply."""
    return first_day is not None and open_day - timedelta(days=window_days) >= first_day


class LightFacts(Protocol):
    """What `steady_before_window` reads: a state, or what its record says of it unread
    (streams.runtime.codec.Head)."""

    @property
    def light(self) -> Light | None: ...
    @property
    def reasons(self) -> Sized: ...
    @property
    def churned(self) -> str | None: ...
    @property
    def port_out_request_ms(self) -> int | None: ...


def steady_before_window(state: LightFacts) -> bool:
    """Tell whether judging `state` while its window is not yet whole (`judged` is False) is sure
    to change nothing: it is green for no reason, and has no churn and no port-out request, so
    `evaluate` finds it green again without a threshold to judge."""
    return (state.light == "green" and not state.reasons and state.churned is None
            and state.port_out_request_ms is None)


def evaluate(
    state: SubscriberState, *, at_ms: int, open_day: date, first_day: date | None, rules: RuleSet
) -> Judgement | None:
    """Judge the light of `state` at `at_ms` on the window before `open_day`; None if not watched."""
    if state.photo is None:
        return None
    arpu, mou = state.window(open_day, rules.window_days)
    if state.churned is not None:
        return Judgement("black", (Reason("churned", state.churned),), arpu, mou)

    reasons: list[Reason] = []
    port_out = state.port_out_open(at_ms, rules.port_out_request_open_days)
    if port_out:
        assert state.port_out_request_ms is not None
        days_open = max(0, (at_ms - state.port_out_request_ms) // DAY_MS)
        reasons.append(Reason("port_out_request", days_open, rules.port_out_request_open_days))

    broken = conditions = 0
    declined = False
    if judged(open_day, first_day, rules.window_days):
        conditions = 1
        if _fails(arpu, rules.arpu_min_fen, rules.arpu_inclusive):
            broken += 1
            reasons.append(Reason("arpu_below", _cny(arpu), _cny(rules.arpu_min_fen)))
        if rules.mou_min_seconds is not None:
            conditions += 1
            if _fails(mou, rules.mou_min_seconds, rules.mou_inclusive):
                broken += 1
                reasons.append(Reason("mou_below", _minutes(mou), _minutes(rules.mou_min_seconds)))
        if rules.decline_ratio is not None:
            ratio = round(rules.decline_ratio * _RATIO_SCALE)
            photo = state.photo
            if arpu * _RATIO_SCALE < photo.arpu_fen * ratio:
                declined = True
                reasons.append(Reason("arpu_decline", _cny(arpu), _cny(photo.arpu_fen * ratio / _RATIO_SCALE)))
            # Without a minutes condition (seed 004) minutes are not watched at all.
            if rules.mou_min_seconds is not None and mou * _RATIO_SCALE < photo.mou_seconds * ratio:
                declined = True
                reasons.append(
                    Reason("mou_decline", _minutes(mou), _minutes(photo.mou_seconds * ratio / _RATIO_SCALE))
                )

    light: Light
    if port_out or (conditions > 1 and broken == conditions):
        light = "red"
    elif broken or declined:
        light = "yellow"
    else:
        light = "green"
    return Judgement(light, tuple(reasons), arpu, mou)


def change(state: SubscriberState, judgement: Judgement, at_ms: int) -> LightChange | None:
    """Move `state` to the judged light; return the change when the light differs."""
    previous = state.light
    state.reasons = judgement.reasons
    if judgement.light == previous:
        return None
    if previous is None and judgement.light == "green":
        # A watched subscriber without a light starts green silently, as on its profile.
        state.light, state.light_since_ms = "green", at_ms
        return None
    state.light, state.light_since_ms = judgement.light, at_ms
    return LightChange(previous, judgement.light, at_ms, judgement.reasons, judgement.arpu_fen, judgement.mou_seconds)


def _fails(value: int, minimum: int, inclusive: bool) -> bool:
    return value < minimum if inclusive else value <= minimum


def _cny(fen: float) -> float:
    return round(fen / 100, 2)


def _minutes(seconds: float) -> float:
    return round(seconds / 60, 2)
