"""The pure update of one subscriber's state (CONTRACT §5).

`apply` folds one validated event into a `SubscriberState` (rules.subscriber); partition-level
facts (the open local day, the time zone, the rule set) come in as arguments, so nothing here
reads a clock. Profiles and lifecycle events change it through rules.lifecycle.
"""

from __future__ import annotations

from datetime import date
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo

from rules.event_types import Billing, Event, Lifecycle, Outcome, Profile, ProfileDeleted, Usage
from rules.lifecycle import clear_profile, complaint, first_counted_day, lifecycle, set_profile, topup
from rules.localtime import DAY_MS, day_start_ms, local_day
from rules.ruleset import RuleSet
from rules.subscriber import SubscriberState, decayed_add, event_hash
from rules.vocabulary import Reason

# Re-exported: the worker and the tools import them from here.
__all__ = ["DAY_MS", "Reason", "SubscriberState", "day_start_ms", "local_day"]

ApplyOutcome = Literal["applied", "duplicate", "late_dropped"]


class Applied(NamedTuple):
    """What applying one event did, and the signals the task side acts on (a tuple: one is made
    for every event, three times faster than a frozen dataclass)."""

    outcome: ApplyOutcome
    balance_before_fen: int | None = None
    balance_after_fen: int | None = None

    def balance_crossed_below(self, limit_fen: int) -> bool:
        """Tell whether the balance went from >= `limit_fen` to < `limit_fen` (unknown before: no)."""
        return balance_crossed_below(self.balance_before_fen, self.balance_after_fen, limit_fen)


def balance_crossed_below(before_fen: int | None, after_fen: int | None, limit_fen: int) -> bool:
    """Tell whether a balance went from >= `limit_fen` to < `limit_fen`, the `balance_low` trigger
    (CONTRACT §5); a balance unknown before or after is no crossing."""
    return before_fen is not None and after_fen is not None and before_fen >= limit_fen > after_fen


def apply(
    state: SubscriberState, event: Event, *, open_day: date | None, tz: ZoneInfo, rules: RuleSet
) -> Applied:
    """Fold one validated event into `state` (CONTRACT §5) and say what it did."""
    balance = state.balance_fen
    kind = type(event)
    if kind is Profile:
        assert isinstance(event, Profile)
        set_profile(state, event, first_counted_day(event.updated_at_ms, tz, open_day))
        return Applied("applied", balance, balance)
    if kind is ProfileDeleted:
        clear_profile(state)
        return Applied("applied", balance, balance)

    if kind is Usage:
        assert isinstance(event, Usage)
        return Applied(apply_usage(state, event, open_day=open_day, tz=tz, window_days=rules.window_days), balance,
                       balance)
    assert not isinstance(event, (Profile, ProfileDeleted, Usage))
    minute = event.ts_ms // 60_000
    h = None if kind is Outcome else event_hash(event.event_id)  # type: ignore[union-attr]
    if h is not None and state.is_duplicate(h, minute):
        return Applied("duplicate", balance, balance)
    day = local_day(event.ts_ms, tz)
    if open_day is not None and day.toordinal() < open_day.toordinal() - rules.window_days:
        return Applied("late_dropped", balance, balance)

    if isinstance(event, Billing):
        if event.type in ("fee", "adjustment") and event.amount_fen:
            state.add_to_day(day.toordinal(), event.amount_fen, 0)
        if event.type == "topup" and event.amount_fen:
            topup(state, day.toordinal(), event.amount_fen)
        if event.balance_fen is not None and (state.balance_ms is None or event.ts_ms >= state.balance_ms):
            # A balance is a reading at `ts`: a late, older reading must not overwrite a newer one.
            state.balance_fen, state.balance_ms = event.balance_fen, event.ts_ms
    elif isinstance(event, Lifecycle):
        lifecycle(state, event, first_counted_day(event.ts_ms, tz, open_day))
        if event.type == "complaint":
            complaint(state, day.toordinal())
        elif event.type == "port_out_request":
            state.port_requests += 1
    # Outcomes change nothing here yet: contact history lives in Redis.

    if h is not None:
        state.remember(h, minute)
    if open_day is not None:
        state.prune(open_day, tz, rules.window_days)
    return Applied("applied", balance, state.balance_fen)


def apply_usage(state: SubscriberState, event: Usage, *, open_day: date | None, tz: ZoneInfo,
                window_days: int) -> ApplyOutcome:
    """Fold one usage event into `state`, as `apply` does (the bulk of the traffic, in one call)."""
    ts = event.ts_ms
    minute = ts // 60_000
    h = event_hash(event.event_id)
    if h in state.seen_h and state.is_duplicate(h, minute):
        return "duplicate"
    o = local_day(ts, tz).toordinal()
    opened = o if open_day is None else open_day.toordinal()
    if o < opened - window_days:
        return "late_dropped"
    # Before its partition's first day opens, the worker reads usage it cannot place yet against the
    # closes to come (they start from that first day): it is all kept as if ahead of the open day.
    ahead = open_day is None or o > opened
    seconds = 0
    if event.type == "voice":
        if event.direction == "out":
            seconds = event.seconds
        elif event.seconds and not ahead:
            if o == state.in_ord:  # the usual case: another call of the same day
                state.in_sec += event.seconds
            else:
                state.in_sec, state.in_ord = decayed_add(state.in_sec, state.in_ord, event.seconds, o)
    if event.charge_fen or seconds:
        state.add_to_day(o, event.charge_fen, seconds)
    if ahead:
        state.remember_ahead(o, event.seconds if event.type == "voice" and event.direction != "out" else 0)
    elif o > state.last_use_ord:
        state.last_use_ord = o
    state.remember(h, minute)
    if open_day is not None:
        state.prune(open_day, tz, window_days)
    return "applied"
