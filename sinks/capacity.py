"""The call-centre capacity queue in Redis (CONTRACT §3, §5), shared by every worker and partition.

Only where the rule set gives a region a capacity (`capacity: {region: n}`); otherwise nothing
here runs. The ranking itself is pure (rules.capacity); this module keeps the queue and applies
each release atomically.

What drives 08:00: event time, as it closes days. A partition arrives at a day's 08:00 local when
its watermark passes it (or the wall clock, on an idle live partition); the queues are shared by
every partition of every worker, and they reach the same 08:00 at their own pace (a replay reads
one partition days ahead of another). The day's release waits until every partition that holds
records (each worker names its own after a load) has arrived at this one: by then each has decided its tasks of the hours before,
so the ranking sees them all and a replay releases what the live run released. The last partition
to arrive releases every region's queue in one optimistic transaction (WATCH on the day, the
arrivals and the queues, MULTI) that sets the day's `released` marker: no two workers release a
day twice. A partition with no record at all is never named and holds nothing up; one whose data
stops holds the releases until the wall clock moves it (live) or its records come. A worker
that starts while another has passed several 08:00s alone is not waited for by those releases.

The release does not publish. It moves each task it takes into the outbox of the partition that
owns the task's subscriber; that partition's worker publishes it once the day is released: at
the 08:00 it passes when it is the last to arrive, else at its next commit or tick, where it asks
again (and after every load), through the claim protocol of sinks.tasks (claim ->
send -> `sent`, a `pending` claim read back from the topic at recovery): one writer per task, as
everywhere else, so a SIGKILL between release and publish loses nothing and sends nothing twice.

Keys (under `churnlight:capacity:`):
- `{region}:queue`: hash task id -> the waiting task (`Entry` as JSON).
- `day:{date}`: hash `released` (the release's epoch ms, once done) and `used:{region}` (calls
  taken that day: released ones and those issued at once after the release); expires after 40 days.
- `arrived:{date}`: set of the partitions that passed the day's 08:00; expires after 40 days.
- `partitions`: set of the partitions that hold records (each worker names its own after a load)
  or ever arrived at an 08:00: whom a release waits for.
- `admitted:{task_id}`: `slot` (issued at once) or `queued`: a task is admitted once; expires
  with the task claims.
- `out:{partition}`: hash task id -> {"status": released | expired, "entry": ...}, waiting for
  the partition's worker to publish or expire it.

A queued task's decision marker (`churnlight:decision:{task_id}`, sinks.redis_store) reads
`queued:<token>` and moves once to `released:` or `expired:`, each move with its feed entry in
the same script, so the feed shows each of `queued`, `released`, `expired` at most once per task.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, tzinfo
from typing import Any, Final, Literal

import orjson
from aiokafka.partitioner import murmur2
from redis.asyncio import Redis
from redis.exceptions import WatchError

from rules.capacity import Release, Waiting, rank_key, select
from rules.task_message import Task
from sinks.redis_store import CLAIM_TTL_S, FEED, FEED_MAXLEN, REDIS_TRANSIENT, decision_key, describe
from sinks.retry import DEFAULT_BACKOFF, Backoff, Retrier

log = logging.getLogger(__name__)

PREFIX: Final = "churnlight:capacity:"
DAY_TTL_S: Final = 40 * 24 * 3600

Admission = Literal["slot", "queued", "held_slot", "held_queued"]
Delivered = Literal["released", "expired"]


def queue_key(region: str) -> str:
    return f"{PREFIX}{region}:queue"


def day_key(day: date) -> str:
    return f"{PREFIX}day:{day.isoformat()}"


def arrived_key(day: date) -> str:
    return f"{PREFIX}arrived:{day.isoformat()}"


PARTITIONS: Final = f"{PREFIX}partitions"


def admitted_key(task_id: str) -> str:
    return f"{PREFIX}admitted:{task_id}"


def outbox_key(partition: int) -> str:
    return f"{PREFIX}out:{partition}"


@dataclass(frozen=True, slots=True)
class Entry:
    """A queued call-centre task: its message as it will be published, and what ranks it."""

    task_id: str
    msisdn: str
    region: str
    kind: str
    priority: str
    light: str
    saved: float  # expected saved revenue, fen (rules.capacity.expected_saved_fen)
    due_by_ms: int
    created_at_ms: int
    partition: int  # of the subscriber: whose worker publishes it once released
    task: bytes  # the task message, as decided (its created_at stays the decision time)
    headers: tuple[tuple[str, bytes], ...]  # its CloudEvents headers

    @property
    def waiting(self) -> Waiting:
        return Waiting(self.task_id, self.saved, self.due_by_ms, self.created_at_ms)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "task_id": self.task_id, "msisdn": self.msisdn, "region": self.region, "kind": self.kind,
            "priority": self.priority, "light": self.light, "saved": self.saved, "due_by_ms": self.due_by_ms,
            "created_at_ms": self.created_at_ms, "partition": self.partition, "task": self.task.decode(),
            "headers": [[k, v.decode()] for k, v in self.headers],
        })

    @classmethod
    def from_json(cls, raw: bytes | str) -> Entry:
        doc = orjson.loads(raw)
        return cls(str(doc["task_id"]), str(doc["msisdn"]), str(doc["region"]), str(doc["kind"]),
                   str(doc["priority"]), str(doc["light"]), float(doc["saved"]), int(doc["due_by_ms"]),
                   int(doc["created_at_ms"]), int(doc["partition"]), str(doc["task"]).encode(),
                   tuple((str(k), str(v).encode()) for k, v in doc["headers"]))

    def feed_fields(self, status: str, reason: str) -> list[str | bytes]:
        return ["task_id", self.task_id, "msisdn", self.msisdn, "region", self.region, "channel", "callcentre",
                "kind", self.kind, "priority", self.priority, "light", self.light, "status", status,
                "reason", reason, "task", self.task]

    def as_task(self) -> Task:
        """Return the task as far as the outcome store's issued count needs it."""
        doc = orjson.loads(self.task)
        return Task(task_id=self.task_id, msisdn=self.msisdn, channel="callcentre", kind=doc["kind"],
                    priority=doc["priority"], light=doc.get("light"), previous_light=doc.get("previous_light"),
                    reasons=(), offer=None, region=self.region, brand=str(doc.get("brand", "")),
                    segment=doc.get("segment"), created_at_ms=self.created_at_ms, due_by_ms=self.due_by_ms,
                    send_after_ms=None, rule_set=str(doc.get("rule_set", "")), template=None, vars=None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A released or expired task waiting in a partition's outbox."""

    status: Delivered
    entry: Entry


# Admit a call-centre task the policy issued: a slot of its day when the day's release is done and
# calls are left, else the queue with its `queued` decision and feed entry, all at once. A task is
# admitted once; a retry or a replay gets the first answer (`held_...`).
_ADMIT: Final = """
local held = redis.call('GET', KEYS[1])
if held then return 'held_' .. held end
local used = 'used:' .. ARGV[7]
if redis.call('HEXISTS', KEYS[2], 'released') == 1
    and tonumber(redis.call('HGET', KEYS[2], used) or '0') < tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[2], used, 1)
  redis.call('SET', KEYS[1], 'slot', 'EX', ARGV[2])
  return 'slot'
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('SET', KEYS[1], 'queued', 'EX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[2])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', unpack(ARGV, 8))
return 'queued'
"""

# Move a queued task's decision marker to `released:` / `expired:` with its feed entry, once: a
# retry whose first attempt succeeded finds its own marker and still returns 1.
_SETTLE: Final = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then return 1 end
if held and string.sub(held, 1, 7) ~= 'queued:' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return 1
"""


class CapacityQueue:
    """The capacity queues of the regions in `limits` (calls per local day), in Redis."""

    def __init__(self, client: Redis, *, limits: Mapping[str, int], partitions: int, tz: tzinfo,
                 backoff: Backoff = DEFAULT_BACKOFF, ttl_s: int = CLAIM_TTL_S, feed_maxlen: int = FEED_MAXLEN) -> None:
        self.client = client
        self.limits = dict(limits)
        self.partitions = partitions
        self.tz = tz
        self.ttl_s = ttl_s
        self.feed_maxlen = feed_maxlen
        self._calls = Retrier(describe(client), REDIS_TRANSIENT, backoff)
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)

    @property
    def degraded(self) -> bool:
        """Whether calls are failing right now (they are being retried)."""
        return self._calls.degraded

    def stop(self) -> None:
        """Make calls waiting out an outage, and all later calls, raise `Stopped`."""
        self._calls.stop()

    def limited(self, task: Task) -> bool:
        """Say whether `task` goes through a queue: a call-centre task of a region with a capacity."""
        return task.channel == "callcentre" and task.region in self.limits

    def partition_of(self, msisdn: str) -> int:
        """Return the input partition of `msisdn` (Kafka's murmur2, as the producers use)."""
        return int(murmur2(msisdn.encode()) & 0x7FFFFFFF) % self.partitions

    async def admit(self, entry: Entry, day: date) -> Admission:
        """Take a call of `day` for `entry` or queue it; return which, or the first answer again.

        Called by TaskSink.handle when the policy issued a call-centre task of a limited region,
        before its publication is claimed: `slot` means publish it now, anything else not.
        """
        marker = f"queued:{uuid.uuid4().hex}"
        keys = [admitted_key(entry.task_id), day_key(day), queue_key(entry.region),
                decision_key(entry.task_id), FEED]
        args: list[Any] = [self.limits[entry.region], self.ttl_s, entry.task_id, entry.to_json(), marker,
                           self.feed_maxlen, entry.region, *entry.feed_fields("queued", "")]

        async def op() -> Admission:
            answer = await self._admit(keys=keys, args=args)
            text = _text(answer)
            for admission in ("slot", "queued", "held_slot", "held_queued"):
                if text == admission:
                    return admission
            raise ValueError(f"unexpected admission {text!r}")

        return await self._calls.call(f"admission of task {entry.task_id}", op)

    async def register(self, partitions: set[int]) -> None:
        """Add `partitions` to those every release waits for. Called by TaskSink.register."""
        await self._calls.call("registration of partitions",
                               lambda: self.client.sadd(PARTITIONS, *sorted(partitions)))

    async def arrive(self, partition: int, day: date) -> None:
        """Record that `partition`'s event time passed `day`'s 08:00.

        Called by TaskSink.morning when it does, before the release is tried.
        """
        arrived = arrived_key(day)

        async def op() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.sadd(PARTITIONS, partition)
                pipe.sadd(arrived, partition)
                pipe.expire(arrived, DAY_TTL_S)
                await pipe.execute()

        await self._calls.call(f"arrival of partition {partition} at {day.isoformat()}", op)

    async def release(self, day: date, at_ms: int) -> tuple[bool, int]:
        """Release `day`'s calls of every region at `at_ms` (its 08:00) once every partition has
        arrived; return whether the day is released (now or before) and how many tasks this call
        moved to outboxes (released and expired).

        Called by TaskSink.morning after `arrive`, and again while the day waits for partitions.
        """
        day_k, arrived_k = day_key(day), arrived_key(day)
        regions = sorted(self.limits)
        queues = [queue_key(r) for r in regions]

        async def op() -> tuple[bool, int]:
            async with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(day_k, arrived_k, PARTITIONS, *queues)
                        if await pipe.hexists(day_k, "released"):
                            return True, 0
                        if await pipe.scard(PARTITIONS) > await pipe.scard(arrived_k):
                            return False, 0  # the last partition to arrive releases
                        plans = [await self._plan(pipe, day_k, region, at_ms) for region in regions]
                        pipe.multi()  # type: ignore[no-untyped-call]
                        moved = 0
                        for region, queue, (entries, plan) in zip(regions, queues, plans):
                            ids = []
                            for status, group in (("released", plan.released), ("expired", plan.expired)):
                                for w in group:
                                    e = entries[w.task_id]
                                    pipe.hset(outbox_key(e.partition), w.task_id,
                                              orjson.dumps({"status": status, "entry": e.to_json().decode()}))
                                    ids.append(w.task_id)
                            if ids:
                                pipe.hdel(queue, *ids)
                            pipe.hincrby(day_k, f"used:{region}", len(plan.released))
                            moved += len(ids)
                        pipe.hset(day_k, "released", at_ms)
                        pipe.expire(day_k, DAY_TTL_S)
                        await pipe.execute()
                        for region, (entries, plan) in zip(regions, plans):
                            if plan.released or plan.expired:
                                log.info("capacity of %s on %s: %d released (%d calls a day), %d expired, %d left "
                                         "waiting", region, day.isoformat(), len(plan.released), self.limits[region],
                                         len(plan.expired), len(entries) - len(plan.released) - len(plan.expired))
                        return True, moved
                    except WatchError:
                        continue  # a task was queued, a partition arrived or the day was released: look again

        return await self._calls.call(f"release of {day.isoformat()}", op)

    async def _plan(self, pipe: Any, day_k: str, region: str, at_ms: int) -> tuple[dict[str, Entry], Release]:
        """Read `region`'s queue and calls used (inside the release's WATCH); return it and what to release."""
        used = int(await pipe.hget(day_k, f"used:{region}") or 0)
        entries: dict[str, Entry] = {}
        for task_id, raw in (await pipe.hgetall(queue_key(region))).items():
            try:
                entries[_text(task_id)] = Entry.from_json(raw)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("capacity queue of %s: unreadable entry %s left in place (%s)", region, _text(task_id),
                          type(exc).__name__)
        return entries, select((e.waiting for e in entries.values()), at_ms, self.limits[region] - used)

    async def outbox(self, partition: int) -> list[Delivery]:
        """Return what releases gave `partition`'s worker to publish or expire, highest ranked first.

        Called by TaskSink.morning after the releases (and after every load, so that a delivery
        a crash interrupted is finished).
        """
        raw = await self._calls.call(f"outbox of partition {partition}",
                                     lambda: self.client.hgetall(outbox_key(partition)))
        out: list[Delivery] = []
        for task_id, value in raw.items():
            try:
                doc = orjson.loads(value)
                status: Delivered = "released" if doc["status"] == "released" else "expired"
                out.append(Delivery(status, Entry.from_json(doc["entry"])))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("capacity outbox of partition %d: unreadable entry %s left in place (%s)", partition,
                          _text(task_id), type(exc).__name__)
        out.sort(key=lambda d: (d.status != "released", rank_key(d.entry.waiting)))
        return out

    async def settle(self, delivery: Delivery) -> bool:
        """Write the delivery's decision (`released` or `expired`) and its feed entry if not yet
        written; say whether this call wrote it. Called once the released message is acknowledged."""
        e = delivery.entry
        marker = f"{delivery.status}:{uuid.uuid4().hex}"
        reason = "expired" if delivery.status == "expired" else ""
        args: list[Any] = [marker, self.ttl_s, self.feed_maxlen, *e.feed_fields(delivery.status, reason)]

        async def op() -> bool:
            return bool(await self._settle(keys=[decision_key(e.task_id), FEED], args=args))

        return await self._calls.call(f"{delivery.status} decision of task {e.task_id}", op)

    async def done(self, partition: int, task_id: str) -> None:
        """Remove a delivered task from `partition`'s outbox; its records are all written."""
        await self._calls.call(f"outbox of partition {partition}",
                               lambda: self.client.hdel(outbox_key(partition), task_id))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
