"""What profiles and lifecycle events change in a subscriber's state (CONTRACT §5).

`rules.state.apply` calls these for the rarer events; the usage and billing traffic only touches
the day buckets and the dedup memory (rules.subscriber).
"""

from __future__ import annotations

from datetime import date
from typing import Final
from zoneinfo import ZoneInfo

from rules.event_types import Contract, Lifecycle, Profile
from rules.localtime import day_start_ms, local_day
from rules.subscriber import SubscriberState

COMPLAINT_DAYS: Final = 90  # complaints are remembered this long, at most MAX_COMPLAINTS of them
MAX_COMPLAINTS: Final = 8
TOPUP_AVG_WEIGHT: Final = 0.3  # weight of the newest earlier top-up in the running average


def set_profile(state: SubscriberState, p: Profile, counted_from: int | None = None) -> None:
    """Take profile `p`; its contract's `spent` covers the revenue before local day ordinal `counted_from`."""
    state.has_profile = True
    state.region, state.brand, state.segment = p.region, p.brand, p.segment
    state.activated_on, state.birthday, state.prepaid = p.activated_on, p.birthday, p.prepaid
    set_contract(state, p.contract, counted_from)
    state.photo = p.photo
    if p.photo is None:
        _clear_light(state)
    elif state.light is None:
        # Entering the photographed base starts green, silently (CONTRACT §5).
        state.light, state.light_since_ms, state.reasons = "green", p.updated_at_ms, ()


def clear_profile(state: SubscriberState) -> None:
    """Forget the profile (a deleted one): no contract, no light; the events applied stay."""
    state.has_profile = False
    state.region = state.brand = state.segment = state.birthday = None
    state.activated_on = None
    state.prepaid = False
    state.photo = None
    set_contract(state, None)
    _clear_light(state)


def set_contract(state: SubscriberState, contract: Contract | None, counted_from: int | None = None) -> None:
    """Take `contract`, whose `spent` covers the revenue before local day ordinal `counted_from`
    (None: every day in the buckets now)."""
    state.contract = contract
    state.contract_spent_fen = 0 if contract is None else contract.spent_fen
    state.contract_from = None if contract is None else counted_from


def _clear_light(state: SubscriberState) -> None:
    # Out of the watched base: no light, and no score (only the watched base is scored).
    state.light, state.light_since_ms, state.reasons, state.risk_bp = None, None, (), None


def topup(state: SubscriberState, day: int, fen: int) -> None:
    """Remember a top-up of `fen` on local day ordinal `day` (a risk feature)."""
    if day >= state.topup_ord:
        earlier, state.topup_ord, state.topup_fen = state.topup_fen, day, fen
    else:  # a late, older top-up: one of those before the latest
        earlier = fen
    if earlier:
        avg = state.topup_avg_fen
        state.topup_avg_fen = earlier if not avg else round(avg + TOPUP_AVG_WEIGHT * (earlier - avg))


def complaint(state: SubscriberState, day: int) -> None:
    """Remember a complaint of local day ordinal `day` (a risk feature)."""
    days = sorted((*state.complaint_ords, day))
    newest = days[-1]
    state.complaint_ords = tuple(d for d in days if d > newest - COMPLAINT_DAYS)[-MAX_COMPLAINTS:]


def first_counted_day(ts_ms: int | None, tz: ZoneInfo, open_day: date | None) -> int | None:
    """Return the first local day ordinal whose revenue counts against a contract written at
    `ts_ms`: its day when written at local midnight, else the next (the contract's `spent` holds
    that day's revenue so far); without a time, the open day (None before any: every day)."""
    if ts_ms is None:
        return None if open_day is None else open_day.toordinal()
    day = local_day(ts_ms, tz)
    return day.toordinal() if day_start_ms(day, tz) == ts_ms else day.toordinal() + 1


def lifecycle(state: SubscriberState, event: Lifecycle, counted_from: int | None = None) -> None:
    """Apply a lifecycle event's change of churn status, port-out request or contract."""
    kind, ts = event.type, event.ts_ms
    if kind in ("deactivated", "ported_out", "reactivated"):
        # Churn status follows the newest event time, so a late, older status cannot undo it.
        if state.churned_ms is None or ts >= state.churned_ms:
            state.churned = None if kind == "reactivated" else kind
            state.churned_ms = ts
        if kind == "ported_out":
            state.port_out_request_ms = None
    elif kind == "port_out_request":
        if state.port_out_request_ms is None or ts > state.port_out_request_ms:
            state.port_out_request_ms = ts
    elif kind == "port_out_cancelled":
        # A cancel older than the open request belongs to an earlier request.
        if state.port_out_request_ms is not None and ts >= state.port_out_request_ms:
            state.port_out_request_ms = None
    elif kind == "contract_signed":
        set_contract(state, event.contract, counted_from)
    # vas_trial_ending and complaint are signals for the task side only.
