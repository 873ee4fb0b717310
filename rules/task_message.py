"""The retention task and its message (CONTRACT §2).

A `Task` keeps money as integer fen (`Money`) and minutes as integer seconds (`Minutes`) until
`Task.to_message` renders the contract's JSON; its id is a pure function of (msisdn, kind, period).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, tzinfo
from typing import Any, Final, NamedTuple

from rules.localtime import iso_time
from rules.vocabulary import Channel, Kind, Light, Minutes, Money, Priority, Reason, Scalar

RiskReason = tuple[str, float | None, float]
RISK_SCALE: Final = 10_000  # a risk (0-1) is kept in basis points



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



def task_id(msisdn: str, kind: str, period: str) -> str:
    """Return the deterministic id of the task for (msisdn, kind, period)."""
    # msisdn and kind never contain "|", so only the last part is free and the join is unambiguous.
    digest = hashlib.sha256(f"{msisdn}|{kind}|{period}".encode()).hexdigest()
    return digest[:32]


