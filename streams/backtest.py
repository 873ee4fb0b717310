"""Run rule sets offline over an event history, through the same pipeline the worker runs.

No broker: the history's lines become messages of an in-process "consumer" (murmur2 partitions,
per-partition offsets, nothing ever left to read behind the line), the state stays in memory and
tasks go through the real contact policy with contact history kept in memory (no consent sets,
since there is no Redis). The light changes are those the streaming worker gives on the same
history; the report adds what a retention team asks of a rule set: who was lit, how early,
how many calls it would cost.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
from faust.types import TP

from rules.events import INPUT_TOPICS
from rules.policy import Decision, decide
from rules.ruleset import RuleSet, load_rule_set
from rules.tasks import Task, local_date
from streams.metrics import Metrics
from streams.pipeline import Pipeline, partition_of
from streams.replay import iter_file, parse_line
from streams.settings import Settings
from streams.topics import LIGHTS, TICKS


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class _Consumer:
    """A consumer that has always read everything so far: the file is already in production order,
    so no topic is behind another and the watermark is simply the latest event time read."""

    def __init__(self, topics: list[str], partitions: int) -> None:
        self._assignment = {TP(t, p) for t in topics for p in range(partitions)}

    def end(self, tp: TP) -> int | None:
        return None  # nothing is ever left to read behind the current line

    def assignment(self) -> set[TP]:
        return self._assignment


class _App:
    consumer_generation_id = 1
    rebalancing = False

    def __init__(self, consumer: _Consumer) -> None:
        self.consumer = consumer


class MemoryTasks:
    """The contact policy with contact history in memory; every decision is kept for the report."""

    degraded = False

    def __init__(self, rules: RuleSet, settings: Settings) -> None:
        self.rules = rules
        self.settings = settings
        self.contacts: dict[tuple[str, str], int] = {}
        self.decided: dict[str, Decision] = {}

    async def handle(self, task: Task, *, port_out_open: bool, trigger_kafka_ts_ms: int | None) -> Decision:
        if task.task_id in self.decided:
            return self.decided[task.task_id]
        decision = decide(task, port_out_open=port_out_open, opted_out_sms=False, dnc=False,
                          last_contact_ms=self.contacts.get((task.msisdn, task.channel)),
                          salt=self.settings.holdout_salt, rules=self.rules, tz=self.settings.zone)
        self.decided[task.task_id] = decision
        if decision.issued:
            key = (task.msisdn, task.channel)
            self.contacts[key] = max(self.contacts.get(key, task.created_at_ms), task.created_at_ms)
        return decision


@dataclass
class RunResult:
    rules: RuleSet
    changes: list[dict[str, Any]]
    decisions: list[Decision]
    final_lights: Counter[str]
    events: Counter[str]


def run(path: Path, rules: RuleSet, settings: Settings, *, progress: Callable[[int], None] | None = None) -> RunResult:
    """Run `rules` over the history at `path`; return the light changes and the task decisions."""
    settings = settings.model_copy(update={"topic_prefix": ""})
    consumer = _Consumer([*INPUT_TOPICS, TICKS], settings.partitions)
    offsets: Counter[TP] = Counter()
    changes: list[dict[str, Any]] = []

    async def send(base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        if base == LIGHTS and value is not None:
            changes.append(orjson.loads(value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    metrics = Metrics()
    tasks = MemoryTasks(rules, settings)
    pipeline = Pipeline(settings, metrics, rules, app=_App(consumer), send=send, tasks=tasks)

    def batches() -> Iterator[list[_Message]]:
        batch: list[_Message] = []
        read = 0
        for n, line in enumerate(iter_file(path), start=1):
            read = n
            try:
                topic, key, value = parse_line(line)
            except ValueError:
                continue
            tp = TP(topic, partition_of(key or b"", settings.partitions))
            batch.append(_Message(topic, tp.partition, offsets[tp], key, value))
            offsets[tp] += 1
            if len(batch) >= 5000:
                yield batch
                batch = []
                if progress:
                    progress(n)
        if batch:
            yield batch
        if progress:
            progress(read)  # the last lines too, so that the bar ends at its total

    async def drive() -> None:
        for batch in batches():
            await pipeline.process(batch)

    asyncio.run(drive())
    final: Counter[str] = Counter()
    for (light, _, _), n in pipeline.summary().items():
        final[light] += n
    events: Counter[str] = Counter()
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "churnlight_events_total":
                events[sample.labels["outcome"]] += int(sample.value)
    return RunResult(rules, changes, list(tasks.decided.values()), final, events)


# --- the report -------------------------------------------------------------------------------

@dataclass
class Scores:
    name: str
    changes: int
    final_lights: Counter[str]
    tasks: Counter[tuple[str, str, str]]  # (channel, kind, status)
    churners: int
    lit: int
    watched_not_churned: int
    false_alarms: int
    lead_days: list[int]
    callcentre_per_day: dict[str, int]
    events: Counter[str]

    @property
    def recall(self) -> float | None:
        return self.lit / self.churners if self.churners else None

    @property
    def precision(self) -> float | None:
        alarms = self.lit + self.false_alarms
        return self.lit / alarms if alarms else None

    @property
    def median_lead(self) -> float | None:
        return statistics.median(self.lead_days) if self.lead_days else None


def load_labels(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    return {doc["msisdn"]: doc for doc in (orjson.loads(line) for line in iter_file(path))}


def score(result: RunResult, labels: dict[str, dict[str, Any]], tz: Any) -> Scores:
    """Compare a run's yellow/red alarms with the labelled churners of the photographed base."""
    first_alarm: dict[str, date] = {}
    watched: set[str] = set()
    for change in result.changes:
        watched.add(change["msisdn"])
        if change["light"] in ("yellow", "red"):
            day = datetime.fromisoformat(change["at"]).date()
            first_alarm.setdefault(change["msisdn"], day)
    churners = {m: d for m, d in labels.items() if d.get("churn_date") and d.get("photographed")}
    lit = 0
    leads: list[int] = []
    for msisdn, label in churners.items():
        alarm = first_alarm.get(msisdn)
        churn = date.fromisoformat(label["churn_date"])
        if alarm is not None and alarm <= churn:
            lit += 1
            leads.append((churn - alarm).days)
    false_alarms = sum(1 for m in first_alarm if m not in churners)
    tasks: Counter[tuple[str, str, str]] = Counter()
    per_day: dict[str, int] = defaultdict(int)
    for d in result.decisions:
        tasks[(d.task.channel, d.task.kind, d.reason or d.status)] += 1
        if d.issued and d.task.channel == "callcentre":
            per_day[local_date(d.task.created_at_ms, tz).isoformat()] += 1
    return Scores(result.rules.name, len(result.changes), result.final_lights, tasks, len(churners), lit,
                  len(watched - set(churners)), false_alarms, leads, dict(sorted(per_day.items())), result.events)


def run_many(path: Path, rule_names: list[str], settings: Settings, labels_path: Path | None,
             progress: Callable[[str, int], None] | None = None) -> list[Scores]:
    labels = load_labels(labels_path)
    out = []
    for name in rule_names:
        rules = load_rule_set(name)
        result = run(path, rules, settings, progress=(lambda n, r=name: progress(r, n)) if progress else None)
        out.append(score(result, labels, settings.zone))
    return out
