"""The policy store in Redis (CONTRACT §3): consent, contact history, the feed, publication claims.

Redis is a dependency here, not a cache. Every call waits out an outage: it retries on
connection errors and timeouts with exponential backoff until Redis answers or `stop()` is
called (then it raises `Stopped`), and never answers from a guess. `degraded` is True while
calls are failing.

Keys (CONTRACT §3 plus two of churnlight's own, all under `churnlight:`):
- `churnlight:optout:sms`, `churnlight:dnc`: sets written by other systems; only read here.
- `churnlight:contact:{msisdn}`: hash channel -> ISO 8601 event time of the last retention
  contact, shared with other campaign systems: read leniently, and only ever moved forward.
- `churnlight:feed`: stream, one entry per task decision, trimmed approximately to `feed_maxlen`.
- `churnlight:task:{task_id}`: `pending` once a publication is claimed, `sent` once the broker
  acknowledged it; expires after 30 days.
- `churnlight:decision:{task_id}`: the first decision of a task (`issued` or the suppression
  reason), written with its feed entry in one script so that a task is in the feed at most once.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final, Literal, NamedTuple

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rules.event_types import mask
from rules.policy import SUPPRESS_REASONS, Decision, Status, SuppressReason
from rules.localtime import iso_time
from rules.vocabulary import Channel
from sinks.consent import DNC, OPTOUT_SMS
from sinks.retry import DEFAULT_BACKOFF, Backoff, Retrier, Stopped

__all__ = ["DEFAULT_BACKOFF", "Backoff", "Retrier", "Stopped"]  # re-exported for the worker

log = logging.getLogger(__name__)

FEED: Final = "churnlight:feed"
FEED_MAXLEN: Final = 100_000
# Long enough to cover any replay of the task topics (retained 4 weeks) plus margin.
CLAIM_TTL_S: Final = 30 * 24 * 3600

Claim = Literal["new", "pending", "sent"]
Published = Literal["pending", "sent"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NUMBER: Final = re.compile(r"^\d{9,14}(\.\d+)?$")
# Epoch numbers at or above this are milliseconds (1973 in ms; year 5138 in seconds).
_EPOCH_MS_FROM: Final = 100_000_000_000

REDIS_TRANSIENT: Final[tuple[type[Exception], ...]] = (RedisConnectionError, RedisTimeoutError)


def contact_key(msisdn: str) -> str:
    return f"churnlight:contact:{msisdn}"


def task_key(task_id: str) -> str:
    return f"churnlight:task:{task_id}"


def decision_key(task_id: str) -> str:
    return f"churnlight:decision:{task_id}"


class Recorded(NamedTuple):
    """The first decision recorded for a task."""

    status: Status
    reason: SuppressReason | None


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the contact policy needs from Redis, read in one round trip."""

    opted_out_sms: bool
    dnc: bool
    last_contact_ms: int | None  # for the channel asked about; None when absent or unreadable
    # Only when `lookup` was given a task_id: its publication claim and its recorded decision.
    published: Published | None = None
    decided: Recorded | None = None


def parse_contact_ms(raw: bytes | str | None, tz: tzinfo) -> int | None:
    """Return the epoch ms of a contact time written by any campaign system, or None if unreadable.

    Accepts ISO 8601 with an offset or `Z`, a space instead of `T`, fractions, a bare date,
    a time without offset (taken as operator-local), and epoch seconds or milliseconds.
    """
    if raw is None:
        return None
    text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).strip()
    if not text:
        return None
    if _EPOCH_NUMBER.match(text):
        number = float(text)
        return int(number) if number >= _EPOCH_MS_FROM else round(number * 1000)
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _recorded(value: Any) -> Recorded | None:
    text = _text(value)
    if text is None:
        return None
    outcome = text.partition(":")[0]
    if outcome == "issued":
        return Recorded("issued", None)
    for reason in SUPPRESS_REASONS:
        if outcome == reason:
            return Recorded("suppressed", reason)
    return None


def describe(client: Redis) -> str:
    """Name the Redis server of `client` for logs: host, port and db, never credentials."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"Redis at unix:{kwargs['path']}"
    return f"Redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


# Record a task's first decision and its feed entry atomically: a retry whose first attempt
# succeeded but lost the reply finds its own marker (same attempt token) and still returns 1,
# so the caller counts the decision exactly once; anyone else's marker returns 0.
_RECORD_DECISION: Final = """
local held = redis.call('GET', KEYS[1])
if held then
  if held == ARGV[1] then return 1 end
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return 1
"""


# Set one channel of a contact hash only if it still holds what the caller read (ARGV[3] = "0":
# absent). Returns 0 when another writer got there first, and the caller reads again.
_SET_CONTACT: Final = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  if held ~= ARGV[4] then return 0 end
elseif held then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class PolicyStore:
    """Consent, contact history, the feed and publication claims in Redis (CONTRACT §3)."""

    def __init__(
        self,
        client: Redis,
        *,
        tz: tzinfo,
        feed_maxlen: int = FEED_MAXLEN,
        claim_ttl_s: int = CLAIM_TTL_S,
        backoff: Backoff = DEFAULT_BACKOFF,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.tz = tz
        self.feed_maxlen = feed_maxlen
        self.claim_ttl_s = claim_ttl_s
        self._owns_client = owns_client
        self._calls = Retrier(describe(client), REDIS_TRANSIENT, backoff)
        self._record_decision = client.register_script(_RECORD_DECISION)
        self._set_contact = client.register_script(_SET_CONTACT)

    @classmethod
    def from_url(cls, url: str, *, tz: tzinfo, **options: Any) -> PolicyStore:
        """Connect to the Redis at `url` (`redis://`, `rediss://` or `unix://`); see __init__."""
        client = Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            # One immediate reconnect covers a pooled connection that the server closed; a real
            # outage is left to the store's own backoff, which knows to flag `degraded`.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        return cls(client, tz=tz, owns_client=True, **options)

    def __repr__(self) -> str:
        return f"PolicyStore({self._calls.name}, degraded={self.degraded})"

    @property
    def degraded(self) -> bool:
        """Whether calls are failing right now (they are being retried)."""
        return self._calls.degraded

    def stop(self) -> None:
        """Make calls waiting out an outage, and all later calls, raise `Stopped`."""
        self._calls.stop()

    async def aclose(self) -> None:
        """Stop, and close the connection pool if this store opened it."""
        self.stop()
        if self._owns_client:
            await self.client.aclose()

    # -- reads -----------------------------------------------------------------------------

    async def lookup(self, msisdn: str, channel: Channel, *, task_id: str | None = None) -> Lookup:
        """Read the consent sets and the channel's last contact (and the task's state) at once."""

        async def op() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.sismember(OPTOUT_SMS, msisdn)
                pipe.sismember(DNC, msisdn)
                pipe.hget(contact_key(msisdn), channel)
                if task_id is not None:
                    pipe.get(task_key(task_id))
                    pipe.get(decision_key(task_id))
                return list(await pipe.execute())

        replies = await self._calls.call(f"lookup for {mask(msisdn)}", op)
        raw_contact = replies[2]
        last_contact_ms = parse_contact_ms(raw_contact, self.tz)
        if raw_contact is not None and last_contact_ms is None:
            log.warning(
                "unreadable %s contact time %r for %s ignored (treated as no contact)",
                channel, _text(raw_contact), mask(msisdn),
            )
        published: Published | None = None
        decided: Recorded | None = None
        if task_id is not None:
            state = _text(replies[3])
            published = "sent" if state == "sent" else "pending" if state is not None else None
            decided = _recorded(replies[4])
        return Lookup(bool(replies[0]), bool(replies[1]), last_contact_ms, published, decided)

    # -- publication claims ----------------------------------------------------------------

    async def claim(self, task_id: str) -> Claim:
        """Claim the publication of `task_id`: `new` and `pending` mean send it, `sent` never."""
        key = task_key(task_id)

        async def op() -> Claim:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(key, "pending", nx=True, ex=self.claim_ttl_s)
                pipe.get(key)
                created, held = await pipe.execute()
            if created:
                return "new"
            # Anything but `sent` (our own claim whose reply was lost, a crashed attempt, or a
            # claim that expired between the two commands) may not have reached the broker.
            return "sent" if _text(held) == "sent" else "pending"

        return await self._calls.call(f"claim of task {task_id}", op)

    async def mark_sent(self, task_id: str) -> None:
        """Record that the broker acknowledged `task_id`, keeping the claim's expiry."""
        key = task_key(task_id)

        async def op() -> None:
            if not await self.client.set(key, "sent", xx=True, keepttl=True):
                # The claim vanished (expired, or the data was lost): `sent` still needs an expiry.
                await self.client.set(key, "sent", ex=self.claim_ttl_s)

        await self._calls.call(f"mark_sent of task {task_id}", op)

    # -- writes ----------------------------------------------------------------------------

    async def record_contact(self, msisdn: str, channel: Channel, at_ms: int) -> bool:
        """Make `at_ms` the channel's last contact unless a later one is recorded; say if it moved."""
        key = contact_key(msisdn)
        value = iso_time(at_ms, self.tz)

        async def op() -> bool:
            # Compare-and-set, since other campaign systems write this hash too: read and parse
            # here (Lua cannot parse their time formats), write only if nobody changed it since.
            while True:
                held = await self.client.hget(key, channel)
                held_ms = parse_contact_ms(held, self.tz)
                if held_ms is not None and held_ms >= at_ms:
                    return False
                if held is not None and held_ms is None:
                    log.warning("unreadable %s contact time %r for %s replaced",
                                channel, _text(held), mask(msisdn))
                written = await self._set_contact(
                    keys=[key], args=[channel, value, "0" if held is None else "1", held or ""]
                )
                if written:
                    return True

        return await self._calls.call(f"record_contact for {mask(msisdn)}", op)

    async def record_decision(self, decision: Decision, task_json: bytes | None = None) -> bool:
        """Append the decision to the feed if it is the task's first; say whether it was.

        `task_json` is the task message as published; rendered from the decision when None.
        """
        task = decision.task
        if task_json is None:
            task_json = orjson.dumps(task.to_message(self.tz))
        outcome = decision.reason if decision.reason is not None else decision.status
        # The token tells this call's own marker from another's across retries.
        marker = f"{outcome}:{uuid.uuid4().hex}"
        fields: list[str | bytes] = [
            "task_id", task.task_id,
            "msisdn", task.msisdn,
            "region", task.region,
            "channel", task.channel,
            "kind", task.kind,
            "priority", task.priority,
            "light", task.light or "",
            "status", decision.status,
            "reason", decision.reason or "",
            "task", task_json,
        ]

        async def op() -> bool:
            created = await self._record_decision(
                keys=[decision_key(task.task_id), FEED],
                args=[marker, self.claim_ttl_s, self.feed_maxlen, *fields],
            )
            return bool(created)

        return await self._calls.call(f"record_decision of task {task.task_id}", op)
