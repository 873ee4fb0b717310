"""Retention-task triggers (CONTRACT §5).

Every function here is pure: the caller passes the subscriber's facts, the rule set, the event
time and the operator's time zone, and gets `Task`s (rules.task_message) back. Nothing reads the
wall clock, the environment or any store.

Once-only triggers (contract stages, birthdays) come back as `Keyed(key, task)`: the caller
skips keys already in its used set (passed in as `used`) and adds the key once the task has been
decided, issued or suppressed, as CONTRACT §5 says ("used up by their first decision").
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import date, timedelta, tzinfo
from typing import Final, Protocol

from rules.event_types import Lifecycle
from rules.lights import LightChange
from rules.localtime import HOUR_MS, iso_time, local_date, local_midnight_ms
from rules.offers import ContractTerms, OfferRules, Stage, contract_offer, contract_stages, light_offer
from rules.state import balance_crossed_below
from rules.task_message import RISK_SCALE, Keyed, Offer, RiskReason, SubscriberFacts, Task, risk_reasons_json, task_id
from rules.vocabulary import CHANNELS, LIGHTS, PRIORITIES, Channel, Kind, Light, Money, Priority, Reason, Scalar

# Re-exported: the worker and the tools import the task model from here.
__all__ = ["RISK_SCALE", "ContractTerms", "Offer", "Reason", "RiskReason", "SubscriberFacts", "Task", "iso_time",
           "local_date", "risk_reasons_json", "task_id"]


class TaskSpecLike(Protocol):
    """One row of the rule set's task table."""

    @property
    def channel(self) -> str: ...

    @property
    def priority(self) -> str: ...

    @property
    def due_hours(self) -> int | None: ...

    @property
    def template(self) -> str | None: ...


class TaskRules(OfferRules, Protocol):
    """The fields of a rule set that the triggers read."""

    @property
    def name(self) -> str: ...

    @property
    def port_out_guard(self) -> bool: ...

    @property
    def tasks(self) -> Mapping[str, TaskSpecLike]: ...

    @property
    def balance_low_below_fen(self) -> int: ...

    @property
    def birthday_brands(self) -> Set[str]: ...

    @property
    def risk_task_threshold(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class _Spec:
    channel: str
    priority: str
    due_hours: int | None
    template: str | None


# CONTRACT §5 fixes the port_out task itself; a rule set that switches the guard off need not
# repeat it in its task table.
PORT_OUT_SPEC: Final = _Spec("callcentre", "urgent", 2, None)


def _channel(value: str) -> Channel:
    for channel in CHANNELS:
        if value == channel:
            return channel
    raise ValueError(f"unknown channel {value!r}")


def _priority(value: str) -> Priority:
    for priority in PRIORITIES:
        if value == priority:
            return priority
    raise ValueError(f"unknown priority {value!r}")


def _spec(rules: TaskRules, kind: Kind) -> TaskSpecLike | None:
    spec = rules.tasks.get(kind)
    if spec is None and kind == "port_out":
        return PORT_OUT_SPEC
    return spec


def _due_by_ms(
    kind: Kind, spec: TaskSpecLike, created_at_ms: int, tz: tzinfo, ends_on: date | None = None
) -> int:
    if spec.due_hours is not None:
        return created_at_ms + spec.due_hours * HOUR_MS
    if kind == "birthday":
        return local_midnight_ms(local_date(created_at_ms, tz) + timedelta(days=1), tz)
    if kind == "vas_trial" and ends_on is not None:
        return local_midnight_ms(ends_on, tz)
    raise ValueError(f"due_hours may be null only for birthday and vas_trial, not {kind}")


def _build(
    kind: Kind,
    period: str,
    who: SubscriberFacts,
    rules: TaskRules,
    tz: tzinfo,
    *,
    created_at_ms: int,
    reasons: tuple[Reason, ...],
    offer: Offer | None,
    vars: Mapping[str, Scalar],
    light: Light | None,
    previous_light: Light | None = None,
    ends_on: date | None = None,
) -> Task | None:
    spec = _spec(rules, kind)
    if spec is None:  # the rule set has no row for this kind: switched off
        return None
    channel = _channel(spec.channel)
    sms = channel == "sms"
    return Task(
        task_id=task_id(who.msisdn, kind, period),
        msisdn=who.msisdn,
        channel=channel,
        kind=kind,
        priority=_priority(spec.priority),
        light=light,
        previous_light=previous_light,
        reasons=reasons,
        offer=offer,
        region=who.region,
        brand=who.brand,
        segment=who.segment,
        created_at_ms=created_at_ms,
        due_by_ms=_due_by_ms(kind, spec, created_at_ms, tz, ends_on),
        send_after_ms=None,
        rule_set=rules.name,
        template=(spec.template or f"{kind}.v1") if sms else None,
        vars=tuple(vars.items()) if sms else None,
    )


def light_task_kind(light: Light, previous: Light | None) -> Kind | None:
    """Return the task kind a light change calls for, or None when it is not worsening."""
    before = LIGHTS.index(previous or "green")
    after = LIGHTS.index(light)
    if after <= before:
        return None
    if light == "black":
        return "black_light"
    if light == "red":
        return "red_light"
    if light == "yellow":  # only from green: anything worse than yellow was excluded above
        return "yellow_light"
    return None


def light_tasks(
    change: LightChange,
    who: SubscriberFacts,
    contract: ContractTerms | None,
    rules: TaskRules,
    tz: tzinfo,
) -> list[Task]:
    """Return the task of a photographed subscriber's light change (worsening only)."""
    kind = light_task_kind(change.light, change.previous)
    if kind is None:
        return []
    day = local_date(change.at_ms, tz)
    offer, vars = light_offer(who, contract, day, rules)
    task = _build(
        kind,
        day.isoformat(),
        who,
        rules,
        tz,
        created_at_ms=change.at_ms,
        reasons=change.reasons,
        offer=offer,
        vars=vars,
        light=change.light,
        previous_light=change.previous,
    )
    return [] if task is None else [task]


def contract_key(ends_on: date, stage: Stage) -> str:
    """Return the used-set key of a contract stage."""
    return f"contract:{ends_on.isoformat()}:{stage}"


def birthday_key(year: int) -> str:
    """Return the used-set key of a birthday."""
    return f"birthday:{year}"


def contract_tasks(
    who: SubscriberFacts,
    contract: ContractTerms | None,
    day: date,
    used: Set[str],
    rules: TaskRules,
    tz: tzinfo,
) -> list[Keyed]:
    """Return a contract_expiry task for every stage due on opening `day` and not yet used."""
    if contract is None:
        return []
    created_at_ms = local_midnight_ms(day, tz)
    days_left = (contract.ends_on - day).days
    out: list[Keyed] = []
    for stage in contract_stages(contract, day, rules):
        key = contract_key(contract.ends_on, stage)
        if key in used:
            continue
        reason = _stage_reason(contract, stage, days_left, rules)
        task = _build(
            "contract_expiry",
            f"{contract.ends_on.isoformat()}:{stage}",
            who,
            rules,
            tz,
            created_at_ms=created_at_ms,
            reasons=(reason,),
            offer=contract_offer(contract, stage),
            vars={
                "offer": stage,
                "ends_on": contract.ends_on.isoformat(),
                "days_left": days_left,
                "committed": Money(contract.committed_fen),
                "spent": Money(contract.spend_fen),
            },
            light=who.light,
        )
        if task is not None:
            out.append(Keyed(key, task))
    return out


def _stage_reason(contract: ContractTerms, stage: Stage, days_left: int, rules: TaskRules) -> Reason:
    if stage == "remaining_match":
        return Reason("contract_days_left", days_left, rules.remaining_match_days[1])
    if stage == "deposit_match":
        return Reason("contract_ends_this_month", contract.ends_on.isoformat(), contract.ends_on.strftime("%Y-%m"))
    return Reason("contract_spend", Money(contract.spend_fen), Money(contract.committed_fen))


def birthday_on(birthday: str, year: int) -> date:
    """Return the local birthday "MM-DD" in `year`; a day past the month's end (Feb 29 in a
    non-leap year) falls on the month's last day."""
    month, day = int(birthday[:2]), int(birthday[3:5])
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def birthday_tasks(
    who: SubscriberFacts, day: date, used: Set[str], rules: TaskRules, tz: tzinfo
) -> list[Keyed]:
    """Return the birthday task when opening `day` is the birthday of a birthday-brand subscriber."""
    if who.birthday is None or who.brand not in rules.birthday_brands:
        return []
    if birthday_on(who.birthday, day.year) != day:
        return []
    key = birthday_key(day.year)
    if key in used:
        return []
    task = _build(
        "birthday",
        str(day.year),
        who,
        rules,
        tz,
        created_at_ms=local_midnight_ms(day, tz),
        reasons=(Reason("birthday", who.birthday, None),),
        offer=None,
        vars={"date": day.isoformat()},
        light=who.light,
    )
    return [] if task is None else [Keyed(key, task)]


def day_open_tasks(
    who: SubscriberFacts,
    contract: ContractTerms | None,
    day: date,
    used: Set[str],
    rules: TaskRules,
    tz: tzinfo,
) -> list[Keyed]:
    """Return everything a subscriber is due when local `day` opens: contract stages, birthday."""
    return contract_tasks(who, contract, day, used, rules, tz) + birthday_tasks(who, day, used, rules, tz)


def balance_low_tasks(
    who: SubscriberFacts,
    previous_balance_fen: int | None,
    balance_fen: int,
    ts_ms: int,
    rules: TaskRules,
    tz: tzinfo,
) -> list[Task]:
    """Return the balance_low task when a prepaid balance crosses below the threshold."""
    threshold = rules.balance_low_below_fen
    if not who.prepaid or not balance_crossed_below(previous_balance_fen, balance_fen, threshold):
        return []
    task = _build(
        "balance_low",
        local_date(ts_ms, tz).isoformat(),
        who,
        rules,
        tz,
        created_at_ms=ts_ms,
        reasons=(Reason("balance_below", Money(balance_fen), Money(threshold)),),
        offer=None,
        vars={"balance": Money(balance_fen), "threshold": Money(threshold)},
        light=who.light,
    )
    return [] if task is None else [task]


def vas_trial_tasks(
    who: SubscriberFacts, service: str, ends_on: date, ts_ms: int, rules: TaskRules, tz: tzinfo
) -> list[Task]:
    """Return the reminder task of a `vas_trial_ending` event."""
    task = _build(
        "vas_trial",
        f"{service}:{ends_on.isoformat()}",
        who,
        rules,
        tz,
        created_at_ms=ts_ms,
        reasons=(Reason("vas_trial_ending", service, ends_on.isoformat()),),
        offer=None,
        vars={"service": service, "ends_on": ends_on.isoformat()},
        light=who.light,
        ends_on=ends_on,
    )
    return [] if task is None else [task]


def port_out_tasks(who: SubscriberFacts, ts_ms: int, rules: TaskRules, tz: tzinfo) -> list[Task]:
    """Return the port_out task of a `port_out_request`, only where the guard is off."""
    if rules.port_out_guard:
        return []
    task = _build(
        "port_out",
        local_date(ts_ms, tz).isoformat(),
        who,
        rules,
        tz,
        created_at_ms=ts_ms,
        reasons=(Reason("port_out_request", True, None),),
        offer=None,
        vars={},
        light=who.light,
    )
    return [] if task is None else [task]


def lifecycle_tasks(event: Lifecycle, who: SubscriberFacts, rules: TaskRules, tz: tzinfo) -> list[Task]:
    """Return the tasks a lifecycle event triggers by itself (light tasks come via its light change)."""
    if event.type == "vas_trial_ending" and event.service is not None and event.ends_on is not None:
        return vas_trial_tasks(who, event.service, event.ends_on, event.ts_ms, rules, tz)
    if event.type == "port_out_request":
        return port_out_tasks(who, event.ts_ms, rules, tz)
    return []


def risk_crossed(previous_bp: int | None, risk_bp: int, threshold: float | None, light: Light | None) -> bool:
    """Tell whether a green subscriber's risk first crosses `threshold` at this close: at or above it
    now, below it at the close before or never scored before (as a first judgement is a change)."""
    if threshold is None or light != "green":
        return False
    limit = round(threshold * RISK_SCALE)
    return risk_bp >= limit and (previous_bp is None or previous_bp < limit)


def risk_tasks(
    who: SubscriberFacts,
    previous_bp: int | None,
    risk_bp: int,
    contract: ContractTerms | None,
    day: date,
    rules: TaskRules,
    tz: tzinfo,
) -> list[Task]:
    """Return the `risk` task when a green watched subscriber's risk first crosses the rule set's
    threshold at the close before local `day` (CONTRACT §5): one per crossing, its period the local
    date the close opens, with the light tasks' offer."""
    threshold = rules.risk_task_threshold
    if not risk_crossed(previous_bp, risk_bp, threshold, who.light):
        return []
    assert threshold is not None
    offer, vars = light_offer(who, contract, day, rules)
    task = _build(
        "risk",
        day.isoformat(),
        who,
        rules,
        tz,
        created_at_ms=local_midnight_ms(day, tz),
        reasons=(Reason("risk_above", risk_bp / RISK_SCALE, threshold),),
        offer=offer,
        vars={**vars, "risk": risk_bp / RISK_SCALE},
        light=who.light,
    )
    return [] if task is None else [task]
