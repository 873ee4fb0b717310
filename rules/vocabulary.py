"""The closed vocabularies of the contract, declared once: lights, channels, task kinds, reasons.

Rules, sinks and metrics all speak them (a metric label must be a small closed set), so a new
task kind or suppression reason is added here and nowhere else.
"""

from __future__ import annotations

from typing import Final, Literal

Light = Literal["green", "yellow", "red", "black"]
LIGHTS: Final[tuple[Light, ...]] = ("green", "yellow", "red", "black")  # worsening order

Channel = Literal["callcentre", "sms"]
CHANNELS: Final[tuple[Channel, ...]] = ("callcentre", "sms")

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

Status = Literal["issued", "suppressed"]
SuppressReason = Literal["port_out_guard", "opt_out", "dnc", "holdout", "cooldown"]
SUPPRESS_REASONS: Final[tuple[SuppressReason, ...]] = ("port_out_guard", "opt_out", "dnc", "holdout", "cooldown")
