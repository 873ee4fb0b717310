"""Retention-task triggers and the task message (CONTRACT §2, §5).

Every function here is pure: the caller passes the subscriber's facts, the rule set, the event
time and the operator's time zone, and gets `Task`s back. Nothing reads the wall clock, the
environment or any store. Money stays integer fen (`Money`) and minutes integer seconds
(`Minutes`) until `Task.to_message` renders the contract's JSON.

Once-only triggers (contract stages, birthdays) come back as `Keyed(key, task)`: the caller
skips keys already in its used set (passed in as `used`) and adds the key once the task has been
decided, issued or suppressed, as CONTRACT §5 says ("used up by their first decision").
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, Final, Literal, NamedTuple, Protocol

from rules.events import Lifecycle
from rules.vocabulary import CHANNELS, KINDS, LIGHTS, Channel, Kind, Light

__all__ = ["CHANNELS", "KINDS", "LIGHTS", "Channel", "Kind", "Light"]  # re-exported for the triggers' callers

Priority = Literal["urgent", "high", "normal", "low"]
Stage = Literal["remaining_match", "deposit_match", "overspend_match"]

PRIORITIES: Final[tuple[Priority, ...]] = ("urgent", "high", "normal", "low")
LIGHT_KINDS: Final[frozenset[Kind]] = frozenset({"red_light", "yellow_light", "black_light"})
# Contract listing order; it is also the order in which stages due on the same day are issued
# and the precedence when a light task picks its contract offer.
STAGES: Final[tuple[Stage, ...]] = ("remaining_match", "deposit_match", "overspend_match")

TENURE_OFFER: Final = "tenure_discount"
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS


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


class TaskRules(Protocol):
    """The fields of a rule set that the triggers read."""

    @property
    def name(self) -> str: ...

    @property
    def port_out_guard(self) -> bool: ...

    @property
    def tasks(self) -> Mapping[str, TaskSpecLike]: ...

    @property
    def remaining_match_days(self) -> tuple[int, int]: ...

    @property
    def balance_low_below_fen(self) -> int: ...

    @property
    def birthday_brands(self) -> Set[str]: ...

    @property
    def tenure_discounts(self) -> Sequence[tuple[int, int]]: ...

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


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer fen; rendered as CNY at the edge."""

    fen: int


@dataclass(frozen=True, slots=True)
class Minutes:
    """A duration in integer seconds; rendered as minutes at the edge."""

    seconds: int


Scalar = int | float | str | bool | None | Money | Minutes


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    value: Scalar
    threshold: Scalar


@dataclass(frozen=True, slots=True)
class Offer:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class SubscriberFacts:
    """What a trigger needs to know about the subscriber; the glue fills it from state."""

    msisdn: str
    region: str
    brand: str
    segment: str | None = None
    activated_on: date | None = None
    birthday: str | None = None  # "MM-DD"
    prepaid: bool = False
    light: Light | None = None  # current light; None when not in the photographed base


@dataclass(frozen=True, slots=True)
class ContractTerms:
    """A contract as it stands: `spend_fen` = profile `spent` + revenue counted since."""

    ends_on: date
    committed_fen: int
    spend_fen: int


class ReasonLike(Protocol):
    @property
    def code(self) -> str: ...

    @property
    def value(self) -> Scalar: ...

    @property
    def threshold(self) -> Scalar: ...


class LightChangeLike(Protocol):
    """What a light task needs of a light change; the light engine's change object fits."""

    @property
    def light(self) -> Light: ...

    @property
    def previous(self) -> Light | None: ...

    @property
    def at_ms(self) -> int: ...

    @property
    def reasons(self) -> Sequence[ReasonLike]: ...


@dataclass(frozen=True, slots=True)
class LightChange:
    light: Light
    previous: Light | None  # None counts as green
    at_ms: int
    reasons: tuple[Reason, ...] = ()


# A risk reason (rules.risk): the feature's name, its value (None: missing), its contribution to the log-odds.
RiskReason = tuple[str, float | None, float]
RISK_SCALE: Final = 10_000  # a risk (0-1) is kept in basis points


@dataclass(frozen=True, slots=True)
class Task:
    """One retention task: every field of the CONTRACT §2 task message, in internal units."""

    task_id: str
    msisdn: str
    channel: Channel
    kind: Kind
    priority: Priority
    light: Light | None
    previous_light: Light | None
    reasons: tuple[Reason, ...]
    offer: Offer | None
    region: str
    brand: str
    segment: str | None
    created_at_ms: int
    due_by_ms: int
    send_after_ms: int | None
    rule_set: str
    template: str | None  # sms only
    vars: tuple[tuple[str, Scalar], ...] | None  # sms only
    # Only where the rule set names a model and the subscriber is scored (CONTRACT §2).
    risk: float | None = None
    risk_reasons: tuple[RiskReason, ...] = ()

    def to_message(self, tz: tzinfo) -> dict[str, Any]:
        """Render the JSON-ready task message of CONTRACT §2."""
        message: dict[str, Any] = {
            "task_id": self.task_id,
            "msisdn": self.msisdn,
            "channel": self.channel,
            "kind": self.kind,
            "priority": self.priority,
            "light": self.light,
            "previous_light": self.previous_light,
            "reasons": [
                {"code": r.code, "value": json_scalar(r.value), "threshold": json_scalar(r.threshold)}
                for r in self.reasons
            ],
            "offer": None if self.offer is None else {"code": self.offer.code, "detail": self.offer.detail},
            "region": self.region,
            "brand": self.brand,
            "segment": self.segment,
            "created_at": iso_time(self.created_at_ms, tz),
            "due_by": iso_time(self.due_by_ms, tz),
        }
        if self.channel == "sms":
            message["send_after"] = None if self.send_after_ms is None else iso_time(self.send_after_ms, tz)
        message["rule_set"] = self.rule_set
        if self.channel == "sms":
            message["template"] = self.template
            message["vars"] = {k: json_scalar(v) for k, v in self.vars or ()}
        if self.risk is not None:
            message["risk"] = self.risk
            message["risk_reasons"] = risk_reasons_json(self.risk_reasons)
        return message


class Keyed(NamedTuple):
    """A once-only task and the used-set key its first decision uses up."""

    key: str
    task: Task


# ---------------------------------------------------------------------------------------------
# time and units


def local_date(ms: int, tz: tzinfo) -> date:
    """Return the operator-local date of the UTC epoch milliseconds `ms`."""
    return datetime.fromtimestamp(ms // 1000, tz).date()


def local_ms(day: date, at: time, tz: tzinfo) -> int:
    """Return UTC epoch milliseconds of local wall time `at` on `day`."""
    return int(datetime.combine(day, at, tzinfo=tz).timestamp()) * 1000


def local_midnight_ms(day: date, tz: tzinfo) -> int:
    """Return UTC epoch milliseconds of local 00:00 on `day`."""
    return local_ms(day, time(0), tz)


def iso_time(ms: int, tz: tzinfo) -> str:
    """Format `ms` as ISO 8601 in the operator's zone; milliseconds only when not whole."""
    moment = datetime.fromtimestamp(ms // 1000, tz)
    if ms % 1000:
        return moment.replace(microsecond=(ms % 1000) * 1000).isoformat(timespec="milliseconds")
    return moment.isoformat(timespec="seconds")


def risk_reasons_json(reasons: Sequence[RiskReason]) -> list[dict[str, Any]]:
    """Render risk reasons as CONTRACT §2's `risk_reasons` (feature, value, contribution)."""
    return [{"feature": f, "value": v, "contribution": c} for f, v, c in reasons]


def cny(fen: int) -> float:
    """Return integer fen as a CNY number (exactly representable to 2 decimals)."""
    return fen / 100


def json_scalar(value: Scalar) -> int | float | str | bool | None:
    """Render a reason or template value in contract units."""
    if isinstance(value, Money):
        return cny(value.fen)
    if isinstance(value, Minutes):
        return round(value.seconds / 60, 2)
    return value


# ---------------------------------------------------------------------------------------------
# ids and building blocks


def task_id(msisdn: str, kind: str, period: str) -> str:
    """Return the deterministic id of the task for (msisdn, kind, period)."""
    # msisdn and kind never contain "|", so only the last part is free and the join is unambiguous.
    digest = hashlib.sha256(f"{msisdn}|{kind}|{period}".encode()).hexdigest()
    return digest[:32]


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


# ---------------------------------------------------------------------------------------------
# offers


def tenure_years(activated_on: date, on: date) -> int:
    """Return whole years from `activated_on` to `on` (a Feb-29 start completes on Mar 1)."""
    years = on.year - activated_on.year
    if (on.month, on.day) < (activated_on.month, activated_on.day):
        years -= 1
    return years


def tenure_discount(years: int, table: Sequence[tuple[int, int]]) -> int | None:
    """Return the voice discount percent for `years` of tenure, or None below the table."""
    best: tuple[int, int] | None = None
    for min_years, percent in table:
        if years >= min_years and (best is None or min_years > best[0]):
            best = (min_years, percent)
    return None if best is None else best[1]


def contract_stages(contract: ContractTerms, day: date, rules: TaskRules) -> tuple[Stage, ...]:
    """Return the contract stages due on local `day`, in `STAGES` order."""
    low, high = rules.remaining_match_days
    days_left = (contract.ends_on - day).days
    due: list[Stage] = []
    if low <= days_left <= high:
        due.append("remaining_match")
    if (day.year, day.month) == (contract.ends_on.year, contract.ends_on.month) and day <= contract.ends_on:
        due.append("deposit_match")
    if contract.spend_fen >= contract.committed_fen and day < contract.ends_on:
        due.append("overspend_match")
    return tuple(due)


def contract_offer(contract: ContractTerms, stage: Stage) -> Offer:
    """Return the offer of contract `stage`."""
    ends = contract.ends_on.isoformat()
    if stage == "remaining_match":
        remaining = max(contract.committed_fen - contract.spend_fen, 0)
        detail = f"contract ends {ends}; remaining commitment {cny(remaining):.2f} CNY matched on renewal"
    elif stage == "deposit_match":
        detail = f"contract ends {ends}; deposit on renewal matched"
    else:
        over = contract.spend_fen - contract.committed_fen
        detail = (
            f"contract ends {ends}; spend {cny(contract.spend_fen):.2f} CNY exceeds commitment "
            f"{cny(contract.committed_fen):.2f} CNY by {cny(over):.2f} CNY, overspend matched"
        )
    return Offer(stage, detail)


def light_offer(
    who: SubscriberFacts, contract: ContractTerms | None, day: date, rules: TaskRules
) -> tuple[Offer | None, dict[str, Scalar]]:
    """Return the offer of a light task changing on local `day` and its template vars.

    The contract offer applies when the contract is in a stage on that day (same rules as the
    day-open check, first in `STAGES` order, regardless of whether the stage's own task was
    already used); otherwise the tenure discount; otherwise none.
    """
    if contract is not None:
        stages = contract_stages(contract, day, rules)
        if stages:
            return contract_offer(contract, stages[0]), {
                "offer": stages[0],
                "contract_ends_on": contract.ends_on.isoformat(),
            }
    if who.activated_on is not None:
        years = tenure_years(who.activated_on, day)
        percent = tenure_discount(years, rules.tenure_discounts)
        if percent is not None:
            detail = f"voice calls at {percent}% of list price (tenure {years} y)"
            return Offer(TENURE_OFFER, detail), {
                "offer": TENURE_OFFER,
                "discount_percent": percent,
                "tenure_years": years,
            }
    return None, {}


# ---------------------------------------------------------------------------------------------
# triggers


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
    change: LightChangeLike,
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
        reasons=tuple(Reason(r.code, r.value, r.threshold) for r in change.reasons),
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
    if not who.prepaid or previous_balance_fen is None:
        return []
    if not (previous_balance_fen >= threshold > balance_fen):
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
