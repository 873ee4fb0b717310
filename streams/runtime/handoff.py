"""Hand the rules' effects to sinks/: light changes, tasks to decide, dead letters; and a day's close.

The processor (streams.runtime.processor) calls this for what is not the usage event's path: a
close or an opening (once a day and partition), a lifecycle or billing event's effects, a record
that goes to the dead letters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import date
from zoneinfo import ZoneInfo

import orjson

from rules import day as rules_day, tasks as triggers
from rules.day import Decide
from rules.events import mask
from rules.lights import LightChange
from rules.ruleset import RuleSet
from rules.schedule import MAX_PARKED, CloseDay, Parked, PartitionClock
from rules.state import SubscriberState, local_day
from rules.tasks import Task
from sinks.deadletters import DeadLetterSink
from sinks.lights import LightSink
from streams.logs import DEADLETTER_LOG
from streams.runtime.store import Store, partition_of
from streams.runtime.tasks import TaskRunner
from streams.scoring import Scorer
from streams.settings import Settings
from streams.topics import TASK_TOPIC

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Handoff:
    """Carry out closes and hand effects to the sinks (lights, dead letters, the task runner)."""

    settings: Settings
    rules: RuleSet
    store: Store
    lights: LightSink
    dead: DeadLetterSink
    scorer: Scorer | None
    # The batch's event counts by (topic, outcome), the processor's: a dead-lettered record counts `rejected`.
    counts: dict[tuple[str, str], int]
    runner: TaskRunner | None = None
    tz: ZoneInfo = field(init=False)
    capacity: bool = field(init=False)

    def __post_init__(self) -> None:
        self.tz = self.settings.zone
        self.capacity = bool(self.rules.capacity)

    def _rejected(self, base: str) -> None:
        counted = (base, "rejected")
        self.counts[counted] = self.counts.get(counted, 0) + 1

    async def close(self, p: int, clock: PartitionClock, step: CloseDay) -> None:
        """Close the day before `step.day`: the light evaluations, then the opening day's triggers."""
        store = self.store
        # With a model, the whole close is judged first and scored after (the model learned the
        # lights of the close), then its changes go out with their scores.
        scorer = self.scorer if step.whole else None
        # Before the window is whole only the subscribers not sure to stay green are judged; a
        # subscriber loaded ahead of its clock (a crash) is not judged again at a close it has seen.
        judged = store.judged(p, step.day)
        watched = store.read(sorted(k for k in (store.watched.get(p, ()) if step.whole else store.unsteady(p))
                                    if k not in judged))
        subscribers: list[tuple[bytes, SubscriberState]] = []
        if scorer is not None:
            # Judged, then scored: the same objects both times (a state read twice may be two copies).
            subscribers = list(watched)
            watched = iter(subscribers)
        changes: list[tuple[bytes, SubscriberState, LightChange]] = []
        for key, state, change, moved in rules_day.judge_close(watched, step.at_ms,
                                                               step.day, clock.first_day, step.whole, self.rules):
            if moved:
                store.keep(p, key, state)
            if change is None:
                continue
            if scorer is None:
                self.changed(key.decode(), state, change)
            else:
                changes.append((key, state, change))
        try:
            if scorer is not None:
                await self._score(p, step.day, subscribers, changes)
            if self.runner is not None:
                for key, state in store.read(sorted(k for k in store.dated.get(p, ()) if k not in judged)):
                    decided = rules_day.day_open(key.decode(), state, step.day, self.rules, self.tz)
                    if decided:
                        self.queue(state, decided)
                        store.keep(p, key, state)
        finally:
            if scorer is not None:
                scorer.forget()  # what is shown from now on is computed from the features then

    def changed(self, msisdn: str, state: SubscriberState, change: LightChange) -> None:
        """Send a light change of a close and decide its tasks."""
        self.light(msisdn, state, change)
        if self.runner is not None:
            self.queue(state, rules_day.light_tasks(msisdn, state, change, self.rules, self.tz, None))

    async def _score(self, p: int, day: date, watched: list[tuple[bytes, SubscriberState]],
                     changes: list[tuple[bytes, SubscriberState, LightChange]]) -> None:
        """Score the partition's `watched` subscribers at the close before `day` (streams.scoring), then
        send the close's light changes and decide its `risk` tasks, with their scores."""
        assert self.scorer is not None
        scored = self.scorer.close(watched, day)
        threshold = None if self.runner is None else self.rules.risk_task_threshold
        crossed = []
        for key, state, previous in scored:
            if state.risk_bp != previous:
                self.store.keep(p, key, state)
            if triggers.risk_crossed(previous, state.risk_bp or 0, threshold, state.light):
                crossed.append((key, state, previous))
        # The reasons of what is shown, in one batch: a millisecond a row, so never for all.
        self.scorer.explain([key for key, _, _ in changes] + [key for key, _, _ in crossed])
        for key, state, change in changes:
            self.changed(key.decode(), state, change)
        for key, state, previous in crossed:
            assert state.risk_bp is not None
            msisdn = key.decode()
            self.queue(state, [rules_day.decision(task, state, self.rules, None) for task in triggers.risk_tasks(
                rules_day.facts(msisdn, state), previous, state.risk_bp, rules_day.contract_terms(state, day), day,
                self.rules, self.tz)])

    # --- what leaves ---------------------------------------------------------------------------

    def risk_fields(self, key: bytes, state: SubscriberState, open_day: date | None) -> dict[str, object]:
        """The `risk` and `risk_reasons` of a message about a scored subscriber; none without a model."""
        shown = None if self.scorer is None else self.scorer.shown(key, state, open_day)
        return {} if shown is None else {"risk": shown[0], "risk_reasons": triggers.risk_reasons_json(shown[1])}

    def light(self, msisdn: str, state: SubscriberState, change: LightChange) -> None:
        risk = self.risk_fields(msisdn.encode(), state, local_day(change.at_ms, self.tz))
        self.lights.put(msisdn, change, state.region, state.brand, risk)

    def queue(self, state: SubscriberState, decided: list[Decide]) -> None:
        """Queue tasks for the batch's commit (sinks.tasks decides them), with their scores."""
        runner = self.runner
        if runner is None:
            return
        for item in decided:
            task = item.task
            if self.scorer is not None:
                shown = self.scorer.shown(task.msisdn.encode(), state, local_day(task.created_at_ms, self.tz))
                if shown is not None:
                    item = replace(item, task=replace(task, risk=shown[0], risk_reasons=shown[1]))
            runner.due.append(item)
            if self.capacity and task.channel == "callcentre" and task.region in self.rules.capacity:
                clock = self.store.clocks.get(partition_of(task.msisdn.encode(), self.settings.partitions))
                open_day = clock.open_day if clock is not None and clock.open_day else local_day(
                    task.created_at_ms, self.tz)
                runner.arpu[task.task_id] = state.window(open_day, self.rules.window_days)[0]

    def failed(self, base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                source: str, exc: Exception, *, event: bool = True) -> None:
        """Dead-letter a valid record whose processing raised (`processing_error`, the exception's type)."""
        self.dead.put(base, key, value, headers, source, "processing_error", exception=type(exc).__name__)
        if event:
            self._rejected(base)
        # The exception's text may quote the record: its type and where it was raised only.
        DEADLETTER_LOG.warning("processing_error", "dead-lettered %s: processing_error (%s at %s)", source,
                               type(exc).__name__, _where(exc))

    def task_failed(self, task: Task, exc: Exception) -> None:
        self.failed(TASK_TOPIC[task.channel], task.msisdn.encode(), orjson.dumps(task.to_message(self.tz)), [],
                     f"task/{task.task_id}", exc, event=False)

    def too_far(self, held: Parked) -> None:
        """Dead-letter a held usage record that the records after it did not confirm."""
        _, _, key, value, base, source, _ = held
        self.dead.put(base, key.encode(), value.encode(), [], source, "too_far_ahead")
        self._rejected(base)
        DEADLETTER_LOG.warning("too_far_ahead", "dead-lettered %s: too_far_ahead (more than a day past the "
                               "partition's usage, and the records after it did not follow)", source)

    def too_many(self, entry: Parked) -> None:
        """Dead-letter a record to park for a subscriber that holds MAX_PARKED parked records already."""
        _, _, key, value, base, source, _ = entry
        self.dead.put(base, key.encode(), value.encode(), [], source, "too_many_parked")
        self._rejected(base)
        DEADLETTER_LOG.warning("too_many_parked", "dead-lettered %s: too_many_parked (subscriber %s holds %d "
                               "parked records)", source, mask(key), MAX_PARKED)



def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "?" if tb is None else f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"


