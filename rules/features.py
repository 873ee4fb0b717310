"""The risk score's features: pure functions of a subscriber's state and the local day that opens.

A row describes the subscriber as of the close of the day before `open_day`: windows end there,
counts and ages are taken up to it. The caller computes rows at a day close, before it applies
events of the day that opens (the offline driver, streams.history, does; so must the worker), so
no feature sees an event after its day. Missing figures (no photo, no contract, no top-up yet)
are NaN, which the model learns as "missing". Money in CNY, minutes in minutes: the units a
retention manager reads next to a reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from rules.localtime import DAY_MS, day_start_ms
from rules.ruleset import RuleSet
from rules.subscriber import DECAY_KEEP, SubscriberState, decayed

Unit = Literal["CNY", "minutes", "ratio", "share", "days", "months", "count", "flag", "code"]
NAN: Final = math.nan
LIGHT_CODES: Final = {None: 0, "green": 1, "yellow": 2, "red": 3, "black": 4}
MONTH_DAYS: Final = 30.4375


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One feature: a stable `name` (the model file lists them), its `unit` and what it means."""

    name: str
    unit: Unit
    meaning: str


FEATURES: Final[tuple[FeatureSpec, ...]] = (
    FeatureSpec("arpu", "CNY", "revenue in the window (the last window_days complete days)"),
    FeatureSpec("arpu_prev", "CNY", "revenue in the window before it (decayed, mean life 30 days)"),
    FeatureSpec("arpu_vs_photo", "ratio", "arpu / the photo's arpu"),
    FeatureSpec("arpu_prev_vs_photo", "ratio", "arpu_prev / the photo's arpu"),
    FeatureSpec("arpu_vs_prev", "ratio", "arpu / arpu_prev"),
    FeatureSpec("mou", "minutes", "outgoing voice minutes in the window"),
    FeatureSpec("mou_prev", "minutes", "outgoing voice minutes in the window before it (decayed)"),
    FeatureSpec("mou_vs_photo", "ratio", "mou / the photo's mou"),
    FeatureSpec("mou_prev_vs_photo", "ratio", "mou_prev / the photo's mou"),
    FeatureSpec("mou_vs_prev", "ratio", "mou / mou_prev"),
    FeatureSpec("incoming_share", "share", "incoming voice minutes / all voice minutes, last ~30 days"),
    FeatureSpec("days_since_usage", "days", "days since the last day with any usage event"),
    FeatureSpec("days_since_topup", "days", "days since the last top-up"),
    FeatureSpec("topup_trend", "ratio", "the last top-up / the running average of those before it"),
    FeatureSpec("balance", "CNY", "the prepaid balance last reported"),
    FeatureSpec("tenure_months", "months", "months since activation"),
    FeatureSpec("days_to_anniversary", "days", "days until the next anniversary of activation"),
    FeatureSpec("contract_days_left", "days", "days until the contract ends"),
    FeatureSpec("contract_spend_ratio", "ratio", "contract spend / commitment"),
    FeatureSpec("complaints_30d", "count", "complaints in the last 30 days"),
    FeatureSpec("complaints_90d", "count", "complaints in the last 90 days"),
    FeatureSpec("port_out_requests", "count", "port-out requests seen"),
    FeatureSpec("port_out_open", "flag", "a port-out request is open"),
    FeatureSpec("light", "code", "the current light: 0 none, 1 green, 2 yellow, 3 red, 4 black"),
    FeatureSpec("days_in_light", "days", "days since the light last changed"),
    FeatureSpec("prepaid", "flag", "a prepaid subscriber"),
)
NAMES: Final[tuple[str, ...]] = tuple(f.name for f in FEATURES)
INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(NAMES)}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else NAN


def previous_window(state: SubscriberState, open_day: date, window_days: int) -> tuple[float, float]:
    """Return (revenue fen, outgoing seconds) of the window before the current one, decayed: the
    days already pruned from the state, then those still in it but before the current window."""
    cut = open_day.toordinal() - window_days  # the current window's first day
    as_of = cut - 1
    fen = decayed(state.prev_fen, state.prev_ord, as_of)
    sec = decayed(state.prev_sec, state.prev_ord, as_of)
    first = state.day_first
    for k, f, s in zip(state.day_off, state.day_fen, state.day_sec):
        day = first + k
        if day >= cut:
            break
        weight = DECAY_KEEP ** (as_of - day)
        fen += f * weight
        sec += s * weight
    return fen, sec


def _last_usage(state: SubscriberState, o: int, last_use_ord: int, window_days: int) -> int | None:
    """The latest local day before ordinal `o` with usage, as far as the state still tells it: its
    usage memory, else its day buckets of the window before `o` (an older bucket is there or not
    as the state was last pruned, which depends on whether usage came ahead of this close)."""
    if 0 < last_use_ord < o:
        return last_use_ord
    best = None
    first = state.day_first
    for k in state.day_off:  # the usage days with revenue or outgoing minutes, oldest first
        if first + k >= o:
            break
        if first + k >= o - window_days:
            best = first + k
    return best


def _days_to_anniversary(activated: date, day: date) -> int:
    for year in (day.year, day.year + 1):
        try:
            anniversary = activated.replace(year=year)
        except ValueError:  # 29 February
            anniversary = date(year, 3, 1)
        if anniversary >= day:
            return (anniversary - day).days
    return 0  # not reached: next year's anniversary is always on or after `day`


def row(state: SubscriberState, open_day: date, rules: RuleSet, tz: ZoneInfo) -> list[float]:
    """Return the features of `state` as of the close of the day before `open_day`, in FEATURES order."""
    o = open_day.toordinal()
    open_ms = day_start_ms(open_day, tz)
    w = rules.window_days
    fen, sec = state.window(open_day, w)
    arpu, mou = fen / 100, sec / 60
    prev_fen, prev_sec = previous_window(state, open_day, w)
    arpu_prev, mou_prev = prev_fen / 100, prev_sec / 60
    photo = state.photo
    photo_arpu = photo.arpu_fen / 100 if photo is not None else NAN
    photo_mou = photo.mou_seconds / 60 if photo is not None else NAN
    # Usage the worker applied ahead of its day's close is left out (SubscriberState.use_ahead).
    in_sec, in_ord, last_use_ord = state.usage_memory(o)
    incoming = decayed(in_sec, in_ord, o - 1) / 60 if in_ord and in_ord < o else 0.0
    last_use = _last_usage(state, o, last_use_ord, w)
    topup = state.topup_ord if 0 < state.topup_ord < o else None
    activated = state.activated_on
    contract = state.contract
    complaints = state.complaint_ords
    request = state.port_out_request_ms
    since = state.light_since_ms
    return [
        arpu,
        arpu_prev,
        _ratio(arpu, photo_arpu),
        _ratio(arpu_prev, photo_arpu),
        _ratio(arpu, arpu_prev),
        mou,
        mou_prev,
        _ratio(mou, photo_mou),
        _ratio(mou_prev, photo_mou),
        _ratio(mou, mou_prev),
        _ratio(incoming, incoming + mou),
        NAN if last_use is None else float(o - last_use),
        NAN if topup is None else float(o - topup),
        _ratio(state.topup_fen / 100, state.topup_avg_fen / 100) if topup is not None else NAN,
        NAN if state.balance_fen is None else state.balance_fen / 100,
        NAN if activated is None else (o - activated.toordinal()) / MONTH_DAYS,
        NAN if activated is None else float(_days_to_anniversary(activated, open_day)),
        NAN if contract is None else float((contract.ends_on - open_day).days),
        NAN if contract is None else _ratio(state.contract_spend(open_day), contract.committed_fen),
        float(sum(1 for d in complaints if o - 30 <= d < o)),
        float(sum(1 for d in complaints if o - 90 <= d < o)),
        float(state.port_requests),
        float(request is not None and request < open_ms
              and open_ms - request < rules.port_out_request_open_days * DAY_MS),
        float(LIGHT_CODES[state.light]),
        NAN if since is None or since > open_ms else (open_ms - since) / DAY_MS,
        float(state.prepaid),
    ]


def matrix(states: Iterable[SubscriberState], open_day: date, rules: RuleSet, tz: ZoneInfo) -> npt.NDArray[np.float64]:
    """Return the features of `states` as one row each (float64, FEATURES order): a partition's
    watched subscribers, scored in one call."""
    rows = [row(s, open_day, rules, tz) for s in states]
    if not rows:
        return np.empty((0, len(FEATURES)), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64)


def describe(names: Sequence[str] = NAMES) -> list[dict[str, str]]:
    """Return name, unit and meaning of each of `names` (for the model file and the README)."""
    specs = {f.name: f for f in FEATURES}
    return [{"name": n, "unit": specs[n].unit, "meaning": specs[n].meaning} for n in names]
