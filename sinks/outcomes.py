"""Task outcomes and the task-completion KPI in Redis (CONTRACT §1 `retention.outcomes`, §9).

Redis holds the figures, so every worker reports the same ones and a restart keeps them. Like
`PolicyStore`, every call waits out a Redis outage (same `Retrier`, same backoff) until Redis
answers or `stop()` is called, then raises `Stopped`.

Keys (churnlight's own, under `churnlight:`):
- `churnlight:taskinfo:{task_id}`: hash of an issued task: `region`, `channel`, `kind`, `month`
  (operator-local `YYYY-MM` of `created_at`), `created_at`, `kpi` (its KPI key); then one marker
  `o:{status}` per outcome status received, `status` / `status_ts_ms` (the latest outcome by event
  time) and `completed` (the status of its first final outcome). Expires 62 days after the issue:
  longer than the publication claims (30 days), so a replayed task is never counted twice, and
  than the outcomes topic's retention (35 days).
- `churnlight:kpi:{YYYY-MM}:{region}`: hash `issued`, `completed` for the tasks created in that
  month and region. No expiry: a few small keys per month and region, kept for reports.

Counting is exact over an at-least-once stream: each count is written by one Lua script together
with the marker that makes it once-only (the taskinfo hash for `issued`, its `completed` field
for `completed`, `o:{status}` for an outcome). A retried call whose first attempt succeeded but
lost its reply finds its own marker (an attempt token) and answers as the first attempt did.

An outcome can overtake its task's `record_issued` (another agent, a replay burst): it is then
`unknown_task` for the caller to count, but parked on the task's hash for 7 days, and a later
`record_issued` of that task counts the completion it brought.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import tzinfo
from typing import Any, Final, Literal

from redis.asyncio import Redis

from rules.event_types import MONTH_RE, Outcome, OutcomeStatus, mask
from rules.kpi import FINAL_STATUSES, TaskCounts, is_final, local_month
from rules.localtime import iso_time
from rules.task_message import Task
from sinks.redis_store import REDIS_TRANSIENT, describe
from sinks.retry import DEFAULT_BACKOFF, Backoff, Retrier, Stopped

log = logging.getLogger(__name__)

__all__ = [
    "PARKED_TTL_S",
    "TASKINFO_TTL_S",
    "OutcomeResult",
    "OutcomeStore",
    "Stopped",
    "kpi_key",
    "taskinfo_key",
]

OutcomeResult = Literal["recorded", "duplicate", "unknown_task"]

TASKINFO_TTL_S: Final = 62 * 24 * 3600
# How long an outcome of a task not (yet) issued waits for its task.
PARKED_TTL_S: Final = 7 * 24 * 3600
KPI_PREFIX: Final = "churnlight:kpi:"
# A read-then-script race can only repeat while the task changes state (issued, or expired);
# more rounds than this mean something else is rewriting the hash.
_MAX_ROUNDS: Final = 10


def taskinfo_key(task_id: str) -> str:
    return f"churnlight:taskinfo:{task_id}"


def kpi_key(month: str, region: str) -> str:
    return f"{KPI_PREFIX}{month}:{region}"


# KEYS: taskinfo, kpi. ARGV: ttl_s, kpi key, region, channel, kind, month, created_at.
# The task's first call creates its info and counts it (and a completion parked before it);
# any later call, a retry with a lost reply included, finds `kpi` and counts nothing.
_ISSUE: Final = """
if redis.call('HEXISTS', KEYS[1], 'kpi') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'kpi', ARGV[2], 'region', ARGV[3], 'channel', ARGV[4],
           'kind', ARGV[5], 'month', ARGV[6], 'created_at', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'issued', 1)
if redis.call('HEXISTS', KEYS[1], 'completed') == 1 then
  redis.call('HINCRBY', KEYS[2], 'completed', 1)
end
return 1
"""

# KEYS: taskinfo [, kpi as read from taskinfo]. ARGV: token, status, ts_ms, final ("1"/"0"),
# parked_ttl_s. The caller read the task's `kpi` field first, so that the script declares every
# key it writes; `retry` means the task changed state since (issued, or expired) and the caller
# reads again.
_OUTCOME: Final = """
local kpi = redis.call('HGET', KEYS[1], 'kpi')
if (kpi or false) ~= (KEYS[2] or false) then return 'retry' end
local known = kpi ~= false
local marker = 'o:' .. ARGV[2]
local held = redis.call('HGET', KEYS[1], marker)
if held then
  if not known then return 'unknown_task' end
  if held == ARGV[1] then return 'recorded' end
  return 'duplicate'
end
redis.call('HSET', KEYS[1], marker, ARGV[1])
if not known and redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
local latest = tonumber(redis.call('HGET', KEYS[1], 'status_ts_ms'))
if not latest or tonumber(ARGV[3]) >= latest then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'status_ts_ms', ARGV[3])
end
if ARGV[4] == '1' and redis.call('HSETNX', KEYS[1], 'completed', ARGV[2]) == 1 and known then
  redis.call('HINCRBY', KEYS[2], 'completed', 1)
end
if known then return 'recorded' end
return 'unknown_task'
"""

_RESULTS: Final[dict[str, OutcomeResult]] = {
    "recorded": "recorded",
    "duplicate": "duplicate",
    "unknown_task": "unknown_task",
}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class OutcomeStore:
    """Issued tasks, their outcomes and the completion counts per month and region, in Redis."""

    def __init__(
        self,
        client: Redis,
        *,
        tz: tzinfo,
        backoff: Backoff = DEFAULT_BACKOFF,
        final_statuses: frozenset[OutcomeStatus] = FINAL_STATUSES,
        taskinfo_ttl_s: int = TASKINFO_TTL_S,
        parked_ttl_s: int = PARKED_TTL_S,
    ) -> None:
        self.client = client
        self.tz = tz
        self.final_statuses = final_statuses
        self.taskinfo_ttl_s = taskinfo_ttl_s
        self.parked_ttl_s = parked_ttl_s
        self._calls = Retrier(describe(client), REDIS_TRANSIENT, backoff)
        self._issue = client.register_script(_ISSUE)
        self._outcome = client.register_script(_OUTCOME)

    def __repr__(self) -> str:
        return f"OutcomeStore({self._calls.name}, degraded={self.degraded})"

    @property
    def degraded(self) -> bool:
        """Whether calls are failing right now (they are being retried)."""
        return self._calls.degraded

    def stop(self) -> None:
        """Make calls waiting out an outage, and all later calls, raise `Stopped`."""
        self._calls.stop()

    async def record_issued(self, task: Task) -> None:
        """Count `task` as issued in its local month and region, once per task_id.

        Call it once the task was sent; calling it again (a replay, a retry) counts nothing.
        """
        month = local_month(task.created_at_ms, self.tz)
        info, kpi = taskinfo_key(task.task_id), kpi_key(month, task.region)
        args: list[str | int] = [self.taskinfo_ttl_s, kpi, task.region, task.channel, task.kind, month,
                iso_time(task.created_at_ms, self.tz)]

        async def op() -> None:
            await self._issue(keys=[info, kpi], args=args)

        await self._calls.call(f"record_issued of task {task.task_id}", op)

    async def record_outcome(self, outcome: Outcome) -> OutcomeResult:
        """Record `outcome` once per (task_id, status); count the task's first final outcome.

        `unknown_task`: no issued task has this id (yet); the caller counts it.
        """
        info = taskinfo_key(outcome.task_id)
        final = "1" if is_final(outcome.status, self.final_statuses) else "0"
        # The token tells this call's own marker from another's across retries.
        token = f"{outcome.ts_ms}:{uuid.uuid4().hex}"
        args: list[str | int] = [token, outcome.status, outcome.ts_ms, final, self.parked_ttl_s]

        async def op() -> OutcomeResult:
            for _ in range(_MAX_ROUNDS):
                kpi = _text(await self.client.hget(info, "kpi"))
                keys = [info] if kpi is None else [info, kpi]
                reply = _text(await self._outcome(keys=keys, args=args))
                if reply != "retry":
                    assert reply is not None
                    return _RESULTS[reply]
            raise RuntimeError(f"task {outcome.task_id} kept changing while its outcome was recorded")

        result = await self._calls.call(f"record_outcome of task {outcome.task_id}", op)
        if result == "unknown_task":
            log.debug("outcome %s of unknown task %s for %s parked", outcome.status, outcome.task_id,
                      mask(outcome.msisdn))
        return result

    async def kpis(self, month: str, regions: Iterable[str] | None = None) -> dict[str, TaskCounts]:
        """Return (issued, completed) by region for tasks created in local `month` (`YYYY-MM`).

        With `regions`, each of them is in the answer ((0, 0) when it has none); without, every
        region that issued a task that month.
        """
        if not MONTH_RE.match(month):
            raise ValueError(f"month must be YYYY-MM, not {month!r}")
        prefix = kpi_key(month, "")
        asked = None if regions is None else list(regions)  # an iterator would not survive a retry

        async def op() -> dict[str, TaskCounts]:
            if asked is None:
                wanted = sorted({
                    (_text(key) or "")[len(prefix):]
                    async for key in self.client.scan_iter(match=f"{prefix}*", count=1000)
                })
            else:
                wanted = asked
            async with self.client.pipeline(transaction=False) as pipe:
                for region in wanted:
                    pipe.hmget(kpi_key(month, region), ["issued", "completed"])
                replies = await pipe.execute()
            return {
                region: TaskCounts(int(issued or 0), int(completed or 0))
                for region, (issued, completed) in zip(wanted, replies)
            }

        return await self._calls.call(f"kpis of {month}", op)
