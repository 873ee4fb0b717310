"""Read the input topics in batches with confluent-kafka, for the partitions Faust assigned.

Faust's per-message path (aiokafka records, Faust messages and events, the conductor's queues,
acks) cost about 160 us of CPU per event before any work was done, three times the processor
itself. The Faust app still runs the group: its agent subscribes to the internal ticks topic,
which is co-partitioned with the inputs and the state changelog, so a worker owns partition p
of the ticks topic exactly when it owns partition p of every input and of the changelog. This
reader loads those partitions' state from the changelog (streams.runtime.recovery), assigns itself
their input partitions at the state's own next offsets (the state records them with every
write, so no committed offset is needed to resume) and hands the processor batches of records.

Around a rebalance: Faust's group protocol is eager (every partition is revoked at every
rebalance), and Tansu answers a rejoin only after seconds. The reader reads its partitions on
meanwhile; at the new assignment it writes the state, releases the partitions it lost and stops
reading them, and goes on with the others untouched. A worker given a partition another member
still claims waits for that member's release before it reads the partition (streams.runtime.claims).
When it cannot read on (it lost its membership, or the new assignment is long in coming) the
reader finishes the batch in flight, writes the state and lets every partition go; after the new
assignment it loads their state and assigns them. A partition that comes back to this worker then
keeps its state in memory, with no reload, when that state was all written and acknowledged as it
was let go and the changelog's end is where it was right after that write (no other worker wrote
it since); only the partitions new to the worker are read from the changelog.

The module is over the size guide (about 810 lines, `Reader` about 690): the Reader is the one
owner of the confluent-kafka consumer and of what it knows of it (assignment, pauses, ends of
partitions, what was delivered), which the holding back of unstarted partitions and the
throttling both change; split, they would share that state through a second object.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import heapq
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from faust.types import TP

from rules.events import INPUT_TOPICS, PROFILES
from streams import collector
from streams.runtime.claims import Claim, Claims, decode_claim, owner_key
from streams.runtime.ports import PRELOADED, Batches, Membership
from streams.runtime.outputs import read_outputs
from streams.runtime.local import LocalStore
from streams.runtime.recovery import read_changelog
from streams.runtime.store import Store
from streams.settings import Settings
from streams.topics import TICKS, changelog_topic, client_config

log = logging.getLogger(__name__)

# Wall-clock ticks: how often idle live partitions are asked to close days by the wall clock.
TICK_INTERVAL_S = 10.0
# Values (bytes) of a batch above which it goes to the processor in parts, each followed by a look
# at what the processor parked (`Reader._throttle`).
CHUNK_BYTES = 256 * 1024
# How long a partition's first records wait for a topic that has records but sent none yet.
START_WAIT_S = 10.0


@dataclass
class Preloaded:
    """The local store's partitions loaded before the first assignment, and their changelog's ends."""

    store: Store
    marks: dict[int, int]
    last_write: int
    claims: dict[int, Claim | None]  # the latest claim of each partition (streams.runtime.claims)


class Record:
    """One input record, with the attributes the processor reads."""

    __slots__ = ("tp", "topic", "partition", "offset", "key", "value", "timestamp", "headers")

    def __init__(self, tp: TP, offset: int, key: bytes | None, value: bytes | None,
                 timestamp: float | None, headers: list[tuple[str, bytes]] | None) -> None:
        self.tp = tp
        self.topic, self.partition = tp
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp = timestamp  # seconds
        self.headers = headers


def _timestamp(r: Record) -> float:
    return r.timestamp or 0.0


class Reader:
    """The worker's consumer of the input topics: assign, seek, batches, ends of partitions."""

    # What the reader drives, given once built (it is the processor's source in turn: `attach`).
    processor: Batches

    def __init__(self, settings: Settings, group: Membership) -> None:
        self.settings = settings
        self.group = group
        self.topics = [settings.topic(t) for t in INPUT_TOPICS]
        self.ticks_topic = settings.topic(TICKS)
        self.profiles_topic = settings.topic(PROFILES)
        # The worker's local store (streams.runtime.local), which a load reads before the changelog's tail.
        self.local: LocalStore | None = None
        # This worker's claims of the partitions it reads (streams.runtime.claims; none without a changelog).
        self.claims = Claims(group, None)
        conf = client_config(settings)
        conf.update({
            # Assigned by hand, never subscribed: the group id only names the client to the broker.
            "group.id": f"{settings.topic_prefix}{settings.app_id}-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # The end-of-partition event is the one sure sign that a partition is read to its end
            # (`at_end`): a high watermark may be reported short of the end.
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            "queued.max.messages.kbytes": 65536,
        })
        self.consumer = Consumer(conf)
        # consume() blocks in librdkafka without the GIL: one thread of its own.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="churnlight-reader")
        self.assigned: set[TP] = set()
        self._tp_cache: dict[tuple[str, int], TP] = {}
        self.generation: int | None = None
        # One past the last offset handed to the processor per partition: Tansu reports a high
        # watermark of one past the first offset of a partition's last record batch, so the
        # records delivered tell the end better than it does.
        self.delivered: dict[TP, int] = {}
        # High watermarks asked of the broker at assignment: librdkafka knows a partition's only
        # from its first fetch, and until then a topic with records to read must not pass for a
        # caught-up one (the watermark would run ahead of it).
        self.initial_high: dict[TP, int] = {}
        self.initial_low: dict[TP, int] = {}
        # The partitions librdkafka said it read to their end (its end-of-partition event) since
        # the last assignment or seek; the partitions whose end came with the last batch.
        self.eof: set[TP] = set()
        self.ended: set[int] = set()
        self._waiting_since: dict[int, float] = {}
        # Records of partitions waiting for a topic's first record, and the partitions paused meanwhile.
        self._held: list[Record] = []
        self._paused: set[TP] = set()
        # Partitions paused while their partition's parked records are too many (Processor.crowded).
        self._throttled: set[TP] = set()
        # Records taken from the consumer and kept back while their partition is throttled.
        self._backlog: list[Record] = []
        self._revoked = True
        self._revocations = 0
        # Per partition whose state was all written at the last revocation, the changelog's end
        # (high watermark) asked right after that write; good until the reader reads again. (Or,
        # before the first assignment, asked before the preload read it: `_preload_local`.)
        self._marks: dict[int, int] = {}
        # The load of the local store's partitions while the worker first joins its group (`preload`).
        self._preload: concurrent.futures.Future[Preloaded | None] | None = None
        self._preload_started = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._last_tick = time.monotonic()
        # Whether the broker answered the last probe (`probe`, every few seconds): /health says 503 while not.
        self.broker_ok = True
        # Whether a read since the last assignment found nothing more to take (streams.runtime.processor
        # looks at the loaded partitions' days again only then).
        self.caught_up = False
        # The latest claim of each partition the preload read.
        self._preload_claims: dict[int, Claim | None] = {}
        # Since when the reader reads on through a rebalance (None: not doing so), and for how long at most.
        self._through_since: float | None = None
        self._through_s = settings.session_timeout_s + settings.rebalance_timeout_s

    def attach(self, processor: Batches) -> None:
        """Hand the batches to `processor`."""
        self.processor = processor

    # --- what the processor asks ----------------------------------------------------------------

    def highwater(self, tp: TP) -> int | None:
        if tp not in self.assigned:
            return None
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), cached=True)
        except KafkaException:
            high = None
        if high is None or high < 0:
            return self.initial_high.get(tp)
        return max(high, self.initial_high.get(tp, high))

    def end(self, tp: TP) -> int | None:
        """How far the reader knows `tp` to go: its high watermark or, when further, what it delivered."""
        high = self.highwater(tp)
        done = self.delivered.get(tp)
        if done is None:
            return high
        return done if high is None else max(high, done)

    def at_end(self, tp: TP, offset: int) -> bool:
        """Say whether `tp` is read to its end once the records before `offset` are taken, as far
        as the reader knows (the processor also compares `offset` with the high watermark).

        Until a partition assigned or sought has delivered a record or its end-of-partition event,
        it is taken to have records left whatever its high watermark says: Tansu reports one past
        the first offset of the last record batch, so a restart in the middle of that batch would
        take the rest for read. Once it has, what it delivered tells the end better than that.
        """
        done = self.delivered.get(tp)
        if done is None:
            return tp in self.eof
        return offset >= done

    def start(self, tp: TP) -> int:
        """The first offset of `tp` that exists (as the broker said at assignment)."""
        return self.initial_low.get(tp, 0)

    def reading(self, tp: TP) -> str:
        """How far `tp` was delivered and whether its end-of-partition event came, for the log."""
        return f"delivered to {self.delivered.get(tp)}, end seen {tp in self.eof}"

    async def seek(self, tp: TP, offset: int) -> None:
        """Read `tp` again from `offset` (librdkafka purges what it had fetched past it)."""
        target = TopicPartition(tp.topic, tp.partition, offset)
        try:
            self.consumer.seek(target)
        except KafkaException:
            # Not fetching yet (just assigned): assign it again at the offset instead.
            self.consumer.incremental_unassign([TopicPartition(tp.topic, tp.partition)])
            self.consumer.incremental_assign([target])
        self.delivered.pop(tp, None)
        self.eof.discard(tp)

    async def probe(self, timeout_s: float = 2.0) -> bool:
        """Ask the broker for its metadata; say whether it answered within `timeout_s`."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, lambda: self.consumer.list_topics(timeout=timeout_s))
        except Exception:
            self.broker_ok = False
        else:
            self.broker_ok = True
        return self.broker_ok

    @property
    def consuming(self) -> bool:
        return not self._revoked and not self._stopping

    # --- the group as the processor sees it: the partitions read now ----------------------------

    @property
    def rebalancing(self) -> bool:
        return self.group.rebalancing

    def owned(self) -> set[int]:
        """The partitions whose inputs the reader reads (through a rebalance too)."""
        return {tp.partition for tp in self.assigned}

    # --- the loop ------------------------------------------------------------------------------

    async def on_revoked(self) -> None:
        """Faust is revoking partitions: read them on until the new assignment says which stay
        (`_hand_over`); or, when this worker lost its membership or reads nothing loaded, finish
        the batch in flight and let every partition go. (Before the worker first joins its group,
        with none: the local store's preload starts.)"""
        self.preload()
        self._revocations += 1
        if self._stopping:
            return  # the stop wrote the state and released the partitions
        async with self.claims.writing:
            pass  # claims being written land first
        if self.assigned and not self._revoked and self.generation is not None:
            if self.group.member:
                if self._through_since is None:
                    self._through_since = time.monotonic()
                log.info("the group is rebalancing: the reader reads partitions %s on until the new assignment",
                         sorted(self.owned()))
                return
            # The group dropped this worker (its session expired): others may read its partitions
            # already, without waiting for a release. It stops at once and releases none.
            log.warning("this worker is no longer a member of its group: it stops reading partitions %s",
                        sorted(self.owned()))
            self.claims.held.clear()
        await self._let_go(release=False)

    async def _let_go(self, *, release: bool) -> None:
        """Finish the batch in flight, write the state, let every input partition go (and with
        `release`, release the claimed ones: their next owner waits for nothing else)."""
        self._revoked = True
        self._through_since = None
        await self._idle.wait()
        if self.assigned:
            # The next owner starts from the changelog: it must hold everything applied here.
            self._marks = {}
            written = await self.processor.write_state()
            if release and written:
                await self._release(set(self.claims.held))
            self.consumer.unassign()
            log.info("the reader let %d input partitions go", len(self.assigned))
            if written:
                # Asked after the write and its seal were acknowledged, and before this worker
                # rejoins (so before any other worker can own these partitions): the same reading
                # at the next assignment says whether anybody wrote them since. Both readings are
                # the broker's high watermark, so a broker that reports it short of the end (Tansu)
                # reports it short the same way twice.
                loop = asyncio.get_running_loop()
                self._marks = await loop.run_in_executor(None, self._changelog_ends, self.processor.keepable())
        self._reading(set())

    def _reading(self, assigned: set[TP]) -> None:
        """Start over with input partitions `assigned`: nothing delivered, held back or paused yet."""
        self.assigned = assigned
        self.delivered.clear()
        self.eof.clear()
        self._held, self._paused, self._waiting_since, self._throttled = [], set(), {}, set()
        self._backlog = []

    async def _release(self, partitions: set[int]) -> None:
        """Release `partitions` once the state written before is with the broker (its seal stays last)."""
        if partitions:
            await self.processor.flushed()
            await self.claims.release(partitions)

    async def _hand_over(self, owned: set[int], generation: int | None, started: float) -> bool:
        """After reading on through a rebalance: write the state, release the partitions this
        worker lost and stop reading them; the others read on, untouched. True when that is all;
        False when partitions new to this worker are to be loaded (every partition let go, the
        kept ones with their marks, as after a revocation)."""
        reading = self.owned()
        lost, new, kept = reading - owned, owned - reading, reading & owned
        gone = {tp for tp in self.assigned if tp.partition in lost}
        log.info("the reader let %d input partitions go (partitions %s) and reads partitions %s on",
                 len(gone), sorted(lost), sorted(kept))
        began = time.monotonic()
        written = await self.processor.write_state()
        if written:
            await self._release(lost)
        if new or not written:
            if not written:
                log.warning("the state could not be written (a batch failed): every partition is loaded again")
            loop = asyncio.get_running_loop()
            self._marks = await loop.run_in_executor(None, self._changelog_ends, kept) if written else {}
            self._revoked = True
            self.consumer.unassign()
            self._reading(set())
            return False
        if gone:
            self.consumer.incremental_unassign([TopicPartition(tp.topic, tp.partition) for tp in gone])
        self.assigned -= gone
        for tp in gone:
            self.delivered.pop(tp, None)
            self.initial_high.pop(tp, None)
            self.initial_low.pop(tp, None)
        self.eof -= gone
        self._paused -= gone
        self._throttled -= gone
        self._held = [r for r in self._held if r.partition not in lost]
        self._backlog = [r for r in self._backlog if r.partition not in lost]
        for p in lost:
            self._waiting_since.pop(p, None)
        self.processor.load(kept, {}, generation, started=started, kept=kept)
        self.generation = generation
        self._marks = {}
        log.info("the reader reads partitions %s of %d input topics from the state's offsets (ready in %.3f s: "
                 "read on through the rebalance)", sorted(kept), len(self.topics), time.monotonic() - began)
        return True

    def _ready(self) -> bool:
        return not self.group.rebalancing

    async def _assign(self) -> None:
        """Load the state of the partitions Faust gave this worker and read their inputs from its offsets.

        The ticks topic's assignment says which partitions this worker owns. Their state is read
        from the changelog (streams.runtime.recovery) in a thread; a rebalance meanwhile makes it start
        over, and nothing is assigned until a load matches the current assignment.
        """
        generation, revocations = self.group.generation, self._revocations
        owned = self.group.owned()
        loop = asyncio.get_running_loop()
        started = time.monotonic()

        def stale() -> bool:
            return self._revocations != revocations or self._stopping

        if self._through_since is not None:
            self._through_since = None
            if await self._hand_over(owned, generation, started):
                return
        await self._take_preload()
        # Claimed here and not owned now (a load cut short, a failed batch): read here no more.
        await self._release(self.claims.held - owned)
        # Partitions that come back with their state in memory whole and nothing written to their
        # changelog since this worker wrote it (or read it) stay as they are; the others are read.
        # (A rebalance before this assignment is done keeps the marks: nothing was read since.)
        marks = self._marks
        candidates = {p for p in owned & self.processor.keepable() if p in marks}
        changelog_ends = await loop.run_in_executor(None, self._changelog_ends, candidates) if candidates else {}
        kept = {p for p in candidates if changelog_ends.get(p) == marks[p]}
        if candidates - kept:
            log.info("partitions %s were written by another worker since this one let them go (or read them): "
                     "read again", sorted(candidates - kept))
        # A preloaded partition that another member still claims is read once that member releases it.
        claims, self._preload_claims = self._preload_claims, {}
        busy = self.claims.busy(kept, claims)
        if busy:
            log.info("partitions %s of the local store are still claimed by another worker: read once released",
                     sorted(busy))
            kept -= busy
        writes: dict[int, int] = {}
        ahead: dict[int, dict[bytes, dict[str, int]]] = {}
        data: dict[int, dict[bytes, bytes]] = {}
        refreshes: list[Callable[[], None]] = []  # the local store's, once the state is loaded
        if owned - kept:
            waits = self.claims.waits(stale, 2 * self._through_s)
            data = await loop.run_in_executor(
                None, lambda: read_changelog(self.settings, owned - kept, cancelled=stale, writes=writes, ahead=ahead,
                                             local=self.local, refresh_later=refreshes, waits=waits))
        if stale() or self.group.generation != generation:
            return  # a rebalance came while reading: the next assignment loads again
        # Indexed in a thread (the event loop answers /health and /metrics meanwhile), unless the
        # records need more than that (an unreadable one): then here, as the load dead-letters them.
        prebuilt = await loop.run_in_executor(
            None, self.processor.prebuild, owned - kept, data, ahead) if owned - kept else None
        if stale() or self.group.generation != generation:
            return
        self.processor.load(owned, {} if prebuilt is not None else data, generation, started=started,
                            last_write=max(writes.values(), default=0), kept=kept, ahead=ahead, store=prebuilt)
        del data, prebuilt
        for refresh in refreshes:
            refresh()
        # Claimed before any input is read (and after the local store took what was read: its
        # marks must not pass records it does not hold).
        async with self.claims.writing:
            if stale() or self.group.generation != generation:
                return
            await self.processor.flushed()
            await self.claims.claim(owned - self.claims.held)
        # What this state's records produced before a crash is on the output topics already.
        loaded_at = time.monotonic()
        published, ends = await loop.run_in_executor(
            None, lambda: read_outputs(self.settings, self.processor.output_starts(), owned, cancelled=stale))
        if stale() or self.group.generation != generation:
            return
        self.processor.published = published
        for where, end in ends.items():
            if end > self.processor.output_ends.get(where, 0):
                self.processor.output_ends[where] = end
        if published:
            log.info("%d outputs of partitions %s are on their topics already: they are not sent again",
                     len(published), sorted(owned))
        collector.settle()  # the states loaded stay for the assignment: out of the collector's walks
        offsets = self.processor.next_offsets(owned)
        # Offset 0 rather than "the beginning": no offset look-up, so every partition's first fetch
        # goes out together (records deleted by retention reset to the earliest).
        wanted = [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in sorted(offsets.items())]
        outputs_read_at = time.monotonic()
        self.initial_high, self.initial_low = {}, {}
        for tp in offsets:
            try:
                low, high = await loop.run_in_executor(None, functools.partial(
                    self.consumer.get_watermark_offsets, TopicPartition(tp.topic, tp.partition), timeout=10.0))
            except KafkaException:
                log.warning("the high watermark of %s/%d is unknown until its first fetch", tp.topic, tp.partition)
                continue
            self.initial_high[tp], self.initial_low[tp] = high, low
        if stale() or self.group.generation != generation:
            return
        self.consumer.assign(wanted)
        # A partition paused before (held back or throttled) and assigned again without a
        # revocation (after a failed batch) would stay paused, with nothing here to resume it.
        self.consumer.resume(wanted)
        self._reading(set(offsets))
        self.caught_up = False
        self.generation = generation
        self._revoked = False
        self._marks = {}
        now = time.monotonic()
        log.info("the reader reads partitions %s of %d input topics from the state's offsets (ready in %.1f s: "
                 "state %.2f s, outputs read back %.2f s, input ends %.2f s)", sorted(owned), len(self.topics),
                 now - started, loaded_at - started, outputs_read_at - loaded_at, now - outputs_read_at)

    def preload(self) -> None:
        """Start loading the local store's partitions in a thread of its own, as the worker first joins
        its group (Faust's tasks, `run` among them, start only once it has; started with the app,
        the thread took the interpreter from Faust's own start-up, 1.3 s to 4.2 s at 1M)."""
        if self.local is not None and not self._preload_started and self.generation is None:
            self._preload_started = True
            pool = ThreadPoolExecutor(1, thread_name_prefix="churnlight-preload")
            self._preload = pool.submit(self._preload_local)
            pool.shutdown(wait=False)

    def _preload_local(self) -> Preloaded | None:
        """Read the partitions the local store holds (and their changelog's tails) and index them,
        in a thread, while the worker joins its group: a restart on the same disk then loads them
        meanwhile, not after its assignment (issue 15). The changelog's ends asked before reading
        them are their marks: the assignment keeps those of them it gives this worker that nobody
        wrote since, as after a rebalance (`_assign`), and reads the others."""
        assert self.local is not None
        held = self.local.held()
        if not held:
            return None
        started = time.monotonic()
        writes: dict[int, int] = {}
        ahead: dict[int, dict[bytes, dict[str, int]]] = {}
        ends: dict[int, int] = {}
        data = read_changelog(self.settings, held, cancelled=lambda: self._stopping, writes=writes, ahead=ahead,
                              ends=ends, local=self.local, only_local=True)
        if not data or self._stopping:
            return None
        store = self.processor.prebuild(set(data), data, ahead)
        if store is None:
            log.info("the local store's partitions %s need more than a load: read at the assignment", sorted(data))
            return None
        log.info("preloaded %d subscribers of partitions %s from the local store in %.2f s",
                 len(store.states), sorted(data), time.monotonic() - started)
        claims = {p: decode_claim(records.get(owner_key(p))) for p, records in data.items()}
        return Preloaded(store, {p: ends[p] for p in data if p in ends}, max(writes.values(), default=0), claims)

    async def _take_preload(self) -> None:
        """Take the preload's state (`_preload_local`), once it is done, before the first assignment's load."""
        preload, self._preload = self._preload, None
        if preload is None:
            return
        try:
            done = await asyncio.wrap_future(preload)
        except Exception as exc:
            log.warning("preloading the local store failed (%r): the assignment reads its partitions", exc)
            return
        if done is not None:
            self.processor.load(set(done.store.clocks), {}, PRELOADED, last_write=done.last_write, store=done.store)
            self._marks = done.marks
            self._preload_claims = done.claims

    def _changelog_ends(self, partitions: set[int]) -> dict[int, int]:
        """Ask the broker for the changelog's high watermark of each of `partitions` (absent: no answer)."""
        topic = changelog_topic(self.settings)
        ends: dict[int, int] = {}
        for p in sorted(partitions):
            try:
                _, ends[p] = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
            except KafkaException as exc:
                log.warning("the end of %s/%d is unknown (%s): the partition is read again at its next assignment",
                            topic, p, exc)
        return ends

    async def run(self) -> None:
        """Consume and process batches until the app stops."""
        loop = asyncio.get_running_loop()
        batch_max, within = self.settings.batch_max, self.settings.batch_within_s
        while not self._stopping:
            if not self._ready():
                if self._through_since is None or self._revoked or not self.assigned:
                    await asyncio.sleep(0.05)
                    continue
                if time.monotonic() - self._through_since > self._through_s:
                    # A rebalance this long is not the usual rejoin: stop reading, so that nothing
                    # of a partition given to another worker is processed past its wait (`Claims.waits`).
                    log.warning("no new assignment %.0f s after the revocation: the reader lets its partitions "
                                "go meanwhile", self._through_s)
                    try:
                        await self._let_go(release=True)
                    except Exception:
                        log.exception("letting the partitions go failed; they are loaded again at the assignment")
                        self.generation = None
                    continue
            elif self.generation != self.group.generation:
                try:
                    await self._assign()
                except Exception:
                    log.exception("loading the state failed; trying again")
                    await asyncio.sleep(1.0)
                continue
            else:
                self._through_since = None  # a rebalance that left the generation as it was
            if self._revoked or not self.assigned:
                await asyncio.sleep(0.05)
                continue
            self._idle.clear()
            try:
                if self._stopping:
                    break
                # What librdkafka has fetched already is taken at once, on this thread; only an
                # empty queue is waited on, in the reader's own thread (handing every batch to a
                # thread and back cost a tenth of the worker's time).
                messages = self.consumer.consume(batch_max, 0)
                if messages:
                    await asyncio.sleep(0)  # let the loop's other tasks (heartbeats, HTTP) run between batches
                else:
                    messages = await loop.run_in_executor(self._executor, self.consumer.consume, batch_max, within)
                records = self._unthrottled(self._started(self._records(messages)))
                ended, self.ended = self.ended, set()
                if records:
                    for chunk in self._chunks(records):
                        await self.processor.process(chunk, ended=ended)
                        ended = set()
                        self._throttle()
                else:
                    self.caught_up = not self._held and not self._backlog
                    await self.processor.idle(ended=ended)
                    self._throttle()
                if time.monotonic() - self._last_tick >= TICK_INTERVAL_S:
                    self._last_tick = time.monotonic()
                    await self.processor.tick(int(time.time() * 1000))
            except Exception:
                if self._stopping:
                    break  # stopped under it (Redis or the broker away): read again at the next start
                # A batch that failed is read again: the state's offsets were not advanced past it.
                log.exception("a batch failed; reading its partitions again from the state's offsets")
                self.generation = None
                self._through_since = None  # its effects in memory are partial: nothing is read on
                await asyncio.sleep(1.0)
            finally:
                self._idle.set()

    def _unthrottled(self, records: list[Record]) -> list[Record]:
        """Keep back the records of throttled partitions (and any after them), give back the kept
        records of partitions no longer throttled, in time order with the rest."""
        if not self._backlog and not self._throttled:
            return records
        back = [r for r in self._backlog if r.tp not in self._throttled]
        if back:
            self._backlog = [r for r in self._backlog if r.tp in self._throttled]
        held = {r.tp for r in self._backlog} | self._throttled
        if held:
            keep = [r for r in records if r.tp in held]
            if keep:
                self._backlog += keep
                records = [r for r in records if r.tp not in held]
        return interleave(back + records, self.profiles_topic) if back else records

    def _chunks(self, records: list[Record]) -> Iterator[list[Record]]:
        """Yield the batch whole or, when its values pass CHUNK_BYTES, in parts, keeping back the
        records of partitions throttled after a part (`_throttle`): a batch of records far ahead of
        the watermark would otherwise all be parked at once."""
        size = 0
        for r in records:
            size += len(r.value or b"")
        if size <= CHUNK_BYTES:
            yield records
            return
        start = 0
        while start < len(records):
            end, size = start, 0
            while end < len(records) and size <= CHUNK_BYTES:
                size += len(records[end].value or b"")
                end += 1
            part = self._unthrottled(records[start:end])
            start = end
            if part:
                yield part

    def _throttle(self) -> None:
        """Pause the topics whose records the processor would park beyond its bound; resume them
        once it has taken in what they ran ahead of."""
        want = self.processor.crowded()
        if want == self._throttled:
            return
        resume = [tp for tp in self._throttled - want if tp not in self._paused]
        pause = [tp for tp in want - self._throttled if tp not in self._paused]
        if resume:
            self.consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in resume])
        if pause:
            self.consumer.pause([TopicPartition(tp.topic, tp.partition) for tp in pause])
            log.debug("paused %s: records ahead of the partitions' event time wait for the other topics",
                      ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(pause)))
        self._throttled = want

    def _records(self, messages: list[Any]) -> list[Record]:
        records: list[Record] = []
        append = records.append
        delivered = self.delivered
        eof = self.eof
        tps = self._tp_cache
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    tp = tps.get((m.topic(), m.partition()))
                    if tp is None:
                        tp = tps[(m.topic(), m.partition())] = TP(m.topic(), m.partition())
                    eof.add(tp)
                    self.ended.add(m.partition())
                else:
                    log.warning("the reader got an error from the broker: %s", err)
                continue
            name, partition, offset = m.topic(), m.partition(), m.offset()
            tp = tps.get((name, partition))
            if tp is None:
                tp = tps[(name, partition)] = TP(name, partition)
            _, ts = m.timestamp()
            append(Record(tp, offset, m.key(), m.value(), None if ts < 0 else ts / 1000, m.headers()))
            delivered[tp] = offset + 1
        return interleave(records, self.profiles_topic)

    def _started(self, records: list[Record]) -> list[Record]:
        """Hold back the records of a partition that has no watermark yet while one of its topics
        with records to read has sent none: until it has, the watermark cannot start, and what
        came before would be applied with no day closing (librdkafka starts fetching partitions
        at different moments, and one fetch of usage can fill a whole batch). The held
        partitions' other topics are paused meanwhile, so that the fetch brings the missing one."""
        if self._held:
            records = interleave(self._held + records, self.profiles_topic)
            self._held = []
        if not records:
            return records
        present = {(r.partition, r.topic) for r in records}
        held: set[int] = set()
        now = time.monotonic()
        for p in {p for p, _ in present}:
            missing = [tp for tp in self.processor.unstarted(p) if (p, tp.topic) not in present]
            if not missing:
                self._waiting_since.pop(p, None)
                continue
            since = self._waiting_since.setdefault(p, now)
            if now - since < START_WAIT_S:
                held.add(p)
            else:
                log.warning("partition %d: %s sent no record in %.0f s; starting without waiting for it",
                            p, ", ".join(tp.topic for tp in missing), now - since)
                self._waiting_since.pop(p, None)
        resume = [tp for tp in self._paused if tp.partition not in held]
        if resume:
            self.consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in resume])
            self._paused.difference_update(resume)
        if not held:
            return records
        kept: list[Record] = []
        pause: set[TP] = set()
        for r in records:
            if r.partition in held:
                self._held.append(r)
                pause.add(r.tp)
            else:
                kept.append(r)
        pause -= self._paused
        if pause:
            self.consumer.pause([TopicPartition(tp.topic, tp.partition) for tp in pause])
            self._paused |= pause
        return kept

    async def stop(self, *, give_up: Callable[[], None] | None = None, grace_s: float = 10.0) -> None:
        """Let the batch in flight finish, then close; after `grace_s` call `give_up` (which makes
        calls waiting out an outage of Redis or the broker raise) and wait as long again."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            log.warning("the batch in flight did not finish within %.0f s of the stop (is Redis or the broker "
                        "away?): giving it up; its records are read again at the next start", grace_s)
            if give_up is not None:
                give_up()
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except TimeoutError:
                pass
        if self.assigned:
            try:
                # Unless the last batch was given up (then its records are read again from the
                # state written before it). Released once written: the next owner need not wait.
                if await asyncio.wait_for(self.processor.write_state(), grace_s):
                    await asyncio.wait_for(self._release(set(self.claims.held)), grace_s)
            except TimeoutError:
                log.warning("the state touched since the last write did not reach the changelog within %.0f s of "
                            "the stop: its records are read again at the next start", grace_s)
            except Exception:
                log.exception("writing the state at the stop failed: its records are read again at the next start")
        try:
            self.consumer.close()
        except Exception:
            log.exception("closing the reader's consumer failed")
        self._executor.shutdown(wait=False)


def interleave(records: list[Record], profiles_topic: str) -> list[Record]:
    """Merge each partition's topics by Kafka timestamp, every topic's records in offset order.

    librdkafka hands over a fetch partition by partition: in a replay burst a batch can hold
    hundreds of a partition's usage records before its first profile or lifecycle record, while
    the watermark waits for every topic with records to read. Taking the records in the order
    they were produced (as Kafka Streams picks the lowest timestamp of a task's partitions) makes
    that independent of how the fetch was cut. Equal timestamps take the profiles first: an event
    refers to its subscriber's profile, never the other way round.
    """
    lists: dict[tuple[int, str], list[Record]] = {}
    for r in records:
        key = (r.partition, r.topic)
        found = lists.get(key)
        if found is None:
            lists[key] = [r]
        else:
            found.append(r)
    if len(lists) <= 1:
        return records
    by_partition: dict[int, list[list[Record]]] = {}
    for (p, topic), items in sorted(lists.items(), key=lambda kv: (kv[0][0], kv[0][1] != profiles_topic)):
        by_partition.setdefault(p, []).append(items)
    out: list[Record] = []
    for streams in by_partition.values():
        if len(streams) == 1:
            out.extend(streams[0])
        else:
            out.extend(heapq.merge(*streams, key=_timestamp))
    return out
