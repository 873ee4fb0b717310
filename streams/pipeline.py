"""What the worker does with a batch of raw records: validate, watermark, close days, apply, decide.

State lives in memory, as `SubscriberState` objects per owned partition, loaded from the state
changelog after each rebalance (streams.recovery). Every `commit_interval_s`, and before
partitions are let go or the worker stops, each subscriber touched since the last write goes once
to the changelog partition of its partition (co-partitioned with the source), and only at the
end of a batch whose outputs (dead letters, light changes, tasks) the broker acknowledged. Each
partition's clock record, written last, holds the offsets applied: the reader (streams.reader)
resumes from them. A write whose clock record never came is rolled back at recovery
(streams.recovery), and the outputs produced since the loaded state are read back from their
topics (streams.outputs), so a crash at any point re-processes records without counting an event
twice or sending an output again.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date, timedelta
from typing import Any, Protocol

import orjson
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaException
from redis.exceptions import RedisError
from faust.types import TP

from rules import capacity as capacity_rules, lights, tasks as triggers
from rules.events import (
    BILLING, INPUT_TOPICS, LIFECYCLE, PROFILES, USAGE, Billing, Event, Lifecycle, Outcome, Profile, ProfileDeleted,
    Rejection, Usage, decode, event_time_ms, mask,
)
from rules.kpi import TaskCounts, local_month, region_kpis
from rules.lights import LightChange
from rules.ruleset import RuleSet
from rules.state import SubscriberState, apply, apply_usage, day_start_ms, local_day
from rules.tasks import ContractTerms, SubscriberFacts, Task, risk_crossed, risk_reasons_json
from sinks.outcomes import OutcomeStore
from sinks.redis_store import Stopped
from streams.changelog import ChangelogWriter
from streams.runtime.codec import decode_state, encode_state
from streams.scoring import Scorer
from streams.faults import NONE as NO_FAULTS, Faults
from streams.outputs import STATE, deadletter_id, light_id, task_identity
from streams.logs import DEADLETTER_LOG
from streams.metrics import Metrics, RegionKpis
from streams.settings import Settings
from streams.topics import DEADLETTER, LIGHTS, TASK_TOPIC, TICKS

log = logging.getLogger(__name__)

META_PREFIX = b"~p:"
HOUR_MS = 3600 * 1000
# The topics whose event times say where a partition's data starts (a profile can be years old).
SERIES = (USAGE, BILLING)
# Subscribers whose tasks are decided at the same time (each task waits on Redis and the broker).
TASK_CONCURRENCY = 64
# Reads of a partition from the state's offset that may bring nothing before the gap is accepted.
MAX_SEEKS = 8
# Topics whose records are applied in event-time order with the day closes (parked while ahead
# of the watermark). Usage is not: its only consequence is its day's bucket, whatever the order.
ORDERED = frozenset((LIFECYCLE, BILLING, PROFILES))
# How long (event time) a billing event of a subscriber without a profile waits for the profile.
PROFILE_WAIT_MS = 24 * HOUR_MS
# Errors of Redis or the broker (or the stop): a batch they fail is read again, never dead-lettered.
OUTAGES: tuple[type[BaseException], ...] = (Stopped, OSError, TimeoutError, RedisError, KafkaException, AIOKafkaError)
# A usage record more than this ahead of its partition's latest usage time is an outlier until
# the next usage record confirms that time moved (it is then applied) or not (too_far_ahead).
OUTLIER_MS = 24 * HOUR_MS
# How long (wall clock) a suspected usage record waits for the next one before it is judged
# against the wall clock: accepted within OUTLIER_MS of it (live data after a gap), else rejected.
SUSPECT_WAIT_S = 60.0
# How long an input partition may hold its partition's event time with nothing left to read before
# the log says so (Pipeline._waited_for).
WAIT_LOG_S = 30.0
# A day does not close on records younger than this (Kafka time against the wall clock): the
# other topics' high watermarks come with their own fetches, and one not fetched since a record
# was produced before these would pass for caught up (a replay's burst closes weeks in a second).
FRESH_MS = 2000
# Touched subscribers that make the state go to the changelog before its interval is up: each
# write holds up the batches behind it (about 6 us a subscriber: at most about 0.6 s).
MAX_DIRTY = 100_000
# Parked records of a partition (their raw values, bytes) above which the reader pauses the
# partition's topics that run ahead of its watermark: the parked records live in the partition's
# clock record, one changelog message, which the broker takes up to 1 MiB (and a replay burst
# would otherwise park a whole topic read ahead: issue 15). The topics behind catch up meanwhile.
PARKED_BYTES = 256 * 1024


def partition_of(key: bytes, partitions: int) -> int:
    """Return the partition Kafka's default (murmur2) partitioner gives `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class TaskHandler(Protocol):
    """The decision and delivery side (sinks.tasks.TaskSink)."""

    degraded: bool

    async def handle(self, task: Task, *, port_out_open: bool, trigger_kafka_ts_ms: int | None) -> Any: ...


# A parked record: (due time, Kafka time or -1, key, value, topic, source, waited). `waited` is 1
# for a billing event that waits for its subscriber's profile: at its due time it is applied
# whether or not the profile came.
Parked = tuple[int, int, str, str, str, str, int]


class PartitionClock:
    """Event-time bookkeeping of one partition (CONTRACT §5, §7), persisted in the changelog."""

    __slots__ = ("max_ts", "offsets", "watermark_ms", "first_ts", "first_day", "open_day", "parked", "out",
                 "suspect", "write")

    def __init__(self) -> None:
        self.max_ts: dict[str, int] = {}
        # Last offset applied per input topic. Written to the changelog after the partition's
        # states in the same batch and changelog partition, so on recovery it is never ahead of
        # them: a re-delivered event at or below it was applied already and is skipped. The
        # per-subscriber dedup memory only spans a few days of event time, and in a replay burst
        # the seconds between two offset commits can span weeks.
        self.offsets: dict[str, int] = {}
        self.watermark_ms: int | None = None
        # The time of the first usage or billing event read: the partition's data starts on its
        # day, however the topics were interleaved (CONTRACT §5: the first day of a judged window
        # is on or after the local date of the first event processed). A profile's time can be
        # years old, and the profiles can be read before any usage exists: they do not count.
        self.first_ts: int | None = None
        self.first_day: date | None = None
        self.open_day: date | None = None
        # Lifecycle, billing and profile records ahead of the watermark, applied in event-time
        # order once the watermark passes them, before the day closes that follow them: however
        # the topics were interleaved in the reading (a replay reads the small lifecycle topic
        # far ahead of usage; a restart or rebalance catches up unevenly), the same decisions
        # follow. Also billing events waiting up to PROFILE_WAIT_MS for their subscriber's profile.
        self.parked: list[Parked] = []
        # Per output partition ("topic/partition"), an offset at or below which nothing this
        # partition's records produce after this state lands: on recovery the outputs from there
        # on are read back, so that re-processing sends none of them again.
        self.out: dict[str, int] = {}
        # A usage record far ahead of the partition's latest usage time, held until the next
        # usage record says whether time moved (streams.pipeline.OUTLIER_MS); at most one.
        self.suspect: Parked | None = None
        # The number of the state write this record closes (streams.recovery rolls back a write
        # whose clock record never came); the next write of any partition takes a higher one.
        self.write = 0

    def observe(self, topic: str, ts_ms: int) -> bool:
        """Take in an event time of `topic`; say whether the topic's latest time moved."""
        if self.first_ts is None and topic in SERIES:
            self.first_ts = ts_ms
        if ts_ms > self.max_ts.get(topic, -1):
            self.max_ts[topic] = ts_ms
            return True
        return False

    def advance(self, pending: dict[str, bool]) -> int | None:
        """Recompute the watermark: the minimum over the topics that still have records to read.

        A caught-up topic does not hold it back; a topic with records to read but none seen yet
        holds it where it is. Profiles are state, not a series (their times can be years old):
        they never move it. The watermark never goes back.
        """
        lows: list[int] = []
        for topic, has_more in pending.items():
            if not has_more or topic == PROFILES:
                continue
            ts = self.max_ts.get(topic)
            if ts is None:
                return self.watermark_ms
            lows.append(ts)
        if lows:
            candidate: int | None = min(lows)
        else:
            # All caught up: the series' latest time. A sparse topic (lifecycle, outcomes) alone
            # never carries the watermark past the data.
            seen = [ts for topic, ts in self.max_ts.items() if topic in SERIES] or [
                ts for topic, ts in self.max_ts.items() if topic != PROFILES]
            candidate = max(seen) if seen else None
        if candidate is not None and (self.watermark_ms is None or candidate > self.watermark_ms):
            self.watermark_ms = candidate
        return self.watermark_ms

    def park(self, entry: Parked) -> None:
        bisect.insort(self.parked, entry)

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "mx": self.max_ts, "wm": self.watermark_ms, "ft": self.first_ts,
            "fd": self.first_day.toordinal() if self.first_day else None,
            "od": self.open_day.toordinal() if self.open_day else None,
            "pk": self.parked,
            "of": self.offsets,
            "out": self.out,
            "su": self.suspect,
            "w": self.write,
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> PartitionClock:
        doc = orjson.loads(data)
        clock = cls()
        clock.max_ts = {str(k): int(v) for k, v in doc.get("mx", {}).items()}
        clock.watermark_ms = doc.get("wm")
        clock.first_ts = doc.get("ft")
        clock.first_day = date.fromordinal(doc["fd"]) if doc.get("fd") else None
        clock.open_day = date.fromordinal(doc["od"]) if doc.get("od") else None
        clock.parked = sorted(_parked(item, LIFECYCLE) for item in doc.get("pk", []))
        # Written before 2026-12-05: billing events waiting for the profiles topic, kept apart.
        clock.parked += [_parked(item, BILLING) for item in doc.get("wt", [])]
        clock.parked.sort()
        clock.offsets = {str(k): int(v) for k, v in doc.get("of", {}).items()}
        clock.out = {str(k): int(v) for k, v in doc.get("out", {}).items()}
        clock.suspect = None if doc.get("su") is None else _parked(doc["su"], USAGE)
        clock.write = int(doc.get("w", 0))
        return clock


def _parked(item: list[Any], topic: str) -> Parked:
    if len(item) == 4:  # written before 2026-12-05: (ts, kafka ts, key, value), lifecycle or billing
        ts, kafka_ts, key, value = item
        return (int(ts), -1 if kafka_ts is None else int(kafka_ts), str(key), str(value), topic, "", 0)
    ts, kafka_ts, key, value, base, source, waited = item
    return (int(ts), int(kafka_ts), str(key), str(value), str(base), str(source), int(waited))


class Rewind:
    """An input partition read again from `seek_to`, after a gap seen at offset `gap_at`."""

    __slots__ = ("gap_at", "seek_to", "stale", "seeks", "first")

    def __init__(self, gap_at: int, seek_to: int) -> None:
        self.gap_at = gap_at
        self.seek_to = seek_to
        self.stale = True  # no seek yet, or a record passed over since the last one: seek again
        self.seeks = 0
        self.first: int | None = None  # where the last re-read started, when not at `seek_to`


class Pipeline:
    """Drive one worker's batches; the reader (streams.reader) is a thin loop around `process`."""

    def __init__(
        self, settings: Settings, metrics: Metrics, rules: RuleSet, *, app: Any,
        send: Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]]], Awaitable[Awaitable[Any]]],
        tasks: TaskHandler | None = None, changelog: ChangelogWriter | None = None,
        outcomes: OutcomeStore | None = None, output_ends: dict[str, int] | None = None,
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.rules = rules
        self.tz = settings.zone
        self.app = app
        self.send = send  # (topic base, key, value, headers) -> enqueue; returns the acknowledgement future
        self.tasks = tasks
        self.changelog = changelog
        self.outcomes = outcomes
        # What the records come from: `end(tp)`, `seek(tp, offset)`, `consuming` (streams.reader.Reader,
        # attached by the app; the backtest's stand-in consumer otherwise).
        self.source: Any = getattr(app, "consumer", None)
        self.base_topic = {settings.topic(t): t for t in (*INPUT_TOPICS, TICKS)}
        self.partitions = settings.partitions
        # The state of the owned partitions, loaded from the changelog after every rebalance.
        self.generation: Any = object()
        self.clocks: dict[int, PartitionClock] = {}
        self.states: dict[bytes, SubscriberState] = {}
        self.watched: dict[int, set[bytes]] = {}
        self.dated: dict[int, set[bytes]] = {}
        self._dirty: dict[int, set[bytes]] = {}
        self._dirty_clocks: set[int] = set()
        # Whether every batch so far ended with its outputs acknowledged: only then may the state
        # in memory go to the changelog (a failed batch's partial effects never do).
        self._settled = True
        self._written_at = time.monotonic()
        # The last state write's wait for the broker, going on behind the batches that follow it.
        self._flushing: asyncio.Future[None] | None = None
        self._acks: list[Awaitable[Any]] = []
        # The batch's light changes and dead letters: (topic base, key, value, headers, identity),
        # enqueued at its commit, so that a record's processing does no I/O.
        self._out: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]], str]] = []
        self._outcomes_due: list[Outcome] = []
        # Identities of the outputs found on the output topics at recovery, past the offsets the
        # loaded state recorded: re-processing does not send them again (light_id, deadletter_id,
        # task_identity).
        self.published: set[str] = set()
        # Per output partition ("topic/partition"), one past the last offset the broker
        # acknowledged to this process (streams.app.Sender keeps it), recorded with each clock.
        self.output_ends: dict[str, int] = {} if output_ends is None else output_ends
        self.faults = faults
        # The rule set's risk model, loaded now (a file that cannot be used stops the start-up); None: no score.
        self.scorer = Scorer.of(rules, self.tz)
        # The number of the last state write (every changelog record carries its write's number).
        self._write_no = 0
        # The Kafka time (ms) of the record being processed; None between records (ticks, rechecks).
        self._record_ms: int | None = None
        # Partitions whose day close waits for records to age (FRESH_MS): partition -> Kafka ms.
        self._deferred: dict[int, int] = {}
        # Input partitions the watermark waits for while the reader has nothing more to take, since
        # when (monotonic), and those already logged (`_waited_for`).
        self._waiting: dict[TP, float] = {}
        self._waiting_logged: set[TP] = set()
        # Partitions holding a suspected usage record (PartitionClock.suspect), since when (monotonic).
        self._suspected: dict[int, float] = {}
        # Tasks the batch decided on: (task, port-out request open, Kafka time of the trigger).
        self._due: list[tuple[Task, bool, int | None]] = []
        # Call-centre capacity (sinks.capacity), only when the rule set sets one. Per partition, the
        # next 08:00 local its event time passes: each one passed is an arrival (the last partition
        # to arrive releases the day's queues) and delivers what the partition was given, in
        # event-time order among the batch's tasks: (position in `_due`, partition, day). And the
        # 30-day ARPU (fen) of each call-centre task when it was decided, which ranks it in the queue.
        self._capacity = bool(rules.capacity)
        self._mornings: dict[int, int] = {}
        self._mornings_due: list[tuple[int, int, date]] = []
        # Partitions past an 08:00 whose release waits for other partitions: asked again at each commit.
        self._unreleased: dict[int, date] = {}
        # Whether the owned partitions that hold records were named to the queue since the load:
        # a release waits for each of them to pass its 08:00.
        self._registered = False
        self._arpu: dict[str, int] = {}
        # High watermarks change only between fetches: one look-up per partition and batch.
        self._highwater: dict[TP, int | None] = {}
        # Per partition, whether each input topic has records left (`_pending`), kept up to date
        # record by record within a batch.
        self._pend: dict[int, dict[str, bool]] = {}
        # Events counted in the batch so far, by (topic, outcome): the metric is updated once a batch.
        self._counts: dict[tuple[str, str], int] = {}
        # The batch's dead letters by (topic, reason), counted with its events.
        self._dead: list[tuple[str, str]] = []
        self._now_ms = int(time.time() * 1000)
        self._tps: dict[int, list[tuple[TP, str]]] = {}
        # Input partitions being read again from the state's next offset after a gap.
        self._rewinds: dict[TP, Rewind] = {}

    def attach(self, source: Any) -> None:
        self.source = source

    def was_published(self, task_id: str) -> bool:
        """Say whether task `task_id` was found on its topic at recovery (a crash came between
        the broker's acknowledgement and the claim's `sent`)."""
        return task_identity(task_id) in self.published

    def decision_arpu(self, task: Task) -> int | None:
        """Return the 30-day ARPU (fen) of `task`'s subscriber when the task was decided (the
        capacity queue ranks by it; sinks.tasks.TaskSink's `arpu_of`)."""
        return self._arpu.pop(task.task_id, None)

    def output_starts(self) -> dict[str, int]:
        """Per output partition, where the outputs of the owned partitions' loaded state may start."""
        starts: dict[str, int] = {}
        for clock in self.clocks.values():
            for where, offset in clock.out.items():
                starts[where] = min(offset, starts.get(where, offset))
        return starts

    # --- health and queries --------------------------------------------------------------------

    def owned(self) -> set[int]:
        """The partitions Faust assigned this worker (of the ticks topic, co-partitioned with the inputs)."""
        ticks = self.settings.topic(TICKS)
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == ticks}

    def unstarted(self, p: int) -> list[TP]:
        """Return the input partitions of `p` that have records to read but none read yet, while
        `p` has no watermark: until each has given a record the watermark cannot start, and what
        came before it would be applied with no day ever closing (the reader waits for them)."""
        clock = self.clocks.get(p)
        if clock is None or clock.watermark_ms is not None:
            return []
        out = []
        for tp, base in self._input_tps(p):
            end = self.source.end(tp)
            if base not in clock.offsets and end is not None and end > self.source.start(tp):
                out.append(tp)
        return out

    @property
    def loaded(self) -> bool:
        """Whether the state of the current assignment is loaded."""
        return bool(self.generation == self.app.consumer_generation_id)

    def next_offsets(self, partitions: set[int]) -> dict[TP, int]:
        """Return, per input partition of `partitions`, the next offset the state needs."""
        out: dict[TP, int] = {}
        for p in partitions:
            clock = self.clocks.get(p) or PartitionClock()
            for tp, base in self._input_tps(p):
                out[tp] = self._next_offset(base, clock)
        return out

    def crowded(self) -> set[TP]:
        """Return the input partitions to pause until their partitions' parked records shrink: the
        topics ahead of the watermark of a partition whose parked records pass PARKED_BYTES, while
        a topic behind it still has records to read (it alone can move the watermark on)."""
        out: set[TP] = set()
        for p, clock in self._owned_clocks():
            parked = clock.parked
            if len(parked) < 64 or sum(len(e[3]) for e in parked) <= PARKED_BYTES:
                continue
            watermark = clock.watermark_ms
            ahead, behind = [], False
            for tp, base in self._input_tps(p):
                latest = clock.max_ts.get(base)
                if watermark is not None and latest is not None and latest > watermark:
                    ahead.append(tp)
                elif self._more(tp, base, clock):
                    behind = True
            if behind:
                out.update(ahead)
        return out

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Say whether the worker has loaded its state, is consuming, and can reach Redis."""
        app = self.app
        recovered = self.loaded
        consuming = bool(getattr(self.source, "consuming", False) and not app.rebalancing)
        degraded = bool(self.tasks is not None and self.tasks.degraded)
        broker = bool(getattr(self.source, "broker_ok", True))
        ok = recovered and consuming and not degraded and broker
        status = "ok" if ok else ("degraded" if degraded or not broker else "starting")
        return ok, {
            "status": status, "recovered": recovered, "consuming": consuming, "redis": not degraded,
            "broker": broker,
            "partitions": sorted(self.owned()) if consuming else [],
        }

    def update_lag(self) -> None:
        """Publish consumer lag per input topic and owned partition."""
        lags: dict[tuple[str, int], int] = {}
        for p, clock in self._owned_clocks():
            for tp, base in self._input_tps(p):
                high = self._end(tp)
                if high is not None:
                    lags[(base, p)] = max(0, high - self._next_offset(base, clock))
        self.metrics.set_lags(lags)
        self.metrics.set_watermarks({p: clock.watermark_ms for p, clock in self._owned_clocks()
                                     if clock.watermark_ms is not None})

    def _owned_clocks(self) -> list[tuple[int, PartitionClock]]:
        # Between a rebalance and the next batch the cache still holds revoked partitions.
        owned = self.owned()
        return [(p, c) for p, c in self.clocks.items() if p in owned]

    @staticmethod
    def _next_offset(base: str, clock: PartitionClock) -> int:
        # The state's own offsets, never the committed ones: a partition it never read from
        # starts at 0, even when offsets were committed past records it lacks.
        return clock.offsets.get(base, -1) + 1

    def month(self) -> str | None:
        """Return the operator-local month of the newest watermark owned here (event time)."""
        marks = [c.watermark_ms for c in self.clocks.values() if c.watermark_ms is not None]
        return local_month(max(marks), self.tz) if marks else None

    async def update_kpis(self) -> None:
        """Publish the KPI gauges: this month's task completion (Redis) and the watched base."""
        month = self.month()
        if month is None or self.outcomes is None:
            return
        label = self.metrics.regions
        counts: dict[tuple[str, str, str], int] = {}
        for (light, region, brand), n in self.summary().items():
            key = (light, label(region), brand)
            counts[key] = counts.get(key, 0) + n
        tasks: dict[str, TaskCounts] = {}
        for region, c in (await self.outcomes.kpis(month)).items():
            before = tasks.get(label(region), TaskCounts(0, 0))
            tasks[label(region)] = TaskCounts(before.issued + c.issued, before.completed + c.completed)
        self.metrics.set_kpis({region: RegionKpis(*k) for region, k in region_kpis(
            tasks, counts).items()})  # type: ignore[arg-type]

    def summary(self) -> dict[tuple[str, str, str], int]:
        """Count watched subscribers by (light, region, brand) over the partitions owned now."""
        owned = self.owned()
        counts: dict[tuple[str, str, str], int] = {}
        for p, keys in self.watched.items():
            if p not in owned:
                continue  # revoked, until the next load
            for key in keys:
                s = self.states[key]
                if s.light is None:
                    continue
                k = (s.light, s.region or "unknown", s.brand or "unknown")
                counts[k] = counts.get(k, 0) + 1
        return counts

    def subscriber(self, msisdn: str) -> dict[str, Any] | None:
        """Describe one subscriber owned here, as GET /subscribers/{msisdn} returns it."""
        p = partition_of(msisdn.encode(), self.partitions)
        state = self.states.get(msisdn.encode())
        if state is None or p not in self.owned():
            return None
        clock = self.clocks.get(p)
        open_day = clock.open_day if clock and clock.open_day else None
        arpu, mou = state.window(open_day, self.rules.window_days) if open_day else (0, 0)
        c = state.contract
        return {
            "msisdn": msisdn, "light": state.light,
            "light_since": _iso(state.light_since_ms, self.tz),
            "arpu": arpu / 100, "mou": round(mou / 60, 2),
            "window": None if open_day is None else {
                "from": (open_day - timedelta(days=self.rules.window_days)).isoformat(),
                "to": (open_day - timedelta(days=1)).isoformat()},
            "reasons": [_reason(r) for r in state.reasons],
            "region": state.region, "brand": state.brand, "segment": state.segment,
            "photo": None if state.photo is None else {
                "month": state.photo.month, "arpu": state.photo.arpu_fen / 100,
                "mou": round(state.photo.mou_seconds / 60, 2)},
            "contract": None if c is None else {
                "starts_on": c.starts_on.isoformat() if c.starts_on else None, "ends_on": c.ends_on.isoformat(),
                "committed": c.committed_fen / 100,
                "spent": state.contract_spend(open_day or local_day(int(time.time() * 1000), self.tz)) / 100},
            "prepaid": state.prepaid,
            "balance": None if state.balance_fen is None else state.balance_fen / 100,
            "churned": state.churned,
            "port_out_request_open": state.port_out_open(
                clock.watermark_ms or 0, self.rules.port_out_request_open_days) if clock else False,
            "rule_set": self.rules.name,
            **self._risk_fields(msisdn.encode(), state, open_day),
        }

    # --- the cache -----------------------------------------------------------------------------

    def _adopt(self, p: int) -> PartitionClock:
        """Start partition `p` empty: a record of a partition no load covered (the backtest's)."""
        self.watched.setdefault(p, set())
        self.dated.setdefault(p, set())
        clock = self.clocks[p] = PartitionClock()
        return clock

    def load(self, owned: set[int], data: dict[bytes, bytes], generation: Any, *, started: float | None = None,
             last_write: int = 0) -> None:
        """Replace the state with what the changelog holds for partitions `owned` (after a rebalance).

        `started` is when reading the changelog began (time.monotonic), for the log line.
        """
        self.clocks.clear()
        self.states.clear()
        self.watched = {p: set() for p in owned}
        self.dated = {p: set() for p in owned}
        started = time.monotonic() if started is None else started
        changelog = self.changelog.topic if self.changelog is not None else "state-changelog"
        corrupt: list[tuple[int, bytes, bytes, str]] = []
        for key, value in data.items():
            if key.startswith(META_PREFIX):
                p = int(key[len(META_PREFIX):])
                if p in owned:
                    try:
                        self.clocks[p] = PartitionClock.from_bytes(value)
                    except Exception as exc:
                        corrupt.append((p, key, value, type(exc).__name__))
                continue
            if key.startswith(b"~"):
                continue  # the changelog's own markers, never a subscriber
            p = partition_of(key, self.partitions)
            if p not in owned:
                continue
            try:
                state = decode_state(value)
            except Exception as exc:
                corrupt.append((p, key, value, type(exc).__name__))
                continue
            self.states[key] = state
            self._index(p, key, state)
        out: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]], str]] = []
        lost_clocks: set[int] = set()
        for p, key, value, error in corrupt:
            # Skipped, so that the rest of the partition loads (issue 13): dead-lettered with the
            # next batch, and overwritten in the changelog by the next state write.
            source = f"{changelog}/{p}"
            out.append((DEADLETTER, key, value, [("error", b"corrupt_state"), ("source", source.encode()),
                                                 ("exception", error.encode())], deadletter_id(source, key)))
            self._dead.append((STATE, "corrupt_state"))
            if key.startswith(META_PREFIX):
                lost_clocks.add(p)
                log.error("the clock record of partition %d in %s cannot be read (%s): the partition's state is "
                          "rebuilt from its input topics, from their first offsets", p, changelog, error)
            else:
                log.error("the state of subscriber %s in %s/%d cannot be read (%s): it starts empty", mask(
                    key.decode("utf-8", "replace")), changelog, p, error)
        dropped: list[tuple[int, bytes]] = []
        for p in lost_clocks:
            # The states' offsets are gone with the clock: what the inputs still hold is read again.
            for key in [k for k in self.states if partition_of(k, self.partitions) == p]:
                del self.states[key]
                dropped.append((p, key))
            self.watched[p], self.dated[p] = set(), set()
        for p in owned:
            self.clocks.setdefault(p, PartitionClock())
        # Past every write the changelog holds, a rolled-back one's too: a number is never reused.
        self._write_no = max([self._write_no, last_write, *(clock.write for clock in self.clocks.values())])
        self._rewinds.clear()
        # A day close that waited for its records to age (FRESH_MS) is not in the changelog: every
        # partition is looked at again at once, with what the loaded clocks say.
        self._deferred = {p: 0 for p in owned}
        self._suspected = {p: time.monotonic() for p, clock in self.clocks.items() if clock.suspect is not None}
        # What the memory held before is gone, written or not: the inputs are read again from here.
        self._dirty.clear()
        self._dirty_clocks.clear()
        self._due.clear()
        self._mornings.clear()  # the next pass re-delivers what a crash may have left in the outboxes
        self._mornings_due.clear()
        self._unreleased.clear()
        self._registered = False
        self._arpu.clear()
        self._acks.clear()
        self._out[:] = out
        self._outcomes_due.clear()
        for p, key in [*((p, key) for p, key, _, _ in corrupt if not key.startswith(META_PREFIX)), *dropped]:
            self._touch(p, key)  # without a state by the next write: a tombstone replaces the record
        self._dirty_clocks.update(lost_clocks)
        self._settled = True
        self.generation = generation
        log.info("loaded %d subscribers of partitions %s in %.2f s", len(self.states), sorted(owned),
                 time.monotonic() - started)

    def _index(self, p: int, key: bytes, state: SubscriberState) -> None:
        (self.watched[p].add if state.photo is not None else self.watched[p].discard)(key)
        # Profiled subscribers a day opening can be due to (a contract stage, a birthday).
        dated = state.has_profile and (state.contract is not None or state.birthday is not None)
        (self.dated[p].add if dated else self.dated[p].discard)(key)

    def _touch(self, p: int, key: bytes) -> None:
        keys = self._dirty.get(p)
        if keys is None:
            keys = self._dirty[p] = set()
        keys.add(key)

    def _count(self) -> None:
        for (base, outcome), n in self._counts.items():
            self.metrics.event(base, outcome, n)  # type: ignore[arg-type]
        self._counts.clear()
        for base, error in self._dead:
            self.metrics.deadletter(base, error)
        self._dead.clear()

    # --- the batch -----------------------------------------------------------------------------

    async def process(self, records: list[Any], *, ended: set[int] | None = None) -> None:
        """Handle one batch of records (topic, partition, offset, key, value, timestamp, headers);
        `ended`: partitions one of whose topics the source has just read to its end."""
        self._highwater.clear()
        self._pend.clear()
        self._now_ms = int(time.time() * 1000)
        self._settled = False
        if self._rewinds:
            await self._repeat_seeks()
        try:
            await self._recheck(ended)
            await self._records(records)
            self._record_ms = None
            await self._commit()
        except BaseException:
            # The batch is read again: its events count when it goes through, once.
            self._counts.clear()
            self._dead.clear()
            self._out.clear()
            self._outcomes_due.clear()
            raise
        # Counted once the batch's tasks and outputs are out: whoever waits for a count (a test,
        # the benchmark) then sees their effects too.
        self._count()
        if self._rewinds:
            await self._repeat_seeks()

    async def _records(self, records: list[Any]) -> None:
        rewinds = self._rewinds
        for msg in records:
            base = self.base_topic.get(msg.topic)
            p = msg.partition
            if base is None or base == TICKS:
                continue
            clock = self.clocks.get(p)
            if clock is None:
                # A partition no load covered: the backtest's, whose records are all there is.
                clock = self._adopt(p)
            tp = msg.tp
            offset = msg.offset
            # The next record the state needs, or the slow path (a re-delivery, a gap, a re-read).
            if (offset != clock.offsets.get(base, -1) + 1 or tp in rewinds) and not await self._in_sequence(
                    tp, base, offset, clock):
                continue
            clock.offsets[base] = offset
            self._dirty_clocks.add(p)
            try:
                stamp = msg.timestamp
                self._record_ms = None if stamp is None else int(stamp * 1000)
                result = decode(base, msg.key, msg.value, self._future_reference(clock))
                if type(result) is Usage and clock.suspect is None and (
                        result.ts_ms <= clock.max_ts.get(USAGE, result.ts_ms) + OUTLIER_MS):
                    # The bulk of the traffic, without a coroutine: nothing in it waits.
                    moved = clock.observe(base, result.ts_ms)
                    if self._moves(p, clock, base, tp, moved) and self._watermark(p, clock):
                        await self._advance(p, clock)
                    self._apply_usage(p, result, msg.key, clock)
                else:
                    await self._record(p, clock, base, tp, msg, result)
            except Exception as exc:
                # The record is valid, yet applying it (or what it released) raised: it goes to
                # the dead letters on its own and the partition goes on (issue 13).
                self._failed(base, msg.key, msg.value, _headers(msg.headers), _source(msg), exc)

    async def _record(self, p: int, clock: PartitionClock, base: str, tp: TP, msg: Any,
                      result: Event | Rejection) -> None:
        """Take one decoded record other than the usual usage event (which `_records` takes inline)."""
        if type(result) is Usage:
            if not await self._suspect(p, clock, tp, msg, result.ts_ms):
                return
            moved = clock.observe(base, result.ts_ms)
            if self._moves(p, clock, base, tp, moved) and self._watermark(p, clock):
                await self._advance(p, clock)
            self._apply_usage(p, result, msg.key, clock)
            return
        if isinstance(result, Rejection):
            self._reject(base, msg, result)
            if self._moves(p, clock, base, tp, False) and self._watermark(p, clock):
                await self._advance(p, clock)
            return
        ts = event_time_ms(result)
        moved = ts is not None and base != PROFILES and clock.observe(base, ts)
        moves = self._moves(p, clock, base, tp, moved)
        if moves and self._watermark(p, clock):
            await self._advance(p, clock)
        if ts is not None and base in ORDERED and (clock.watermark_ms is None or ts > clock.watermark_ms) and (
                base != PROFILES or clock.open_day is not None):
            # Ahead of the watermark: applied in event-time order once the watermark passes it.
            # Profiles read before any day opened (a deployment's first load) are the state the
            # data starts from: applied at once.
            clock.park((ts, _kafka_ms(msg) or -1, msg.key.decode(), msg.value.decode(), base, _source(msg), 0))
            return
        # A profile deletion has no value (and no time: it is applied at once).
        raw = "" if msg.value is None else msg.value.decode()
        await self._take(p, clock, base, result, msg.key, _kafka_ms(msg), _source(msg), raw)

    async def _suspect(self, p: int, clock: PartitionClock, tp: TP, msg: Any, ts_ms: int) -> bool:
        """Hold a usage record far ahead of the partition's latest usage time, or judge the one
        held by this next one; say whether the record `msg` goes on to be applied now.

        One wrong timestamp must not close weeks of days in a catch-up, and a real gap in the
        data must not lose its first record: the record after it says which it was.
        """
        held = clock.suspect
        latest = clock.max_ts.get(USAGE, ts_ms)
        if held is not None:
            clock.suspect = None
            self._suspected.pop(p, None)
            if ts_ms > latest + OUTLIER_MS:
                await self._release_suspect(p, clock, tp, held)  # time moved: it was the data's
            else:
                self._too_far(held)
            latest = clock.max_ts.get(USAGE, ts_ms)
        if ts_ms > latest + OUTLIER_MS:
            clock.suspect = (ts_ms, _kafka_ms(msg) or -1, msg.key.decode(), msg.value.decode(), USAGE, _source(msg), 0)
            self._suspected[p] = time.monotonic()
            return False
        return True

    async def _release_suspect(self, p: int, clock: PartitionClock, tp: TP, held: Parked) -> None:
        """Apply a held usage record as if read now."""
        _, kafka_ts, key, value, base, source, _ = held
        event = decode(base, key.encode(), value.encode())
        if type(event) is not Usage:
            return
        moved = clock.observe(base, event.ts_ms)
        if self._moves(p, clock, base, tp, moved) and self._watermark(p, clock):
            await self._advance(p, clock)
        self._apply_usage(p, event, key.encode(), clock)

    def _too_far(self, held: Parked) -> None:
        """Dead-letter a held usage record that the records after it did not confirm."""
        _, _, key, value, base, source, _ = held
        self._dead_letter(base, key.encode(), value.encode(), [], source, "too_far_ahead")
        DEADLETTER_LOG.warning("too_far_ahead", "dead-lettered %s: too_far_ahead (more than a day past the "
                               "partition's usage, and the records after it did not follow)", source)

    async def _judge_suspects(self, now_ms: int) -> None:
        """Judge usage records held for SUSPECT_WAIT_S with no usage record after them: by the wall clock."""
        for p, since in list(self._suspected.items()):
            clock = self.clocks.get(p)
            if clock is None or clock.suspect is None:
                self._suspected.pop(p, None)
                continue
            if time.monotonic() - since < SUSPECT_WAIT_S:
                continue
            held, clock.suspect = clock.suspect, None
            del self._suspected[p]
            self._dirty_clocks.add(p)
            if abs(held[0] - now_ms) <= OUTLIER_MS:
                tp = TP(self.settings.topic(USAGE), p)
                self._pend[p] = self._pending(p, clock)
                await self._release_suspect(p, clock, tp, held)  # live data after a gap
            else:
                self._too_far(held)

    async def _take(self, p: int, clock: PartitionClock, base: str, event: Event, key: bytes,
                    kafka_ts: int | None, source: str, raw: str, *, waited: bool = False) -> None:
        """Apply `event` now, unless it is a billing event of a subscriber without a profile yet.

        Whether a balance crossing is a prepaid subscriber's, and whether revenue counts against
        a contract, depend on the profile, which another topic brings, maybe later than the
        event: such an event waits for the profile up to PROFILE_WAIT_MS of event time (not the
        high watermark of the profiles topic, which a broker may under-report), then is applied
        with what is known.
        """
        if type(event) is Billing and not waited and not self._has_profile(key):
            clock.park((event.ts_ms + PROFILE_WAIT_MS, kafka_ts or -1, key.decode(), raw, BILLING, source, 1))
            self._dirty_clocks.add(p)
            return
        await self._apply(p, base, event, key, kafka_ts)
        if base == PROFILES and clock.parked:
            # Billing events that waited for this profile are applied now, oldest first.
            text = key.decode()
            waiting = [e for e in clock.parked if e[6] and e[2] == text]
            if waiting:
                clock.parked = [e for e in clock.parked if not (e[6] and e[2] == text)]
                for entry in sorted(waiting, key=lambda e: e[0] - PROFILE_WAIT_MS):
                    await self._release(p, clock, entry)

    async def tick(self, now_ms: int) -> None:
        """Close days by the wall clock on idle, live partitions (CONTRACT §7), between two batches."""
        self._highwater.clear()
        self._pend.clear()
        self._settled = False
        await self._judge_suspects(now_ms)
        for p, clock in self._owned_clocks():
            await self._tick(p, clock, now_ms)
        self._waited_for()
        await self._commit()
        self._count()

    async def idle(self, *, ended: set[int] | None = None) -> None:
        """Between batches with no record: close the days that waited for records to age or for a
        topic to be read to its end (`ended` partitions); write the state when it is due."""
        self._now_ms = int(time.time() * 1000)
        if not ended and not any(self._now_ms >= kafka_ms + FRESH_MS for kafka_ms in self._deferred.values()):
            await self.write_if_due()
            return
        self._highwater.clear()
        self._pend.clear()
        self._settled = False
        await self._recheck(ended)
        await self._commit()
        self._count()

    async def _recheck(self, ended: set[int] | None = None) -> None:
        """Recompute the watermark of partitions whose day close waited until their records aged,
        and of the `ended` ones."""
        if ended:
            owned = self.owned()
            for p in ended:
                clock = self.clocks.get(p)
                if clock is None or p not in owned or p in self._deferred:
                    continue
                self._pend[p] = self._pending(p, clock)
                if self._watermark(p, clock):
                    await self._advance(p, clock)
        caught_up = bool(getattr(self.source, "caught_up", True))
        for p, kafka_ms in list(self._deferred.items()):
            if self._now_ms < kafka_ms + FRESH_MS:
                continue
            if kafka_ms == 0 and not caught_up:
                # Looked at again after a load: only once the reader has taken everything fetched
                # (a broker may report a partition's end short of it, and the records still to
                # come would pass for read); records that come meanwhile close days as usual.
                continue
            del self._deferred[p]
            clock = self.clocks.get(p)
            if clock is None:
                continue
            self._pend[p] = self._pending(p, clock)
            if self._watermark(p, clock):
                await self._advance(p, clock)

    async def _in_sequence(self, tp: TP, base: str, offset: int, clock: PartitionClock) -> bool:
        """Say whether the record at `offset` is the next one the state needs; read again if not.

        The state's applied offsets are the truth, not the consumer's: the reader starts where
        the state says, and a gap after that (records deleted by retention, a transaction's
        control records, a consumer that skipped) is read again from the state's next offset.
        Records fetched before that seek took effect have offsets past the gap's and are passed
        over; the re-read is taken from the state's next offset on, or from where two re-reads in
        a row start (the records before it do not exist). The compacted profiles topic has gaps
        by design and is exempt from the check.
        """
        # A partition the state never read from starts at 0.
        last = clock.offsets.get(base, -1)
        if offset <= last:
            return False  # re-delivered after a crash, or read again: its effects are in the state
        self._pend.pop(tp.partition, None)  # a re-read starting or ending changes what is pending
        rewind = self._rewinds.get(tp)
        if rewind is not None:
            if offset == last + 1:
                del self._rewinds[tp]
                return True
            if offset <= rewind.gap_at and offset == rewind.first:
                # The re-read starts here twice: the records before it do not exist (deleted or
                # compacted away, or the control records of a transaction).
                del self._rewinds[tp]
                return True
            if offset <= rewind.gap_at:
                rewind.first = offset  # a re-read that did not start at the state's offset: read again
            rewind.stale = True
            return False
        if offset == last + 1 or base == PROFILES:
            return True
        log.warning("%s/%d: the state has applied offset %d, the consumer delivered %d: reading again from %d",
                    tp.topic, tp.partition, last, offset, last + 1)
        self.metrics.rewind(base)
        await self._seek(tp, self._rewinds.setdefault(tp, Rewind(offset, last + 1)))
        return False

    async def _seek(self, tp: TP, rewind: Rewind) -> None:
        # Repeated after each batch that passed stale records over, until the re-read arrives.
        if rewind.seeks >= MAX_SEEKS:
            # The records between the state's offset and the gap are gone (deleted by retention):
            # take what comes next rather than read again for ever.
            log.error("%s/%d: %d reads from offset %d brought nothing before offset %d; going on without them",
                      tp.topic, tp.partition, rewind.seeks, rewind.seek_to, rewind.gap_at + 1)
            self._rewinds.pop(tp, None)
            return
        rewind.stale = False
        rewind.seeks += 1
        await self.source.seek(tp, rewind.seek_to)

    async def _repeat_seeks(self) -> None:
        for tp, rewind in list(self._rewinds.items()):
            if rewind.stale:
                await self._seek(tp, rewind)

    async def _commit(self) -> None:
        """Send the batch's outputs, record its outcomes, decide its tasks and wait for the broker;
        write the state when it is due."""
        await self._send_outputs()
        if self._outcomes_due:
            assert self.outcomes is not None
            due, self._outcomes_due = self._outcomes_due, []
            for outcome in due:
                self.metrics.outcome(await self.outcomes.record_outcome(outcome))
        await self._run_tasks()
        await self._send_outputs()  # the dead letters of tasks that failed
        if self._acks:
            await asyncio.gather(*self._acks)
            self._acks.clear()
            self.faults.reached("outputs_acked")
        self._settled = True
        await self.write_if_due()

    async def write_if_due(self) -> None:
        """Write the state when its interval is up or many subscribers wait (also between batches)."""
        if not self._dirty and not self._dirty_clocks:
            return
        dirty = sum(len(keys) for keys in self._dirty.values())
        if dirty >= MAX_DIRTY or time.monotonic() - self._written_at >= self.settings.commit_interval_s:
            await self.write_state(wait=False)

    async def write_state(self, *, wait: bool = True) -> bool:
        """Write every subscriber touched since the last write, once, and the partitions' clocks.

        Each partition's clock record goes after its states, to the same changelog partition,
        so a recovered clock never claims offsets whose states were not written. Returns False,
        writing nothing, when the last batch did not end (failed or given up): its effects in
        memory are partial, and the inputs are read again from the state already written.

        With `wait` False the batches go on while the broker acknowledges the records (two
        round trips, the second for the seal), and the next write waits for that first. Before
        partitions are let go and at the stop the write waits.
        """
        # One write in flight at a time: a write's seal stays the last batch of its partitions.
        await self.flushed()
        if not self._settled:
            return False
        self._written_at = time.monotonic()
        changelog = self.changelog
        half = (sum(len(keys) for keys in self._dirty.values()) + len(self._dirty_clocks)) // 2
        written = 0
        self._write_no += 1
        number = self._write_no
        for p in set(self._dirty) | self._dirty_clocks:
            for key in self._dirty.get(p, ()):
                state = self.states.get(key)
                value = None if state is None or state.is_empty() else encode_state(state)
                if value is None:
                    self.states.pop(key, None)
                if changelog is not None:
                    changelog.write(p, key, value, number)
                    written += 1
                    if written == half and self.faults.point == "state_half_written":
                        changelog.producer.flush(30.0)
                        self.faults.reached("state_half_written")
            if changelog is not None and p in self.clocks:
                clock = self.clocks[p]
                # Every output so far is acknowledged (the batches' commits waited for them): what
                # the records after this state produce lands past these offsets.
                clock.out.update(self.output_ends)
                clock.write = number
                # Last, and always: the clock record closes this write of the partition (a write
                # without it is rolled back at recovery, streams.recovery).
                changelog.write(p, META_PREFIX + str(p).encode(), clock.to_bytes(), number)
        self._dirty.clear()
        self._dirty_clocks.clear()
        if changelog is not None:
            self._flushing = asyncio.ensure_future(changelog.flush())
            if wait:
                await self.flushed()
        return True

    async def flushed(self) -> None:
        """Return once the broker has every state written so far (raises what the wait raised)."""
        flushing, self._flushing = self._flushing, None
        if flushing is not None:
            await flushing
            self.faults.reached("state_written")

    def _pending(self, partition: int, clock: PartitionClock) -> dict[str, bool]:
        """Say, per input topic of `partition`, whether records are left to read."""
        return {base: self._more(tp, base, clock) for tp, base in self._input_tps(partition)}

    def _more(self, tp: TP, base: str, clock: PartitionClock) -> bool:
        """Say whether input partition `tp` (of topic `base`) has records left to read."""
        # A partition being read again holds the watermark, whatever its high watermark says; so
        # does one the source has not read to its end since it was assigned or sought (a high
        # watermark may be short of the end).
        high = self._high(tp)
        offset = self._next_offset(base, clock)
        return tp in self._rewinds or (high is not None and high > offset) or not self.source.at_end(tp, offset)

    def _input_tps(self, partition: int) -> list[tuple[TP, str]]:
        tps = self._tps.get(partition)
        if tps is None:
            tps = self._tps[partition] = [(TP(full, partition), base) for full, base in self.base_topic.items()
                                          if base != TICKS]
        return tps

    def _high(self, tp: TP) -> int | None:
        if tp in self._highwater:
            return self._highwater[tp]
        high = self._highwater[tp] = self._end(tp)
        return high

    def _end(self, tp: TP) -> int | None:
        """Return how far the source knows `tp` to go (streams.reader.Reader.end).

        A caught-up topic must not be taken for one, or the watermark would run ahead of the
        records still to read.
        """
        return self.source.end(tp)  # type: ignore[no-any-return]

    def _future_reference(self, clock: PartitionClock) -> int:
        # CONTRACT §1 rejects times more than 1 day ahead of the partition's watermark. During a
        # replay the watermark lags the wall clock by months, and the consumer may read one topic
        # far ahead of another, so valid events would be rejected; the wall clock (as the batch
        # began) bounds it there.
        now_ms = self._now_ms
        watermark = clock.watermark_ms
        return now_ms if watermark is None or watermark < now_ms else watermark

    def _has_profile(self, key: bytes) -> bool:
        state = self.states.get(key)
        return state is not None and state.has_profile

    def _moves(self, p: int, clock: PartitionClock, base: str, tp: TP, moved: bool) -> bool:
        """Note whether `base` has records left after the record just read at `tp`, whose time
        `moved` the topic's latest or not; say whether the watermark needs recomputing (`_watermark`)."""
        pending = self._pend.get(p)
        if pending is None:
            self._pend[p] = self._pending(p, clock)
            return True
        more = self._more(tp, base, clock)
        if more == pending.get(base) and not moved:
            return False  # neither the topic's time nor whether it has records left changed
        pending[base] = more
        return True

    def _watermark(self, p: int, clock: PartitionClock) -> bool:
        """Recompute the watermark of partition `p` (after `_moves` said so); say whether anything
        waits for it: days to close, parked records now due."""
        pending = self._pend[p]
        before = clock.watermark_ms
        watermark = clock.advance(pending)
        fresh = self._record_ms
        if (fresh is not None and watermark is not None and clock.open_day is not None
                and fresh > self._now_ms - FRESH_MS and local_day(watermark, self.tz) > clock.open_day):
            # A day would close on a record just produced: it waits until the record has aged, so
            # that every topic's fetch has brought what was produced before it (_recheck).
            cap = day_start_ms(clock.open_day + timedelta(days=1), self.tz) - 1
            if watermark > cap:
                clock.watermark_ms = watermark = cap if before is None else max(cap, before)
                # The first record that waited: under live traffic the newest is always fresh.
                self._deferred.setdefault(p, fresh)
        if watermark != before:
            self._dirty_clocks.add(p)
        if watermark is None:
            return False
        # Usually none of it: the watermark moves with nearly every usage event, a day once a day.
        open_day = clock.open_day
        return (open_day is None or (clock.first_day is None and clock.first_ts is not None)
                or local_day(watermark, self.tz) > open_day or bool(clock.parked and clock.parked[0][0] <= watermark)
                or (self._capacity and watermark >= self._mornings.get(p, watermark)))

    async def _advance(self, p: int, clock: PartitionClock) -> None:
        """Release what waited for the watermark of partition `p` (after `_watermark` said so):
        the days it passes, with the parked records due before each, then those due up to it."""
        watermark = clock.watermark_ms
        if watermark is None:
            return
        await self._close_days(p, clock, local_day(watermark, self.tz))
        await self._unpark(p, clock, watermark)

    async def _unpark(self, p: int, clock: PartitionClock, until_ms: int, *, before: bool = False) -> None:
        """Apply parked records due up to `until_ms` (or before it), oldest first."""
        while clock.parked and (clock.parked[0][0] < until_ms if before else clock.parked[0][0] <= until_ms):
            if self._capacity:
                self._pass_mornings(p, clock.parked[0][0], inclusive=True)
            entry = clock.parked.pop(0)
            self._dirty_clocks.add(p)
            await self._release(p, clock, entry)
        if self._capacity:
            self._pass_mornings(p, until_ms, inclusive=not before)

    def _pass_mornings(self, p: int, until_ms: int, *, inclusive: bool) -> None:
        """Place the capacity releases of the 08:00s that partition `p`'s event time passes up to
        `until_ms` among the batch's tasks (sinks.tasks.TaskSink.morning).

        Event time drives them, as it closes days, so a replay releases where the live run did.
        After a load the latest 08:00 already passed is passed again: its release is done (a
        no-op then), and what it gave the partition is delivered if a crash interrupted that.
        """
        upcoming = self._mornings.get(p)
        if upcoming is None:
            day = capacity_rules.last_release_day(until_ms, self.tz)
            self._mornings_due.append((len(self._due), p, day))
            self._mornings[p] = capacity_rules.release_ms(day + timedelta(days=1), self.tz)
            return
        while until_ms > upcoming or (inclusive and until_ms == upcoming):
            day = local_day(upcoming, self.tz)
            self._mornings_due.append((len(self._due), p, day))
            upcoming = capacity_rules.release_ms(day + timedelta(days=1), self.tz)
        self._mornings[p] = upcoming

    async def _release(self, p: int, clock: PartitionClock, entry: Parked) -> None:
        """Apply one parked record; one that raises is dead-lettered on its own."""
        _, kafka_ts, text, value, base, source, waited = entry
        key, raw = text.encode(), value.encode()
        try:
            event = decode(base, key, raw)
            if not isinstance(event, Rejection):
                await self._take(p, clock, base, event, key, None if kafka_ts < 0 else kafka_ts, source, value,
                                 waited=bool(waited))
        except Exception as exc:
            self._failed(base, key, raw, [], source, exc)

    def _waited_for(self) -> None:
        """Log, once, an input partition the watermark has waited for over WAIT_LOG_S while the
        reader had nothing more to take: its partition's days do not close (nor do its lights and
        day-close tasks come) until it is read to its end, and nothing else would say why."""
        now = time.monotonic()
        waiting: dict[TP, float] = {}
        if getattr(self.source, "caught_up", False):
            for p, clock in self._owned_clocks():
                for tp, base in self._input_tps(p):
                    if base != PROFILES and self._more(tp, base, clock):
                        waiting[tp] = self._waiting.get(tp, now)
        self._waiting = waiting
        self._waiting_logged &= waiting.keys()
        for tp, since in waiting.items():
            if now - since >= WAIT_LOG_S and tp not in self._waiting_logged:
                self._waiting_logged.add(tp)
                base = self.base_topic[tp.topic]
                clock = self.clocks[tp.partition]
                log.warning("%s/%d holds partition %d's event time for %.0f s with nothing more to read: the "
                            "state's next offset %d, high watermark %s, delivered to %s, end seen %s, read again %s",
                            tp.topic, tp.partition, tp.partition, now - since, self._next_offset(base, clock),
                            self._high(tp), getattr(self.source, "delivered", {}).get(tp),
                            tp in getattr(self.source, "eof", ()), tp in self._rewinds)

    async def _tick(self, p: int, clock: PartitionClock, now_ms: int) -> None:
        """Close days by the wall clock on an idle, live partition (CONTRACT §7)."""
        if clock.watermark_ms is None:
            return
        pending = self._pending(p, clock)
        if any(pending.values()) or clock.watermark_ms < now_ms - HOUR_MS:
            return  # busy, or replaying older data: event time alone closes days
        await self._close_days(p, clock, local_day(now_ms, self.tz))
        # Live and idle: what was parked until now is due by the wall clock too.
        await self._unpark(p, clock, now_ms)

    async def _close_days(self, p: int, clock: PartitionClock, today: date) -> None:
        if clock.first_day is None and clock.first_ts is not None:
            # The partition's first day is that of its first usage or billing event, whatever held
            # the watermark before it: profiles read alongside or before any usage existed, whose
            # times can be years old. No window is judged before it (lights.judged).
            clock.first_day = local_day(clock.first_ts, self.tz)
            self._dirty_clocks.add(p)
        if clock.open_day is None:
            # Days open from the first day, or from the watermark's when that is earlier: in a
            # replay burst the first usage event read may be ahead of the watermark, and the days
            # from there on close now, as they would have one by one.
            clock.open_day = today if clock.first_day is None else min(today, clock.first_day)
            self._dirty_clocks.add(p)
            if clock.open_day == today:
                return
        while clock.open_day < today:
            day = clock.open_day + timedelta(days=1)
            at_ms = day_start_ms(day, self.tz)
            await self._unpark(p, clock, at_ms, before=True)
            clock.open_day = day
            self._dirty_clocks.add(p)
            # The closing day's light evaluations come before the opening day's triggers. Until the
            # window is whole most subscribers are steady (a replay's first month judges nobody).
            whole = lights.judged(day, clock.first_day, self.rules.window_days)
            states = self.states
            # With a model, the whole close is judged first and scored after (the model learned
            # the lights of the close), then its changes go out with their scores.
            scorer = self.scorer if whole else None
            changes: list[tuple[bytes, SubscriberState, LightChange]] = []
            for key in sorted(self.watched.get(p, ())):
                state = states[key]
                if whole or not lights.steady_before_window(state):
                    if scorer is None:
                        await self._evaluate(p, key, state, at_ms, clock, trigger_ts=None)
                    else:
                        change = self._judge(p, key, state, at_ms, clock)
                        if change is not None:
                            changes.append((key, state, change))
            try:
                if scorer is not None:
                    await self._score(p, day, changes)
                for key in sorted(self.dated.get(p, ())):
                    self._day_open(p, key, self.states[key], day, at_ms)
            finally:
                if scorer is not None:
                    scorer.forget()  # what is shown from now on is computed from the features then

    async def _evaluate(self, p: int, key: bytes, state: SubscriberState, at_ms: int, clock: PartitionClock,
                        trigger_ts: int | None) -> None:
        change = self._judge(p, key, state, at_ms, clock)
        if change is not None:
            await self._changed(key, state, change, trigger_ts)

    def _judge(self, p: int, key: bytes, state: SubscriberState, at_ms: int,
               clock: PartitionClock) -> LightChange | None:
        """Judge the light of `state` at `at_ms` and move it; return the change, if any."""
        # Before the partition's first day opens, a lifecycle event is judged on its own day.
        open_day = clock.open_day or local_day(at_ms, self.tz)
        judgement = lights.evaluate(state, at_ms=at_ms, open_day=open_day, first_day=clock.first_day,
                                    rules=self.rules)
        if judgement is None:
            return None
        before = (state.light, state.reasons)
        change = lights.change(state, judgement, at_ms)
        if (state.light, state.reasons) != before:
            self._touch(p, key)
        return change

    async def _changed(self, key: bytes, state: SubscriberState, change: LightChange, trigger_ts: int | None) -> None:
        """Send a light change and decide its task."""
        await self._emit_light(key, state, change)
        if self.tasks is not None and lights.is_worsening(change.previous, change.light):
            terms = self._contract(state, local_day(change.at_ms, self.tz))
            for task in triggers.light_tasks(change, self._facts(key, state), terms, self.rules,
                                             self.tz):
                self._decide(task, state, trigger_ts)

    async def _score(self, p: int, day: date, changes: list[tuple[bytes, SubscriberState, LightChange]]) -> None:
        """Score the partition's watched subscribers at the close before `day` (streams.scoring), then
        send the close's light changes and decide its `risk` tasks, with their scores."""
        assert self.scorer is not None
        scored = self.scorer.close([(key, self.states[key]) for key in sorted(self.watched.get(p, ()))], day)
        threshold = None if self.tasks is None else self.rules.risk_task_threshold
        crossed = []
        for key, state, previous in scored:
            if state.risk_bp != previous:
                self._touch(p, key)
            if risk_crossed(previous, state.risk_bp or 0, threshold, state.light):
                crossed.append((key, state, previous))
        # The reasons of what is shown, in one batch: a millisecond a row, so never for all.
        self.scorer.explain([key for key, _, _ in changes] + [key for key, _, _ in crossed])
        for key, state, change in changes:
            await self._changed(key, state, change, None)
        for key, state, previous in crossed:
            assert state.risk_bp is not None
            for task in triggers.risk_tasks(self._facts(key, state), previous, state.risk_bp,
                                            self._contract(state, day), day, self.rules, self.tz):
                self._decide(task, state, None)

    def _risk_fields(self, key: bytes, state: SubscriberState, open_day: date | None) -> dict[str, Any]:
        """The `risk` and `risk_reasons` of a message about a scored subscriber; none without a model."""
        shown = None if self.scorer is None else self.scorer.shown(key, state, open_day)
        return {} if shown is None else {"risk": shown[0], "risk_reasons": risk_reasons_json(shown[1])}

    def _day_open(self, p: int, key: bytes, state: SubscriberState, day: date, at_ms: int) -> None:
        if self.tasks is None:
            return
        for keyed in triggers.day_open_tasks(self._facts(key, state), self._contract(state, day), day, state.used,
                                             self.rules, self.tz):
            self._decide(keyed.task, state, None)
            state.mark_used(keyed.key)
            self._touch(p, key)

    def _apply_usage(self, p: int, event: Usage, key: bytes, clock: PartitionClock) -> None:
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = SubscriberState()
        outcome = apply_usage(state, event, open_day=clock.open_day, tz=self.tz, window_days=self.rules.window_days)
        counted = (USAGE, outcome)
        self._counts[counted] = self._counts.get(counted, 0) + 1
        if outcome == "applied":
            self._touch(p, key)

    async def _apply(self, p: int, base: str, event: Event, key: bytes, kafka_ts: int | None) -> None:
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = SubscriberState()
        clock = self.clocks[p]
        lifecycle_before = (state.churned, state.churned_ms, state.port_out_request_ms, state.contract) if type(
            event) is Lifecycle else None
        applied = apply(state, event, open_day=clock.open_day, tz=self.tz, rules=self.rules)
        counted = (base, applied.outcome)
        self._counts[counted] = self._counts.get(counted, 0) + 1
        if applied.outcome != "applied":
            return
        self._touch(p, key)
        if isinstance(event, (Profile, ProfileDeleted)):
            self._index(p, key, state)
            return
        if isinstance(event, Outcome):
            if self.outcomes is not None:
                self._outcomes_due.append(event)  # recorded in Redis with the batch's commit
            return
        ts_ms = getattr(event, "ts_ms")
        if isinstance(event, Lifecycle):
            if event.type == "contract_signed":
                self._index(p, key, state)
            # A lifecycle event that changed nothing (a replayed one, say) is not judged at its old time.
            if (state.churned, state.churned_ms, state.port_out_request_ms, state.contract) != lifecycle_before:
                await self._evaluate(p, key, state, ts_ms, clock, trigger_ts=kafka_ts)
            if self.tasks is not None and state.has_profile:
                for task in triggers.lifecycle_tasks(event, self._facts(key, state), self.rules, self.tz):
                    self._decide(task, state, kafka_ts)
        elif isinstance(event, Billing) and self.tasks is not None and state.has_profile and state.prepaid:
            if applied.balance_crossed_below(self.rules.balance_low_below_fen):
                assert applied.balance_after_fen is not None
                for task in triggers.balance_low_tasks(self._facts(key, state), applied.balance_before_fen,
                                                       applied.balance_after_fen, ts_ms, self.rules, self.tz):
                    self._decide(task, state, kafka_ts)

    def _decide(self, task: Task, state: SubscriberState, trigger_ts: int | None) -> None:
        # The policy sees the state after the triggering event (CONTRACT §5): the port-out flag is
        # taken now; the decision itself runs with the batch's other tasks before its commit.
        port_out = state.port_out_open(task.created_at_ms, self.rules.port_out_request_open_days)
        if self.scorer is not None:
            shown = self.scorer.shown(task.msisdn.encode(), state, local_day(task.created_at_ms, self.tz))
            if shown is not None:
                task = replace(task, risk=shown[0], risk_reasons=shown[1])
        self._due.append((task, port_out, trigger_ts))
        if self._capacity and task.channel == "callcentre" and task.region in self.rules.capacity:
            clock = self.clocks.get(partition_of(task.msisdn.encode(), self.partitions))
            open_day = clock.open_day if clock is not None and clock.open_day else local_day(task.created_at_ms, self.tz)
            self._arpu[task.task_id] = state.window(open_day, self.rules.window_days)[0]

    async def _run_tasks(self) -> None:
        """Decide, publish and record the batch's tasks: one subscriber's in order, subscribers side by side.

        Each task waits on Redis and on the broker's acknowledgement of its message; a day close
        that decides thousands of tasks one after the other spent minutes waiting. A subscriber's
        tasks stay in order, since each one's contact is the next one's cooldown. With a call-centre
        capacity, the 08:00s the batch passed come between the tasks decided before and after them.
        """
        due, self._due = self._due, []
        mornings, self._mornings_due = self._mornings_due, []
        # The backtest's in-memory handler has no queue.
        morning = getattr(self.tasks, "morning", None)
        if morning is None or not (mornings or self._unreleased):
            await self._decide_all(due)
            self._arpu.clear()
            return
        if not self._registered:
            # Before any arrival: a partition read after the others must not be released without.
            await getattr(self.tasks, "register")({p for p in self.clocks if any(
                (self._end(tp) or 0) > 0 for tp, _ in self._input_tps(p))})
            self._registered = True
        # The tasks decided before each 08:00 passed, then its release, then the tasks after it.
        start = 0
        for at, p, day in mornings:
            await self._decide_all(due[start:at])
            start = at
            await self._morning(morning, p, day, arrived=False)
        await self._decide_all(due[start:])
        for p, day in list(self._unreleased.items()):
            await self._morning(morning, p, day, arrived=True)
        self._arpu.clear()

    async def _morning(self, morning: Callable[..., Awaitable[bool]], p: int, day: date, *, arrived: bool) -> None:
        """Pass `day`'s 08:00 for partition `p` (sinks.tasks.TaskSink.morning); remember it while
        its release waits for the other partitions."""
        try:
            released = await morning(p, day, arrived=arrived)
        except OUTAGES:
            raise  # the batch fails and is read again; arrivals, releases and deliveries are idempotent
        except Exception:
            # Not an outage: what is left in the outbox is delivered at the next 08:00 passed.
            log.exception("the capacity release of %s for partition %d failed", day.isoformat(), p)
            released = True
        if released:
            if self._unreleased.get(p) == day:
                del self._unreleased[p]
        else:
            self._unreleased[p] = day

    async def _decide_all(self, due: list[tuple[Task, bool, int | None]]) -> None:
        """Decide `due`: one subscriber's tasks in order, subscribers side by side."""
        if not due:
            return
        assert self.tasks is not None
        tasks = self.tasks
        by_subscriber: dict[str, list[tuple[Task, bool, int | None]]] = {}
        for item in due:
            by_subscriber.setdefault(item[0].msisdn, []).append(item)
        limit = asyncio.Semaphore(TASK_CONCURRENCY)

        async def run(items: list[tuple[Task, bool, int | None]]) -> None:
            async with limit:
                for task, port_out, trigger_ts in items:
                    try:
                        await tasks.handle(task, port_out_open=port_out, trigger_kafka_ts_ms=trigger_ts)
                    except OUTAGES:
                        raise  # the batch fails and is read again: nothing is decided unchecked
                    except Exception as exc:
                        # Not an outage: a task that cannot be decided goes to the dead letters on
                        # its own, and the batch goes on (it would fail the same way every time).
                        self._failed(TASK_TOPIC[task.channel], task.msisdn.encode(),
                                     orjson.dumps(task.to_message(self.tz)), [], f"task/{task.task_id}", exc,
                                     event=False)

        async with asyncio.TaskGroup() as group:
            for items in by_subscriber.values():
                group.create_task(run(items))

    def _facts(self, key: bytes, s: SubscriberState) -> SubscriberFacts:
        return SubscriberFacts(key.decode(), s.region or "unknown", s.brand or "unknown", s.segment,
                               s.activated_on, s.birthday, s.prepaid, s.light)

    @staticmethod
    def _contract(s: SubscriberState, day: date) -> ContractTerms | None:
        c = s.contract
        return None if c is None else ContractTerms(c.ends_on, c.committed_fen, s.contract_spend(day))

    # --- outputs -------------------------------------------------------------------------------

    async def _emit_light(self, key: bytes, state: SubscriberState, change: LightChange) -> None:
        msisdn = key.decode()
        at = _iso(change.at_ms, self.tz)
        message = {
            "msisdn": msisdn, "light": change.light, "previous": change.previous,
            "at": at,
            "arpu": round(change.arpu_fen / 100, 2), "mou": round(change.mou_seconds / 60, 2),
            "reasons": [_reason(r) for r in change.reasons],
            "region": state.region, "brand": state.brand, "rule_set": self.rules.name,
            **self._risk_fields(key, state, local_day(change.at_ms, self.tz)),
        }
        self._out.append((LIGHTS, key, orjson.dumps(message), [], light_id(msisdn, at, change.light)))
        self.metrics.light_change(change.previous or "green", change.light)
        log.info("light %s -> %s for %s", change.previous, change.light, mask(msisdn))

    def _dead_letter(self, base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                     source: str, error: str, *, exception: str | None = None, event: bool = True) -> None:
        """Queue one dead letter (CONTRACT §1: unchanged, `error` and `source` headers) and count it."""
        headers = [*headers, ("error", error.encode()), ("source", source.encode())]
        if exception is not None:
            headers.append(("exception", exception.encode()))
        self._out.append((DEADLETTER, key, value, headers, deadletter_id(source)))
        self._dead.append((base, error))
        if event:
            counted = (base, "rejected")
            self._counts[counted] = self._counts.get(counted, 0) + 1

    def _reject(self, base: str, msg: Any, rejection: Rejection) -> None:
        source = _source(msg)
        self._dead_letter(base, msg.key, msg.value, _headers(msg.headers), source, rejection.error)
        DEADLETTER_LOG.warning(rejection.error, "dead-lettered %s: %s (%s)", source, rejection.error,
                               rejection.detail)

    def _failed(self, base: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
                source: str, exc: Exception, *, event: bool = True) -> None:
        """Dead-letter a valid record whose processing raised (`processing_error`, the exception's type)."""
        self._dead_letter(base, key, value, headers, source, "processing_error", exception=type(exc).__name__,
                          event=event)
        # The exception's text may quote the record: its type and where it was raised only.
        DEADLETTER_LOG.warning("processing_error", "dead-lettered %s: processing_error (%s at %s)", source,
                               type(exc).__name__, _where(exc))

    async def _send_outputs(self) -> None:
        """Enqueue the batch's light changes and dead letters, except those already on their topics.

        After a crash the records since the last state write are processed again; what they
        produced before the crash was read back from the output topics at recovery (`published`),
        and is not sent twice.
        """
        out, self._out = self._out, []
        published = self.published
        for base, key, value, headers, identity in out:
            if identity in published:
                published.discard(identity)
                continue
            self._acks.append(await self.send(base, key, value, headers))


def _source(msg: Any) -> str:
    return f"{msg.topic}/{msg.partition}/{msg.offset}"


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "?" if tb is None else f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"


def _kafka_ms(msg: Any) -> int | None:
    # Records carry their Kafka timestamp in seconds.
    return None if msg.timestamp is None else int(msg.timestamp * 1000)


def _iso(ms: int | None, tz: Any) -> str | None:
    return None if ms is None else triggers.iso_time(ms, tz)


def _reason(r: Any) -> dict[str, Any]:
    return {"code": r.code, "value": r.value, "threshold": r.threshold}


def _headers(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return [(k, v) for k, v in headers]
