"""Run rule sets offline over an event history, through the processor the worker runs.

No broker: the history's lines become the input records of the worker's processor, through its
own interfaces (murmur2 partitions, per-partition offsets, a source with nothing ever left to
read behind the line, a group that owns every partition), the state stays in memory and
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

from rules.policy import Decision, decide
from rules.ruleset import RuleSet, load_rule_set
from rules.tasks import Task, local_date
from streams.metrics import Metrics
from sinks.outbox import Send
from streams.runtime.ports import Source, TaskHandler
from streams.runtime.processor import Processor
from streams.runtime.queries import Queries
from streams.runtime.reader import Record
from streams.runtime.store import partition_of
from streams.tools.replay import iter_file, parse_line
from streams.settings import Settings
from streams.topics import LIGHTS


def message(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> Record:
    """One line of a history as an input record (no Kafka time: event time alone drives the run)."""
    return Record(TP(topic, partition), offset, key, value, None, None)


class HistorySource:
    """A history file as the processor's source: it is in production order already, so no topic is
    behind another and the watermark is simply the latest event time read."""

    consuming = True
    caught_up = True
    broker_ok = True

    def end(self, tp: TP) -> int | None:
        return None  # nothing is ever left to read behind the current line

    def at_end(self, tp: TP, offset: int) -> bool:
        return True

    def start(self, tp: TP) -> int:
        return 0

    def reading(self, tp: TP) -> str:
        return "a history file, read in order"

    async def seek(self, tp: TP, offset: int) -> None:
        """Nothing to read again: a history's offsets have no gaps."""


class WholeGroup:
    """A group of one: this process owns every partition, from the start."""

    generation = 1
    rebalancing = False

    def __init__(self, partitions: int) -> None:
        self._owned = set(range(partitions))

    def owned(self) -> set[int]:
        return self._owned


def history_processor(settings: Settings, metrics: Metrics, rules: RuleSet, send: Send, *,
                      source: Source | None = None, tasks: TaskHandler | None = None) -> Processor:
    """A processor for a history (or a test's records): every partition owned, state in memory."""
    processor = Processor(settings, metrics, rules, group=WholeGroup(settings.partitions),
                          source=source or HistorySource(), send=send)
    if tasks is not None:
        processor.use_tasks(tasks)
    return processor


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
    watched: set[str] = field(default_factory=set)  # every subscriber watched at some time of the run
    unknown_topics: Counter[str] = field(default_factory=Counter)  # lines on topics not in CONTRACT §1
    days: tuple[date, date] | None = None  # the run's first and last local day
    churn_days: dict[str, list[int]] = field(default_factory=dict)  # the history's own churn, by ordinal
    examples: Any = None  # streams.tools.train.Examples of the day closes, when a model is judged


def run(path: Path, rules: RuleSet, settings: Settings, *, progress: Callable[[int], None] | None = None) -> RunResult:
    """Run `rules` over the history at `path`; return the light changes and the task decisions."""
    settings = settings.model_copy(update={"topic_prefix": ""})
    offsets: Counter[TP] = Counter()
    changes: list[dict[str, Any]] = []

    async def send(base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        if base == LIGHTS and value is not None:
            changes.append(orjson.loads(value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    metrics = Metrics()
    unknown: Counter[str] = Counter()
    tasks = MemoryTasks(rules, settings)
    processor = history_processor(settings, metrics, rules, send, tasks=tasks)
    queries = Queries(processor)

    def batches() -> Iterator[list[Record]]:
        batch: list[Record] = []
        read = 0
        for n, line in enumerate(iter_file(path), start=1):
            read = n
            try:
                topic, key, value = parse_line(line)
            except ValueError as exc:
                if str(exc).startswith("unknown topic"):
                    unknown[_topic_of(line)] += 1
                continue
            tp = TP(topic, partition_of(key or b"", settings.partitions))
            batch.append(message(topic, tp.partition, offsets[tp], key, value))
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
            await processor.process(batch)

    asyncio.run(drive())
    final: Counter[str] = Counter()
    for (light, _, _), n in queries.summary().items():
        final[light] += n
    events: Counter[str] = Counter()
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "churnlight_events_total":
                events[sample.labels["outcome"]] += int(sample.value)
    watched = {k.decode() for keys in processor.store.watched.values() for k in keys} | {c["msisdn"] for c in changes}
    day_list = sorted({datetime.fromisoformat(c["at"]).date() for c in changes})
    return RunResult(rules, changes, list(tasks.decided.values()), final, events, watched, unknown,
                     (day_list[0], day_list[-1]) if day_list else None)


def _topic_of(line: bytes) -> str:
    try:
        topic = orjson.loads(line).get("topic")
    except (orjson.JSONDecodeError, AttributeError):
        return "?"
    return str(topic)[:64]


def run_folded(path: Path, rules: RuleSet, settings: Settings, *, examples: bool) -> RunResult:
    """Run `rules` over the history with the offline fold (streams.history): what `photo: auto` and a
    model's judgement need; with `examples`, also collect the feature rows of every day close."""
    from streams.tools.train import collect

    ex, folded = collect(path, rules, settings.zone, step_days=1, decide_tasks=True)
    final: Counter[str] = Counter(s.light for s in folded.states.values() if s.photo is not None and s.light)
    watched = {c["msisdn"] for c in folded.changes} | {m for m, s in folded.states.items() if s.photo is not None}
    days = (folded.first_day, folded.last_day) if folded.first_day and folded.last_day else None
    churn = {m: sorted(d.toordinal() for d in ds) for m, ds in folded.churn_days.items()}
    return RunResult(rules, folded.changes, folded.decisions, final, Counter(folded.events), watched,
                     folded.unknown_topics, days, churn, ex if examples else None)


# --- the report -------------------------------------------------------------------------------

@dataclass
class Scores:
    name: str
    changes: int
    final_lights: Counter[str]
    tasks: Counter[tuple[str, str, str]]  # (channel, kind, status)
    churners: int  # watched subscribers who churned (the labels' churn_date, else the history's own)
    lit: int  # of them, lit yellow or red before they left
    watched_not_churned: int
    false_alarms: int
    lead_days: list[int]
    callcentre_per_day: dict[str, int]
    events: Counter[str]
    watched: int = 0
    alarms: int = 0  # watched subscribers lit yellow or red at some time
    unknown_topics: Counter[str] = field(default_factory=Counter)
    run_days: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> streams.tools.train.judge_model
    engine: str = "pipeline"

    @property
    def recall(self) -> float | None:
        return self.lit / self.churners if self.churners else None

    @property
    def precision(self) -> float | None:
        alarms = self.lit + self.false_alarms
        return self.lit / alarms if alarms else None

    @property
    def churn_rate(self) -> float | None:
        return self.churners / self.watched if self.watched else None

    @property
    def alarm_share(self) -> float | None:
        return self.alarms / self.watched if self.watched else None

    @property
    def lift(self) -> float | None:
        p, r = self.precision, self.churn_rate
        return p / r if p is not None and r else None

    @property
    def median_lead(self) -> float | None:
        return statistics.median(self.lead_days) if self.lead_days else None

    @property
    def callcentre_median(self) -> float:
        """Call-centre tasks issued per local day of the run, days without any counted as 0."""
        counts = list(self.callcentre_per_day.values())
        counts += [0] * max(0, self.run_days - len(counts))
        return statistics.median(counts) if counts else 0.0

    @property
    def callcentre_max(self) -> int:
        return max(self.callcentre_per_day.values(), default=0)


def load_labels(path: Path | None) -> dict[str, dict[str, Any]]:
    """Read and validate a labels file (README: Labels); raise streams.tools.train.LabelsError naming the field."""
    if path is None:
        return {}
    from streams.tools.train import load_labels as read

    return read(path)


def score(result: RunResult, labels: dict[str, dict[str, Any]], tz: Any) -> Scores:
    """Compare a run's yellow/red alarms with the churners of its watched base: the labels' when
    given (those with a `churn_date`), else the history's own (black lights)."""
    first_alarm: dict[str, date] = {}
    for change in result.changes:
        if change["light"] in ("yellow", "red"):
            day = datetime.fromisoformat(change["at"]).date()
            first_alarm.setdefault(change["msisdn"], day)
    watched = result.watched or {c["msisdn"] for c in result.changes}
    churners: dict[str, date] = {}
    if labels:
        for m, d in labels.items():
            if d.get("churn_date") and (m in watched or (not result.watched and d.get("photographed"))):
                churners[m] = date.fromisoformat(d["churn_date"])
    else:
        for change in result.changes:
            if change["light"] == "black":
                churners.setdefault(change["msisdn"], datetime.fromisoformat(change["at"]).date())
    lit = 0
    leads: list[int] = []
    for msisdn, churn in churners.items():
        alarm = first_alarm.get(msisdn)
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
    run_days = (result.days[1] - result.days[0]).days + 1 if result.days else len(per_day)
    return Scores(result.rules.name, len(result.changes), result.final_lights, tasks, len(churners), lit,
                  len(watched - set(churners)), false_alarms, leads, dict(sorted(per_day.items())), result.events,
                  watched=len(watched), alarms=len(first_alarm), unknown_topics=result.unknown_topics,
                  run_days=run_days)


def run_many(path: Path, rule_names: list[str], settings: Settings, labels_path: Path | None,
             progress: Callable[[str, int], None] | None = None, models: list[Path] | None = None) -> list[Scores]:
    """Run each rule set over the history and score it; judge each model on each rule set's base.

    The streaming pipeline runs the rule sets, as the worker would; when a model is judged or a
    rule set photographs its own base (`photo: auto`), all of them run through the offline fold
    (streams.history: the same rules code, one clock), so that the columns compare like with like.
    """
    from rules.risk import load_model
    from streams.tools.train import churn_days_of, judge_model

    labels = load_labels(labels_path)
    loaded = [load_model(m) for m in models or []]
    rule_sets = [load_rule_set(name) for name in rule_names]
    folded = bool(loaded) or any(r.photo == "auto" for r in rule_sets)
    out = []
    for rules in rule_sets:
        if folded:
            result = run_folded(path, rules, settings, examples=bool(loaded))
        else:
            result = run(path, rules, settings,
                         progress=(lambda n, r=rules.name: progress(r, n)) if progress else None)
        scores = score(result, labels, settings.zone)
        scores.engine = "fold" if folded else "pipeline"
        if loaded and result.examples is not None and result.days is not None:
            churn = churn_days_of(labels) if labels else result.churn_days
            end = result.days[1].toordinal() + 1
            for model in loaded:
                scores.models[Path(model.path).name] = judge_model(model, path, result.examples, churn, end)
        out.append(scores)
    return out
