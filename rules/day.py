"""What a subscriber's day close, day opening, lifecycle or billing event brings (CONTRACT §5).

Pure functions of (state, event or day, rule set) that return effects: the light change, the tasks
to decide (each with what the contact policy must know of the state after the event), the stages
used up. The runtime (streams.runtime.processor) hands the changes and the tasks to sinks/; the
schedule of when a day closes is rules.schedule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from zoneinfo import ZoneInfo

from rules import lights, tasks as triggers
from rules.events import Lifecycle
from rules.lights import LightChange
from rules.ruleset import RuleSet
from rules.state import Applied, SubscriberState, local_day
from rules.tasks import ContractTerms, SubscriberFacts, Task


@dataclass(frozen=True, slots=True)
class Decide:
    """A task to decide, with whether a port-out request was open after the event that caused it
    (the policy sees the state after the event), and the Kafka time of that event (None: a close)."""

    task: Task
    port_out_open: bool
    trigger_ts_ms: int | None


@dataclass(slots=True)
class Effects:
    """What one step does: light changes to send (in order), tasks to decide (in order), and
    whether the subscriber's state changed (it goes to the changelog)."""

    changes: list[LightChange] = field(default_factory=list)
    decide: list[Decide] = field(default_factory=list)
    touched: bool = False


def facts(msisdn: str, s: SubscriberState) -> SubscriberFacts:
    """The subscriber as the task rules see it."""
    return SubscriberFacts(msisdn, s.region or "unknown", s.brand or "unknown", s.segment,
                           s.activated_on, s.birthday, s.prepaid, s.light)


def contract_terms(s: SubscriberState, day: date) -> ContractTerms | None:
    """The contract as the task rules see it on local `day` (spend: the profile's plus revenue since)."""
    c = s.contract
    return None if c is None else ContractTerms(c.ends_on, c.committed_fen, s.contract_spend(day))


def decision(task: Task, state: SubscriberState, rules: RuleSet, trigger_ts_ms: int | None) -> Decide:
    """Take the port-out flag the policy needs from the state after the triggering event: `ported_out`
    closes the port-out request, so the win-back task of the black light it causes is not held."""
    return Decide(task, state.port_out_open(task.created_at_ms, rules.port_out_request_open_days), trigger_ts_ms)


def judge(state: SubscriberState, at_ms: int, open_day: date, first_day: date | None,
          rules: RuleSet) -> tuple[LightChange | None, bool]:
    """Judge and move the light of `state` at `at_ms`; return the change, if any, and whether the
    state changed. A subscriber is judged on thresholds only once the window before `open_day`
    lies on or after the partition's `first_day` (rules.lights.judged)."""
    judgement = lights.evaluate(state, at_ms=at_ms, open_day=open_day, first_day=first_day, rules=rules)
    if judgement is None:
        return None, False
    before = (state.light, state.reasons)
    change = lights.change(state, judgement, at_ms)
    return change, (state.light, state.reasons) != before


def light_tasks(msisdn: str, state: SubscriberState, change: LightChange, rules: RuleSet, tz: ZoneInfo,
                trigger_ts_ms: int | None) -> list[Decide]:
    """The tasks of a light change: on worsening changes only (light tasks: the photographed base)."""
    if not lights.is_worsening(change.previous, change.light):
        return []
    terms = contract_terms(state, local_day(change.at_ms, tz))
    return [decision(task, state, rules, trigger_ts_ms)
            for task in triggers.light_tasks(change, facts(msisdn, state), terms, rules, tz)]


def judge_close(watched: Iterable[tuple[bytes, SubscriberState]], at_ms: int, day: date, first_day: date | None,
                whole: bool, rules: RuleSet) -> Iterator[tuple[bytes, SubscriberState, LightChange | None, bool]]:
    """Judge the watched subscribers at the close before local `day` (at its 00:00, `at_ms`), one
    by one; yield those whose light changed or whose state moved: (key, state, change, moved).

    Until the window is `whole` only those not sure to stay green are judged (a replay's first
    month judges nobody)."""
    for key, state in watched:
        if whole or not lights.steady_before_window(state):
            change, moved = judge(state, at_ms, day, first_day, rules)
            if change is not None or moved:
                yield key, state, change, moved


def day_open(msisdn: str, state: SubscriberState, day: date, rules: RuleSet, tz: ZoneInfo) -> list[Decide]:
    """The tasks due when local `day` opens (contract stages, birthday), every subscriber with a
    profile; each stage (per `ends_on`) and birthday (per year) is used up by its first decision,
    issued or suppressed: marked on `state` now, so it never comes again."""
    out: list[Decide] = []
    for keyed in triggers.day_open_tasks(facts(msisdn, state), contract_terms(state, day), day, state.used,
                                         rules, tz):
        out.append(decision(keyed.task, state, rules, None))
        state.mark_used(keyed.key)
    return out


def on_lifecycle(msisdn: str, state: SubscriberState, event: Lifecycle, changed: bool, open_day: date | None,
                 first_day: date | None, rules: RuleSet, tz: ZoneInfo, trigger_ts_ms: int | None) -> Effects:
    """Re-evaluate the light at once on a lifecycle event that `changed` the state (one that
    changed nothing, a replayed one say, is not judged at its old time), then the event's own
    tasks for a subscriber with a profile (a VAS trial's reminder, a port-out task)."""
    effects = Effects()
    if changed:
        # Before the partition's first day opens, a lifecycle event is judged on its own day.
        change, effects.touched = judge(state, event.ts_ms, open_day or local_day(event.ts_ms, tz), first_day,
                                        rules)
        if change is not None:
            effects.changes.append(change)
            effects.decide += light_tasks(msisdn, state, change, rules, tz, trigger_ts_ms)
    if state.has_profile:
        effects.decide += [decision(task, state, rules, trigger_ts_ms)
                           for task in triggers.lifecycle_tasks(event, facts(msisdn, state), rules, tz)]
    return effects


def on_billing(msisdn: str, state: SubscriberState, applied: Applied, ts_ms: int, rules: RuleSet, tz: ZoneInfo,
               trigger_ts_ms: int | None) -> list[Decide]:
    """The `balance_low` task of a billing event: a prepaid subscriber with a profile whose balance
    crossed below the threshold (rules.tasks.balance_low_tasks; an unknown previous balance is not
    a crossing)."""
    if not state.has_profile or applied.balance_after_fen is None:
        return []
    return [decision(task, state, rules, trigger_ts_ms) for task in triggers.balance_low_tasks(
        facts(msisdn, state), applied.balance_before_fen, applied.balance_after_fen, ts_ms, rules, tz)]
