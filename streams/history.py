"""Fold an event history through the worker's pure core, day by day, without a broker.

`churnlight train` and the model side of `churnlight backtest` read a history with this: each line
is validated (rules.events.decode) and applied (rules.state.apply / apply_usage) as the worker
does; when an event's local day is after the open day, the days in between close: the lights of
the watched subscribers are judged (rules.lights), their light tasks decided (rules.tasks,
rules.policy, contact history in memory), then `on_close` sees every state as of that close,
before any event of the opening day is applied: so no feature computed there sees an event
after its day. A history file is in production order (CONTRACT §6), which is event-time order
up to a few seconds; unlike the worker there is one clock for all subscribers and no partitions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rules import lights, tasks as triggers
from rules.events import PROFILES, Lifecycle, Photo, Profile, Rejection, Usage, decode, event_time_ms
from rules.policy import Decision, decide
from rules.ruleset import RuleSet
from rules.state import SubscriberState, apply, apply_usage, day_start_ms, local_day
from rules.tasks import ContractTerms, SubscriberFacts, Task
from streams.tools.replay import iter_file, parse_line

# (the opening local day, every state as of its close, the history's first day)
CloseHook = Callable[[date, dict[str, SubscriberState], date], None]


@dataclass
class HistoryRun:
    """What folding a history gave: the states at its end and what happened on the way."""

    states: dict[str, SubscriberState]
    first_day: date | None
    last_day: date | None  # the open day at the end: the history's last local day
    churn_days: dict[str, list[date]]  # local days of `deactivated` / `ported_out`, per subscriber
    changes: list[dict[str, Any]]  # light changes: msisdn, previous, light, at (local date)
    decisions: list[Decision]
    events: Counter[str] = field(default_factory=Counter)  # applied, duplicate, ..., rejected
    unknown_topics: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    auto_photographed: int = 0


def _facts(msisdn: str, s: SubscriberState) -> SubscriberFacts:
    return SubscriberFacts(msisdn, s.region or "unknown", s.brand or "unknown", s.segment, s.activated_on,
                           s.birthday, s.prepaid, s.light)


def _contract(s: SubscriberState, day: date) -> ContractTerms | None:
    c = s.contract
    return None if c is None else ContractTerms(c.ends_on, c.committed_fen, s.contract_spend(day))


def auto_photo(state: SubscriberState, open_day: date, rules: RuleSet) -> Photo | None:
    """Return the photo `rules` takes of `state` on its first complete window (`photo: auto`), or
    None when the window misses the thresholds."""
    fen, sec = state.window(open_day, rules.window_days)
    if fen < rules.arpu_min_fen if rules.arpu_inclusive else fen <= rules.arpu_min_fen:
        return None
    if rules.mou_min_seconds is not None and (
            sec < rules.mou_min_seconds if rules.mou_inclusive else sec <= rules.mou_min_seconds):
        return None
    month = (open_day - timedelta(days=1)).strftime("%Y-%m")
    return Photo(month, fen, sec)


def fold(path: Path, rules: RuleSet, tz: ZoneInfo, *, salt: str = "churnlight", on_close: CloseHook | None = None,
         decide_tasks: bool = True) -> HistoryRun:
    """Fold the history at `path` through `rules`; call `on_close(open_day, states, first_day)` at each
    day close."""
    states: dict[str, SubscriberState] = {}
    watched: set[str] = set()
    run = HistoryRun(states, None, None, {}, [], [])
    contacts: dict[tuple[str, str], int] = {}
    decided: dict[str, Decision] = {}
    auto = rules.photo == "auto"
    auto_photos: dict[str, Photo] = {}
    auto_taken = False
    open_day: date | None = None
    first_day: date | None = None
    window = rules.window_days

    def decide_task(task: Task, s: SubscriberState) -> None:
        if not decide_tasks or task.task_id in decided:
            return
        port_out = s.port_out_open(task.created_at_ms, rules.port_out_request_open_days)
        d = decide(task, port_out_open=port_out, opted_out_sms=False, dnc=False,
                   last_contact_ms=contacts.get((task.msisdn, task.channel)), salt=salt, rules=rules, tz=tz)
        decided[task.task_id] = d
        run.decisions.append(d)
        if d.issued:
            key = (task.msisdn, task.channel)
            contacts[key] = max(contacts.get(key, task.created_at_ms), task.created_at_ms)

    def evaluate(msisdn: str, s: SubscriberState, at_ms: int, day: date) -> None:
        judgement = lights.evaluate(s, at_ms=at_ms, open_day=day, first_day=first_day, rules=rules)
        if judgement is None:
            return
        change = lights.change(s, judgement, at_ms)
        if change is None:
            return
        run.changes.append({"msisdn": msisdn, "previous": change.previous, "light": change.light,
                            "at": local_day(at_ms, tz).isoformat()})
        if lights.is_worsening(change.previous, change.light):
            terms = _contract(s, local_day(at_ms, tz))
            for task in triggers.light_tasks(change, _facts(msisdn, s), terms, rules, tz):
                decide_task(task, s)

    def take_photos(day: date) -> None:
        nonlocal auto_taken
        auto_taken = True
        for msisdn, s in states.items():
            photo = auto_photo(s, day, rules) if s.has_profile and s.churned is None else None
            s.photo = photo
            s.light, s.light_since_ms, s.reasons = (None, None, ()) if photo is None else ("green", None, ())
            if photo is None:
                watched.discard(msisdn)
            else:
                auto_photos[msisdn] = photo
                watched.add(msisdn)
        run.auto_photographed = len(auto_photos)

    def close_until(day: date) -> None:
        nonlocal open_day
        assert open_day is not None
        while open_day < day:
            open_day = open_day + timedelta(days=1)
            at_ms = day_start_ms(open_day, tz)
            whole = lights.judged(open_day, first_day, window)
            if auto and whole and not auto_taken:
                take_photos(open_day)
            for msisdn in sorted(watched):
                s = states[msisdn]
                if whole or not lights.steady_before_window(s):
                    evaluate(msisdn, s, at_ms, open_day)
            for msisdn, s in states.items():
                if s.has_profile and decide_tasks:
                    for keyed in triggers.day_open_tasks(_facts(msisdn, s), _contract(s, open_day), open_day, s.used, rules,
                                                         tz):
                        decide_task(keyed.task, s)
                        s.mark_used(keyed.key)
            if on_close is not None:
                assert first_day is not None
                on_close(open_day, states, first_day)

    def state_of(msisdn: str) -> SubscriberState:
        s = states.get(msisdn)
        if s is None:
            s = states[msisdn] = SubscriberState()
        return s

    for line in iter_file(path):
        try:
            topic, key, value = parse_line(line)
        except ValueError as exc:
            if str(exc).startswith("unknown topic"):
                run.unknown_topics[str(exc).removeprefix("unknown topic ").strip("'\"")] += 1
            else:
                run.unreadable += 1
            continue
        # No "ahead of time" check: the worker measures it against the wall clock too, which is
        # after every event of a past history.
        event = decode(topic, key, value)
        if isinstance(event, Rejection):
            run.events["rejected"] += 1
            continue
        ts = event_time_ms(event)
        if type(event) is not Profile and ts is not None and topic != PROFILES:
            day = local_day(ts, tz)
            if open_day is None:
                open_day = first_day = run.first_day = day
            elif day > open_day:
                close_until(day)
        msisdn = event.msisdn
        s = state_of(msisdn)
        if type(event) is Usage:
            outcome = apply_usage(s, event, open_day=open_day, tz=tz, window_days=window)
            run.events[outcome] += 1
            continue
        applied = apply(s, event, open_day=open_day, tz=tz, rules=rules)
        run.events[applied.outcome] += 1
        if applied.outcome != "applied":
            continue
        if auto and isinstance(event, Profile):
            # A rule set with `photo: auto` photographs its own base: the profile's photo is not its.
            s.photo = auto_photos.get(msisdn)
            if s.photo is None:
                s.light, s.light_since_ms, s.reasons = None, None, ()
            elif s.light is None:
                s.light = "green"
        if s.photo is not None:
            watched.add(msisdn)
        else:
            watched.discard(msisdn)
        if isinstance(event, Lifecycle):
            if event.type in ("deactivated", "ported_out"):
                run.churn_days.setdefault(msisdn, []).append(local_day(event.ts_ms, tz))
            evaluate(msisdn, s, event.ts_ms, open_day or local_day(event.ts_ms, tz))
            if s.has_profile and decide_tasks:
                for task in triggers.lifecycle_tasks(event, _facts(msisdn, s), rules, tz):
                    decide_task(task, s)
    run.last_day = open_day
    return run

