"""The contact policy (CONTRACT §5): whether a task is issued, and when an SMS may go.

`decide` applies the rules in the contract's order: port-out guard, opt-out / do-not-call,
hold-out, cooldown, quiet hours. It is pure: the caller reads the port-out state, the Redis
sets and the contact history beforehand and passes them in; after an *issued* decision it
records the task's `created_at` as the channel's last contact (only an issued task counts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta, tzinfo
from typing import Final, Protocol

from rules.localtime import DAY_MS, local_ms
from rules.task_message import Task
from rules.vocabulary import LIGHT_KINDS, SUPPRESS_REASONS, Status, SuppressReason

__all__ = ["SUPPRESS_REASONS", "Status", "SuppressReason"]  # re-exported for the policy's callers

# MIIT 2019: no retention offer or interference while a port-out request is open; service
# reminders (balance_low, vas_trial) still go.
GUARDED_KINDS: Final[frozenset[str]] = frozenset(LIGHT_KINDS | {"contract_expiry", "birthday", "risk"})
# CONTRACT §5 calls the `risk` task a marketing task: the cooldown holds it like a light task (the
# hold-out does not: it is the light tasks' control group).
MARKETING_KINDS: Final[frozenset[str]] = frozenset(LIGHT_KINDS | {"contract_expiry", "risk"})


class PolicyRules(Protocol):
    """The fields of a rule set that the contact policy reads."""

    @property
    def port_out_guard(self) -> bool: ...

    @property
    def holdout_bp(self) -> int: ...

    @property
    def cooldown_days(self) -> int: ...

    @property
    def quiet_start(self) -> time: ...

    @property
    def quiet_end(self) -> time: ...


@dataclass(frozen=True, slots=True)
class Decision:
    task: Task  # with send_after_ms set when quiet hours defer it
    status: Status
    reason: SuppressReason | None

    @property
    def issued(self) -> bool:
        return self.status == "issued"


def in_holdout(msisdn: str, salt: str, holdout_bp: int) -> bool:
    """Return whether `msisdn` is in the hold-out control group (CONTRACT §7 formula)."""
    return int(hashlib.sha256(f"{salt}:{msisdn}".encode()).hexdigest()[:8], 16) % 10000 < holdout_bp


def is_marketing(kind: str) -> bool:
    """Return whether tasks of `kind` are marketing contacts subject to the cooldown."""
    return kind in MARKETING_KINDS


def is_guarded(kind: str) -> bool:
    """Return whether an open port-out request holds tasks of `kind`."""
    return kind in GUARDED_KINDS


def quiet_until_ms(created_at_ms: int, quiet_start: time, quiet_end: time, tz: tzinfo) -> int | None:
    """Return the local `quiet_end` after `created_at_ms` if it falls in quiet hours, else None.

    Quiet hours are the half-open local interval [quiet_start, quiet_end), wrapping midnight
    when quiet_start > quiet_end; equal bounds mean no quiet hours.
    """
    moment = datetime.fromtimestamp(created_at_ms // 1000, tz)
    now, day = moment.time(), moment.date()
    if quiet_start == quiet_end:
        return None
    if quiet_start < quiet_end:
        return local_ms(day, quiet_end, tz) if quiet_start <= now < quiet_end else None
    if now >= quiet_start:
        return local_ms(day + timedelta(days=1), quiet_end, tz)
    if now < quiet_end:
        return local_ms(day, quiet_end, tz)
    return None


def decide(
    task: Task,
    *,
    port_out_open: bool,
    opted_out_sms: bool,
    dnc: bool,
    last_contact_ms: int | None,
    salt: str,
    rules: PolicyRules,
    tz: tzinfo,
) -> Decision:
    """Apply the contact policy to `task`; `last_contact_ms` is for the task's channel."""
    if rules.port_out_guard and port_out_open and is_guarded(task.kind):
        return Decision(task, "suppressed", "port_out_guard")
    if task.channel == "sms" and opted_out_sms:
        return Decision(task, "suppressed", "opt_out")
    if task.channel == "callcentre" and dnc:
        return Decision(task, "suppressed", "dnc")
    if task.kind in LIGHT_KINDS and in_holdout(task.msisdn, salt, rules.holdout_bp):
        return Decision(task, "suppressed", "holdout")
    # Event time: a contact exactly cooldown_days earlier no longer blocks, and a contact dated
    # after this task never does: whether a catch-up decided a later task first must not change
    # this one's decision.
    if (
        is_marketing(task.kind)
        and last_contact_ms is not None
        and 0 <= task.created_at_ms - last_contact_ms < rules.cooldown_days * DAY_MS
    ):
        return Decision(task, "suppressed", "cooldown")
    return issued(task, rules, tz)


def issued(task: Task, rules: PolicyRules, tz: tzinfo) -> Decision:
    """Return the issued decision of `task`: an SMS created in quiet hours waits for their end.

    `decide` ends here, and the task sink calls it for a task decided before a crash: the message
    republished or returned must be the one issued."""
    if task.channel == "sms":
        send_after = quiet_until_ms(task.created_at_ms, rules.quiet_start, rules.quiet_end, tz)
        if send_after is not None:
            task = replace(task, send_after_ms=send_after)
    return Decision(task, "issued", None)
