"""What the worker does with a batch of raw records: validate, sequence, watermark, apply, decide.

Thin glue: the rules of CONTRACT §5 are in rules/ (rules.schedule says what falls due, rules.day
what a close, an opening or an event brings, rules.state applies events); what leaves goes to
sinks/ (light changes, dead letters, tasks); the state lives in a `Store` and goes to the
changelog through the `Checkpoint`; offsets are kept in order by the `Sequencer`.

The module and its class are over the size guide (about 570 lines, the class about 490): the
usage event's path (`_records`, `_apply_usage`, `_watermark`) stays in one class, with no layer
between the record and the state, since it runs for nearly every record (the worker's throughput
is set there); the event-time paths around it share the batch's bookkeeping (offsets, counts, the
deferred closes); and the reader's interface (streams.runtime.ports.Batches) is answered here.
What is not on that path went out: closes and effects (handoff), suspects, progress, checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from faust.types import TP

from rules import day as rules_day
from rules.events import (
    BILLING, PROFILES, USAGE, Billing, Event, Lifecycle, Outcome, Profile, ProfileDeleted, Rejection,
    Usage, decode, event_time_ms,
)
from rules.ruleset import RuleSet
from rules.schedule import (
    DUE, FRESH_MS, HELD, MOVED, OUTLIER_MS, PROFILE_WAIT_MS, CloseDay, Morning, Mornings, Parked, PartitionClock,
    Release, due, is_ahead, start_days,
)
from rules.state import apply, apply_usage, local_day
from rules.localtime import HOUR_MS
from rules.tasks import Task
from sinks.deadletters import DeadLetterSink
from sinks.lights import LightSink
from sinks.outbox import Outbox, Send, task_identity
from sinks.outcomes import OutcomeStore
from streams.faults import NONE as NO_FAULTS, Faults
from streams.logs import DEADLETTER_LOG
from streams.metrics import Metrics
from streams.runtime.changelog import ChangelogWriter
from streams.runtime.checkpoint import Checkpoint
from streams.runtime.handoff import Handoff
from streams.runtime.ports import PRELOADED, Group, Headers, InputRecord, Source, TaskHandler
from streams.runtime.progress import Progress
from streams.runtime.sequencer import Sequencer
from streams.runtime.suspects import Suspects
from streams.runtime.tasks import TaskRunner
from streams.scoring import Scorer
from streams.settings import Settings
from streams.topics import DEADLETTER, LIGHTS, TICKS
from streams.runtime.store import Store

log = logging.getLogger(__name__)


class Processor:
    """Drive one worker's batches; the reader (streams.runtime.reader) is a thin loop around `process`."""

    def __init__(self, settings: Settings, metrics: Metrics, rules: RuleSet, *, group: Group, source: Source,
                 send: Send, changelog: ChangelogWriter | None = None, outcomes: OutcomeStore | None = None,
                 output_ends: dict[str, int] | None = None, faults: Faults = NO_FAULTS) -> None:
        self.settings = settings
        self.metrics = metrics
        self.rules = rules
        self.tz = settings.zone
        self.group = group
        self.outcomes = outcomes
        self.changelog = changelog
        self.store = Store(settings.partitions, settings.hot_states)
        self.outbox = Outbox(send)
        self.lights = LightSink(self.outbox, LIGHTS, rules.name, self.tz, metrics.light_change)
        self.dead = DeadLetterSink(self.outbox, DEADLETTER)
        self.checkpoint = Checkpoint(self.store, self.outbox, changelog, faults, settings.commit_interval_s,
                                     output_ends)
        self.sequencer = Sequencer(source, metrics)
        self.progress = Progress(settings, source, self.sequencer)
        self.suspects = Suspects(self)
        self.runner: TaskRunner | None = None
        # The rule set's risk model, loaded now (a file that cannot be used stops the start-up); None: no score.
        self.scorer = Scorer.of(rules, self.tz)
        # Events counted in the batch so far, by (topic, outcome): the metric is updated once a batch.
        self._counts: dict[tuple[str, str], int] = {}
        self.handoff = Handoff(settings, rules, self.store, self.lights, self.dead, self.scorer, self._counts)
        # The generation of the group whose assignment the state was loaded for.
        self.generation: int | None = None
        # The Kafka time (ms) of the record being processed; None between records (ticks, rechecks).
        self._record_ms: int | None = None
        # Partitions whose day close waits for records to age (FRESH_MS): partition -> Kafka ms.
        self._deferred: dict[int, int] = {}
        # Call-centre capacity (sinks.capacity), only when the rule set sets one: per partition,
        # the next 08:00 its event time passes (each is an arrival at the day's queues).
        self._capacity = bool(rules.capacity)
        self._mornings: dict[int, Mornings] = {}
        self._outcomes_due: list[Outcome] = []
        self._now_ms = int(time.time() * 1000)

    @property
    def source(self) -> Source:
        return self.progress.source

    def use_tasks(self, handler: TaskHandler) -> None:
        """Decide tasks with `handler` (without one, none are)."""
        self.runner = self.handoff.runner = TaskRunner(handler, self.handoff.task_failed)

    @property
    def tasks(self) -> TaskHandler | None:
        return None if self.runner is None else self.runner.handler

    # --- what the reader and the task sink ask -------------------------------------------------

    @property
    def published(self) -> set[str]:
        return self.outbox.published

    @published.setter
    def published(self, identities: set[str]) -> None:
        self.outbox.published = identities

    @property
    def output_ends(self) -> dict[str, int]:
        return self.checkpoint.output_ends

    def was_published(self, task_id: str) -> bool:
        """Say whether task `task_id` was found on its topic at recovery (a crash came between
        the broker's acknowledgement and the claim's `sent`)."""
        return task_identity(task_id) in self.outbox.published

    def decision_arpu(self, task: Task) -> int | None:
        """Return the 30-day ARPU (fen) of `task`'s subscriber when the task was decided (the
        capacity queue ranks by it; sinks.tasks.TaskSink's `arpu_of`)."""
        return None if self.runner is None else self.runner.arpu.pop(task.task_id, None)

    def output_starts(self) -> dict[str, int]:
        return self.checkpoint.output_starts()

    def owned(self) -> set[int]:
        return self.group.owned()

    def owned_clocks(self) -> list[tuple[int, PartitionClock]]:
        # Between a rebalance and the next batch the cache still holds revoked partitions.
        owned = self.group.owned()
        return [(p, c) for p, c in self.store.clocks.items() if p in owned]

    def unstarted(self, p: int) -> list[TP]:
        return self.progress.unstarted(p, self.store.clocks.get(p))

    def next_offsets(self, partitions: set[int]) -> dict[TP, int]:
        """Return, per input partition of `partitions`, the next offset the state needs."""
        out: dict[TP, int] = {}
        for p in partitions:
            clock = self.store.clocks.get(p) or PartitionClock()
            for tp, base in self.progress.input_tps(p):
                out[tp] = clock.offsets.get(base, -1) + 1
        return out

    def crowded(self) -> set[TP]:
        return self.progress.crowded(self.owned_clocks())

    @property
    def loaded(self) -> bool:
        """Whether the state of the current assignment is loaded."""
        return self.generation is not None and self.generation == self.group.generation

    async def write_state(self, *, wait: bool = True) -> bool:
        return await self.checkpoint.write_state(wait=wait)

    async def flushed(self) -> None:
        await self.checkpoint.flushed()

    def keepable(self) -> set[int]:
        """The loaded partitions whose state in memory is all written to the changelog and
        acknowledged (none while a batch's effects or a write are pending): a rebalance that gives
        one back needs no reload of it when nobody wrote its changelog since (the reader checks)."""
        store = self.store
        if self.generation is None or not self.checkpoint.settled or store.dirty or store.dirty_clocks:
            return set()
        return set(store.clocks)

    def prebuild(self, owned: set[int], data: dict[int, dict[bytes, bytes]],
                 ahead: dict[int, dict[bytes, dict[str, int]]]) -> Store | None:
        """Load partitions `owned` into a store of their own, apart from this processor's (in a thread:
        streams.runtime.reader's preload and assignments); `load` takes it with `store`. None when
        the records need more than a load (a record that cannot be read, parked records of an older
        format): `load` of the records themselves sees to them, in the event loop."""
        store = Store(self.settings.partitions, self.settings.hot_states)
        dead = DeadLetterSink(Outbox(self.outbox.send), DEADLETTER)
        store.load(owned, data, self._changelog_name(), dead, ahead)
        if dead.outbox.queued or store.dirty or store.dirty_clocks:
            return None
        return store

    def _changelog_name(self) -> str:
        return self.changelog.topic if self.changelog is not None else "state-changelog"

    def load(self, owned: set[int], data: dict[int, dict[bytes, bytes]], generation: int | None, *,
             started: float | None = None, last_write: int = 0, kept: set[int] | frozenset[int] = frozenset(),
             ahead: dict[int, dict[bytes, dict[str, int]]] | None = None, store: Store | None = None) -> None:
        """Replace the state with what the changelog holds for partitions `owned` (after a rebalance),
        except partitions `kept` (of `keepable`), whose state, clock and indexes stay as they are;
        or with `store`, of partitions `owned` but `kept` (from `prebuild`).

        `started` is when reading the changelog began (time.monotonic), for the log line; `ahead`:
        the subscribers ahead of their partition's clock (streams.runtime.recovery).
        """
        started = time.monotonic() if started is None else started
        kept = kept & owned
        self.outbox.queued.clear()
        self._outcomes_due.clear()
        if store is None:
            self.store.load(owned, data, self._changelog_name(), self.dead, ahead, kept=kept)
        else:
            self.store.take(store, self.dead, kept)
        self.checkpoint.loaded(last_write)
        self.sequencer.rewinds.clear()
        # A day close that waited for its records to age (FRESH_MS) is not in the changelog: every
        # partition is looked at again at once, with what the loaded clocks say.
        self._deferred = {p: 0 for p in owned}
        self.suspects.loaded()
        self._mornings.clear()  # the next pass re-delivers what a crash may have left in the outboxes
        if self.runner is not None:
            self.runner.reset()
        self.generation = generation
        if store is not None and generation == PRELOADED:
            log.info("took %d preloaded subscribers of partitions %s", len(self.store.states), sorted(owned))
            return
        how = f"; kept in memory {sorted(kept)}, read from the changelog {sorted(owned - kept)}" if kept else ""
        log.info("loaded %d subscribers of partitions %s in %.2f s%s", len(self.store.states), sorted(owned),
                 time.monotonic() - started, how)

    # --- the batch -----------------------------------------------------------------------------

    async def process(self, records: Sequence[InputRecord], *, ended: set[int] | None = None) -> None:
        """Handle one batch of records; `ended`: partitions one of whose topics the source has just
        read to its end."""
        self.progress.new_batch()
        self._now_ms = int(time.time() * 1000)
        self.checkpoint.settled = False
        if self.sequencer.rewinds:
            await self.sequencer.repeat_seeks()
        try:
            await self._recheck(ended)
            await self._records(records)
            self._record_ms = None
            await self.checkpoint.commit(self._decide_batch)
        except BaseException:
            # The batch is read again: its events count when it goes through, once.
            self._counts.clear()
            self.dead.counted.clear()
            self.outbox.clear()
            self._outcomes_due.clear()
            raise
        # Counted once the batch's tasks and outputs are out: whoever waits for a count (a test,
        # the benchmark) then sees their effects too.
        self._count()
        if self.sequencer.rewinds:
            await self.sequencer.repeat_seeks()

    async def tick(self, now_ms: int) -> None:
        """Close days by the wall clock on idle, live partitions (CONTRACT §7), between two batches."""
        self.progress.new_batch()
        self.checkpoint.settled = False
        await self.suspects.judge(now_ms)
        for p, clock in self.owned_clocks():
            if clock.watermark_ms is None:
                continue
            pending = self.progress.pending(p, clock)
            if any(pending.values()) or clock.watermark_ms < now_ms - HOUR_MS:
                continue  # busy, or replaying older data: event time alone closes days
            # Live and idle: the days up to now close, and what was parked until now is due.
            await self._advance(p, clock, now_ms)
        self.progress.waited_for(self.owned_clocks())
        await self.checkpoint.commit(self._decide_batch)
        self._count()

    async def idle(self, *, ended: set[int] | None = None) -> None:
        """Between batches with no record: close the days that waited for records to age or for a
        topic to be read to its end (`ended` partitions); write the state when it is due."""
        self._now_ms = int(time.time() * 1000)
        if not ended and not any(self._now_ms >= kafka_ms + FRESH_MS for kafka_ms in self._deferred.values()):
            await self.checkpoint.write_if_due()
            return
        self.progress.new_batch()
        self.checkpoint.settled = False
        await self._recheck(ended)
        await self.checkpoint.commit(self._decide_batch)
        self._count()

    async def _decide_batch(self) -> None:
        """Record the batch's outcomes (Redis), then decide its tasks."""
        if self._outcomes_due:
            assert self.outcomes is not None
            due_, self._outcomes_due = self._outcomes_due, []
            for outcome in due_:
                self.metrics.outcome(await self.outcomes.record_outcome(outcome))
        if self.runner is not None:
            await self.runner.run(lambda: self.progress.with_records(set(self.store.clocks)))

    def _count(self) -> None:
        for (base, outcome), n in self._counts.items():
            self.metrics.event(base, outcome, n)  # type: ignore[arg-type]
        self._counts.clear()
        for base, error in self.dead.counted:
            self.metrics.deadletter(base, error)
        self.dead.counted.clear()

    async def _recheck(self, ended: set[int] | None = None) -> None:
        """Recompute the watermark of partitions whose day close waited until their records aged,
        and of the `ended` ones."""
        clocks = self.store.clocks
        if ended:
            owned = self.group.owned()
            for p in ended:
                clock = clocks.get(p)
                if clock is None or p not in owned or p in self._deferred:
                    continue
                self.progress.refresh(p, clock)
                if self._watermark(p, clock):
                    await self._advance(p, clock, clock.watermark_ms)
        caught_up = self.source.caught_up
        for p, kafka_ms in list(self._deferred.items()):
            if self._now_ms < kafka_ms + FRESH_MS:
                continue
            if kafka_ms == 0 and not caught_up:
                # Looked at again after a load: only once the reader has taken everything fetched
                # (a broker may report a partition's end short of it, and the records still to
                # come would pass for read); records that come meanwhile close days as usual.
                continue
            del self._deferred[p]
            clock = clocks.get(p)
            if clock is None:
                continue
            self.progress.refresh(p, clock)
            if self._watermark(p, clock):
                await self._advance(p, clock, clock.watermark_ms)

    # --- records -------------------------------------------------------------------------------

    async def _records(self, records: Sequence[InputRecord]) -> None:
        rewinds = self.sequencer.rewinds
        base_topic = self.progress.base_topic
        clocks = self.store.clocks
        dirty_clocks = self.store.dirty_clocks
        moves = self.progress.moves
        store = self.store
        for msg in records:
            base = base_topic.get(msg.topic)
            p = msg.partition
            if base is None or base == TICKS:
                continue
            clock = clocks.get(p)
            if clock is None:
                # A partition no load covered: the backtest's, whose records are all there is.
                clock = self.store.adopt(p)
            tp = msg.tp
            offset = msg.offset
            # The next record the state needs, or the slow path (a re-delivery, a gap, a re-read).
            if (offset != clock.offsets.get(base, -1) + 1 or tp in rewinds) and not await self._in_sequence(
                    tp, base, offset, clock):
                continue
            clock.offsets[base] = offset
            dirty_clocks.add(p)
            try:
                stamp = msg.timestamp
                self._record_ms = None if stamp is None else int(stamp * 1000)
                result = decode(base, msg.key, msg.value, self._future_reference(clock))
                if type(result) is Usage and clock.suspect is None and (
                        result.ts_ms <= clock.max_ts.get(USAGE, result.ts_ms) + OUTLIER_MS):
                    # The bulk of the traffic, without a coroutine: nothing in it waits.
                    moved = clock.observe(base, result.ts_ms)
                    if moves(p, clock, base, tp, moved) and self._watermark(p, clock):
                        await self._advance(p, clock, clock.watermark_ms)
                    # Not again into a state loaded ahead of its clock (streams.runtime.store).
                    if not (store.ahead and store.reflected(p, msg.key, base, offset)):  # type: ignore[arg-type]
                        self._apply_usage(p, result, msg.key, clock)  # type: ignore[arg-type]
                else:
                    await self._record(p, clock, base, tp, msg, result)
            except Exception as exc:
                # The record is valid, yet applying it (or what it released) raised: it goes to
                # the dead letters on its own and the partition goes on (issue 13).
                self.handoff.failed(base, msg.key, msg.value, _headers(msg.headers), _source(msg), exc)

    async def _in_sequence(self, tp: TP, base: str, offset: int, clock: PartitionClock) -> bool:
        if offset > clock.offsets.get(base, -1):
            self.progress.pend.pop(tp.partition, None)  # a re-read starting or ending changes what is pending
        return await self.sequencer.in_sequence(tp, base, offset, clock)

    async def _record(self, p: int, clock: PartitionClock, base: str, tp: TP, msg: InputRecord,
                      result: Event | Rejection) -> None:
        """Take one decoded record other than the usual usage event (which `_records` takes inline)."""
        store = self.store
        key = msg.key or b""
        # Applied already to a state loaded ahead of its clock: its event time counts, not its event.
        reflected = bool(store.ahead) and store.reflected(p, key, base, msg.offset)
        if type(result) is Usage:
            if not await self.suspects.check(p, clock, tp, msg, result.ts_ms):
                return
            await self.observed_usage(p, clock, tp, result, key, apply=not reflected)
            return
        if isinstance(result, Rejection):
            self.dead.put(base, msg.key, msg.value, _headers(msg.headers), _source(msg), result.error)
            self._counted(base, "rejected")
            DEADLETTER_LOG.warning(result.error, "dead-lettered %s: %s (%s)", _source(msg), result.error,
                                   result.detail)
            if self.progress.moves(p, clock, base, tp, False) and self._watermark(p, clock):
                await self._advance(p, clock, clock.watermark_ms)
            return
        ts = event_time_ms(result)
        # Placed in event time against the watermark as it stood before this record: ahead of it,
        # parked, and released in order among the day closes its own arrival may make due; not
        # ahead (or a profile before any day opened), applied before them.
        if reflected:
            pass  # applied, or parked in the loaded record
        elif is_ahead(clock, base, ts):
            assert ts is not None and msg.value is not None
            self._park(p, clock, (ts, _kafka_ms(msg) or -1, key.decode(), msg.value.decode(), base, _source(msg), 0))
        else:
            # A profile deletion has no value (and no time: it is applied at once).
            raw = "" if msg.value is None else msg.value.decode()
            await self._take(p, clock, base, result, key, _kafka_ms(msg), _source(msg), raw)
        moved = ts is not None and base != PROFILES and clock.observe(base, ts)
        if self.progress.moves(p, clock, base, tp, moved) and self._watermark(p, clock):
            await self._advance(p, clock, clock.watermark_ms)

    async def observed_usage(self, p: int, clock: PartitionClock, tp: TP, event: Usage, key: bytes, *,
                             apply: bool = True) -> None:
        """Apply a usage event that `_records` did not take inline (after a suspect was judged);
        with `apply` False only its event time counts (its state reflects it already)."""
        moved = clock.observe(USAGE, event.ts_ms)
        if self.progress.moves(p, clock, USAGE, tp, moved) and self._watermark(p, clock):
            await self._advance(p, clock, clock.watermark_ms)
        if apply:
            self._apply_usage(p, event, key, clock)

    def _park(self, p: int, clock: PartitionClock, entry: Parked) -> None:
        """Park `entry` in its subscriber's record, unless the subscriber holds MAX_PARKED already:
        then it goes to the dead letters (`too_many_parked`), as a flood of one subscriber's would."""
        if clock.full(entry[2]):
            self.handoff.too_many(entry)
            return
        clock.park(entry)
        self.store.touch(p, entry[2].encode())
        self.store.dirty_clocks.add(p)

    async def _take(self, p: int, clock: PartitionClock, base: str, event: Event, key: bytes,
                    kafka_ts: int | None, source: str, raw: str, *, waited: bool = False) -> None:
        """Apply `event` now, unless it is a billing event of a subscriber without a profile yet.

        Whether a balance crossing is a prepaid subscriber's, and whether revenue counts against
        a contract, depend on the profile, which another topic brings, maybe later than the
        event: such an event waits for the profile up to PROFILE_WAIT_MS of event time (not the
        high watermark of the profiles topic, which a broker may under-report), then is applied
        with what is known.
        """
        if type(event) is Billing and not waited and not self.store.has_profile(key):
            self._park(p, clock, (event.ts_ms + PROFILE_WAIT_MS, kafka_ts or -1, key.decode(), raw, BILLING, source,
                                  1))
            return
        await self._apply(p, base, event, key, kafka_ts)
        if base == PROFILES and clock.parked:
            # Billing events that waited for this profile are applied now, oldest first.
            waiting = clock.take_waiting(key.decode())
            if waiting:
                self.store.touch(p, key)
            for entry in waiting:
                await self._release(p, clock, entry)

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
            self.handoff.failed(base, key, raw, [], source, exc)

    def _apply_usage(self, p: int, event: Usage, key: bytes, clock: PartitionClock) -> None:
        states = self.store.states
        state = states.hot.get(key)  # decoded already: no call
        if state is None:
            state = states.fetch(key)
        outcome = apply_usage(state, event, open_day=clock.open_day, tz=self.tz, window_days=self.rules.window_days)
        counted = (USAGE, outcome)
        self._counts[counted] = self._counts.get(counted, 0) + 1
        if outcome == "applied":
            self.store.touch(p, key)

    async def _apply(self, p: int, base: str, event: Event, key: bytes, kafka_ts: int | None) -> None:
        store = self.store
        state = store.state(key)
        clock = store.clocks[p]
        lifecycle_before = (state.churned, state.churned_ms, state.port_out_request_ms, state.contract) if type(
            event) is Lifecycle else None
        applied = apply(state, event, open_day=clock.open_day, tz=self.tz, rules=self.rules)
        self._counted(base, applied.outcome)
        if applied.outcome != "applied":
            return
        store.touch(p, key)
        if isinstance(event, (Profile, ProfileDeleted)):
            store.index(p, key, state)
            return
        if isinstance(event, Outcome):
            if self.outcomes is not None:
                self._outcomes_due.append(event)  # recorded in Redis with the batch's commit
            return
        msisdn = key.decode()
        if isinstance(event, Lifecycle):
            changed = (state.churned, state.churned_ms, state.port_out_request_ms, state.contract) != lifecycle_before
            effects = rules_day.on_lifecycle(msisdn, state, event, changed, clock.open_day, clock.first_day,
                                             self.rules, self.tz, kafka_ts)
            if effects.touched:
                store.touch(p, key)
            store.index(p, key, state)  # a contract signed, a light moved
            for change in effects.changes:
                self.handoff.light(msisdn, state, change)
            self.handoff.queue(state, effects.decide)
        elif isinstance(event, Billing) and self.runner is not None and state.prepaid:
            self.handoff.queue(state, rules_day.on_billing(msisdn, state, applied, event.ts_ms, self.rules, self.tz,
                                                         kafka_ts))

    def _counted(self, base: str, outcome: str) -> None:
        counted = (base, outcome)
        self._counts[counted] = self._counts.get(counted, 0) + 1

    # --- event time ----------------------------------------------------------------------------

    def _watermark(self, p: int, clock: PartitionClock) -> int:
        """Recompute the watermark of partition `p` (after `Progress.moves` said so); say whether
        anything waits for it (rules.schedule.PartitionClock.settle)."""
        capacity = self._capacity
        flags = clock.settle(self.progress.pend[p], self._record_ms, self._now_ms, self.tz,
                             self._mornings.get(p) if capacity else None, capacity)
        if flags & MOVED:
            self.store.dirty_clocks.add(p)
        if flags & HELD:
            # The first record that waited: under live traffic the newest is always fresh.
            assert self._record_ms is not None
            self._deferred.setdefault(p, self._record_ms)
        return flags & DUE

    def _future_reference(self, clock: PartitionClock) -> int:
        # CONTRACT §1 rejects times more than 1 day ahead of the partition's watermark. During a
        # replay the watermark lags the wall clock by months, and the consumer may read one topic
        # far ahead of another, so valid events would be rejected; the wall clock (as the batch
        # began) bounds it there.
        now_ms = self._now_ms
        watermark = clock.watermark_ms
        return now_ms if watermark is None or watermark < now_ms else watermark

    async def _advance(self, p: int, clock: PartitionClock, until_ms: int | None) -> None:
        """Carry out what event time reaching `until_ms` makes due for partition `p` (rules.schedule.due):
        the days it passes, with the parked records due before each, then those due up to it."""
        if until_ms is None:
            return
        store = self.store
        if start_days(clock, local_day(until_ms, self.tz), self.tz):
            store.dirty_clocks.add(p)
        mornings = self._mornings.setdefault(p, Mornings()) if self._capacity else None
        for step in due(clock, until_ms, self.tz, self.rules.window_days, mornings):
            if type(step) is Release:
                store.dirty_clocks.add(p)
                store.touch(p, step.entry[2].encode())  # out of its subscriber's record
                await self._release(p, clock, step.entry)
            elif type(step) is CloseDay:
                store.dirty_clocks.add(p)
                await self.handoff.close(p, clock, step)
            elif type(step) is Morning and self.runner is not None:
                self.runner.passed(p, step.day)

def _source(msg: InputRecord) -> str:
    return f"{msg.topic}/{msg.partition}/{msg.offset}"


def _kafka_ms(msg: InputRecord) -> int | None:
    # Records carry their Kafka timestamp in seconds.
    return None if msg.timestamp is None else int(msg.timestamp * 1000)


def _headers(headers: Headers) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return [(k, v) for k, v in headers]
