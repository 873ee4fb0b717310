"""The closed vocabularies of the contract, declared once: lights, channels, task kinds, reasons.

Rules, sinks and metrics all speak them (a metric label must be a small closed set), so a new
task kind or suppression reason is added here and nowhere else. So is the `Reason` a light or a
task gives, with the units its figures keep until the task message renders them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Light = Literal["green", "yellow", "red", "black"]
LIGHTS: Final[tuple[Light, ...]] = ("green", "yellow", "red", "black")  # worsening order

Channel = Literal["callcentre", "sms"]
CHANNELS: Final[tuple[Channel, ...]] = ("callcentre", "sms")

Priority = Literal["urgent", "high", "normal", "low"]
PRIORITIES: Final[tuple[Priority, ...]] = ("urgent", "high", "normal", "low")

Kind = Literal[
    "red_light",
    "yellow_light",
    "black_light",
    "contract_expiry",
    "balance_low",
    "birthday",
    "vas_trial",
    "port_out",
    "risk",
]
KINDS: Final[tuple[Kind, ...]] = (
    "red_light",
    "yellow_light",
    "black_light",
    "contract_expiry",
    "balance_low",
    "birthday",
    "vas_trial",
    "port_out",
    "risk",
)
LIGHT_KINDS: Final[frozenset[Kind]] = frozenset({"red_light", "yellow_light", "black_light"})

Status = Literal["issued", "suppressed"]
SuppressReason = Literal["port_out_guard", "opt_out", "dnc", "holdout", "cooldown"]
SUPPRESS_REASONS: Final[tuple[SuppressReason, ...]] = ("port_out_guard", "opt_out", "dnc", "holdout", "cooldown")


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
    """Why a light or a task is what it is: a stable `code`, the figure and the threshold it broke.

    A light's reasons are kept in the subscriber's state, so their figures are plain numbers and
    strings; a task's may be `Money` or `Minutes`."""

    code: str
    value: Scalar
    threshold: Scalar = None
