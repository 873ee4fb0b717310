"""What the console reads: the feed, contacts, outcomes and KPIs in Redis, and the workers' HTTP.

The console never touches the stream. Keys are those of sinks/redis_store.py and sinks/outcomes.py,
plus its own daily light snapshots (`churnlight:console:lights:{YYYY-MM-DD}`, hash
`light|region|brand` -> count, kept 40 days), written when it reads the workers' counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import aiohttp
import orjson
from redis.asyncio import Redis

from sinks.outcomes import KPI_PREFIX, taskinfo_key
from sinks.redis_store import FEED, contact_key

log = logging.getLogger(__name__)

SNAPSHOT_PREFIX: Final = "churnlight:console:lights:"
SNAPSHOT_TTL_S: Final = 40 * 24 * 3600
PRIORITY_RANK: Final = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
LIGHT_KINDS: Final = ("yellow_light", "red_light", "black_light")
FILTERS: Final = ("region", "brand", "channel", "kind", "priority", "status")
# Task completion and churn targets of seed 004.
COMPLETION_TARGET: Final = 0.35
CHURN_CEILING: Final = 0.075
# The CSV export holds at most the feed's length; the call list asks the workers for the ARPU of
# this many tasks at most (the rest rank by priority alone).
FEED_CSV_MAX: Final = 100_000
CALLS_ASKED_MAX: Final = 1000


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_entry(entry_id: Any, fields: dict[Any, Any]) -> dict[str, Any]:
    """Turn one `churnlight:feed` entry into a flat row (the full msisdn still in it)."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    try:
        task = orjson.loads(f.get("task", "{}"))
    except orjson.JSONDecodeError:
        task = {}
    eid = _text(entry_id)
    offer = task.get("offer") or {}
    return {
        "id": eid,
        "decided_ms": int(eid.split("-")[0]),
        "task_id": f.get("task_id", ""),
        "msisdn": f.get("msisdn", ""),
        "region": f.get("region", ""),
        "brand": task.get("brand") or "",
        "segment": task.get("segment") or "",
        "channel": f.get("channel", ""),
        "kind": f.get("kind", ""),
        "priority": f.get("priority", ""),
        "light": f.get("light", ""),
        "previous_light": task.get("previous_light") or "",
        "status": f.get("status", ""),
        "reason": f.get("reason", ""),
        "offer": offer.get("code") or "",
        "offer_detail": offer.get("detail") or "",
        "created_at": task.get("created_at") or "",
        "due_by": task.get("due_by") or "",
        "send_after": task.get("send_after") or "",
        "reasons": [r.get("code", "") for r in task.get("reasons") or [] if isinstance(r, dict)],
        "reason_values": task.get("reasons") or [],
        "risk": task.get("risk"),
        "risk_reasons": task.get("risk_reasons") or [],
    }


def matches(row: dict[str, Any], wanted: dict[str, str]) -> bool:
    """Tell whether `row` passes every filter in `wanted` (empty values pass)."""
    return all(not value or row.get(name) == value for name, value in wanted.items())


@dataclass
class Console:
    """The console's view of Redis and of the workers."""

    redis: Redis
    workers: list[str]
    tz: ZoneInfo
    token: str | None = None
    http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=5))

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        await self.redis.aclose()

    # -- the feed ------------------------------------------------------------------------------------

    async def recent(self, wanted: dict[str, str], limit: int = 500) -> list[dict[str, Any]]:
        """Return up to `limit` newest feed rows passing `wanted`, newest first."""
        out: list[dict[str, Any]] = []
        upper = "+"
        while len(out) < limit:
            chunk = await self.redis.xrevrange(FEED, max=upper, min="-", count=2000)
            if not chunk:
                break
            for entry_id, fields in chunk:
                row = parse_entry(entry_id, fields)
                if matches(row, wanted):
                    out.append(row)
                    if len(out) >= limit:
                        break
            upper = "(" + _text(chunk[-1][0])
        return out

    async def all_rows(self) -> list[dict[str, Any]]:
        """Return every feed row, oldest first."""
        rows: list[dict[str, Any]] = []
        lower = "-"
        while True:
            chunk = await self.redis.xrange(FEED, min=lower, max="+", count=5000)
            if not chunk:
                return rows
            rows.extend(parse_entry(entry_id, fields) for entry_id, fields in chunk)
            lower = "(" + _text(chunk[-1][0])

    async def last_id(self) -> str:
        """Return the id of the newest feed entry, or `0-0`."""
        newest = await self.redis.xrevrange(FEED, count=1)
        return _text(newest[0][0]) if newest else "0-0"

    # -- the workers ---------------------------------------------------------------------------------

    async def _get(self, url: str) -> tuple[int, Any]:
        assert self.http is not None
        try:
            async with self.http.get(url) as resp:
                body = await resp.read()
                return resp.status, orjson.loads(body) if body else None
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
            log.warning("worker at %s did not answer: %s", url.split("/subscribers/")[0], type(exc).__name__)
            return 0, None

    async def light_counts(self) -> tuple[dict[tuple[str, str, str], int], list[dict[str, Any]]]:
        """Sum /lights/summary over all workers; also say which answered (and their partitions)."""
        answers = await asyncio.gather(*(self._get(f"{w}/lights/summary") for w in self.workers))
        counts: Counter[tuple[str, str, str]] = Counter()
        seen_partitions: set[int] = set()
        workers = []
        for url, (status, doc) in zip(self.workers, answers):
            ok = status == 200 and isinstance(doc, dict)
            workers.append({"url": url, "ok": ok, "partitions": doc.get("partitions", []) if ok else []})
            if not ok:
                continue
            # During a rebalance two workers may both report a partition: count it once.
            if seen_partitions & set(doc.get("partitions", [])):
                continue
            seen_partitions |= set(doc.get("partitions", []))
            for row in doc.get("counts", []):
                counts[(row["light"], row["region"], row["brand"])] += int(row["count"])
        if any(w["ok"] for w in workers):
            await self._snapshot(counts)
        return dict(counts), workers

    async def _snapshot(self, counts: dict[tuple[str, str, str], int]) -> None:
        today = datetime.now(self.tz).date().isoformat()
        key = SNAPSHOT_PREFIX + today
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if counts:
                pipe.hset(key, mapping={"|".join(k): n for k, n in counts.items()})
            pipe.expire(key, SNAPSHOT_TTL_S)
            await pipe.execute()

    async def snapshots(self, days: int = 30) -> dict[str, dict[str, int]]:
        """Return {day: {light: count}} from the console's daily snapshots of the last `days` days."""
        today = datetime.now(self.tz).date()
        wanted = [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in wanted:
                pipe.hgetall(SNAPSHOT_PREFIX + day)
            replies = await pipe.execute()
        out: dict[str, dict[str, int]] = {}
        for day, reply in zip(wanted, replies):
            if not reply:
                continue
            totals: Counter[str] = Counter()
            for k, v in reply.items():
                totals[_text(k).split("|")[0]] += int(v)
            out[day] = dict(totals)
        return out

    async def subscriber(self, msisdn: str) -> tuple[int, dict[str, Any] | None]:
        """Ask a worker (it routes to the owner) for one subscriber; (0, None) when none answers."""
        for url in self.workers:
            status, doc = await self._get(f"{url}/subscribers/{msisdn}")
            if status in (200, 404, 401):
                return status, doc if status == 200 else None
        return 0, None

    async def arpus(self, msisdns: list[str]) -> dict[str, float]:
        """Return the 30-day ARPU of each subscriber the workers know."""
        gate = asyncio.Semaphore(16)

        async def one(m: str) -> tuple[str, float | None]:
            async with gate:
                status, doc = await self.subscriber(m)
            return m, doc.get("arpu") if status == 200 and doc else None

        found = await asyncio.gather(*(one(m) for m in set(msisdns)))
        return {m: float(a) for m, a in found if a is not None}

    # -- contacts, outcomes, KPIs ------------------------------------------------------------------------

    async def contacts(self, msisdn: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in (await self.redis.hgetall(contact_key(msisdn))).items()}

    async def task_infos(self, task_ids: list[str]) -> dict[str, dict[str, str]]:
        """Return each task's outcome hash (status, completed, o:{status} markers) where there is one."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(taskinfo_key(task_id))
            replies = await pipe.execute()
        return {t: {_text(k): _text(v) for k, v in r.items()} for t, r in zip(task_ids, replies) if r}

    async def kpi_months(self) -> list[str]:
        months = {_text(key)[len(KPI_PREFIX):].split(":")[0]
                  async for key in self.redis.scan_iter(match=f"{KPI_PREFIX}*", count=1000)}
        return sorted(months)

    async def kpis(self, month: str) -> dict[str, tuple[int, int]]:
        """Return {region: (issued, completed)} for tasks created in `month`."""
        prefix = f"{KPI_PREFIX}{month}:"
        keys = sorted([_text(k) async for k in self.redis.scan_iter(match=f"{prefix}*", count=1000)])
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, ["issued", "completed"])
            replies = await pipe.execute()
        return {k[len(prefix):]: (int(i or 0), int(c or 0)) for k, (i, c) in zip(keys, replies)}

    async def outcome_counts(self, month: str) -> dict[tuple[str, str], int]:
        """Count the tasks issued in `month` by (channel, latest outcome status or `none`)."""
        keys = [_text(k) async for k in self.redis.scan_iter(match="churnlight:taskinfo:*", count=2000)]
        counts: Counter[tuple[str, str]] = Counter()
        for start in range(0, len(keys), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys[start:start + 1000]:
                    pipe.hmget(key, ["channel", "status", "kpi", "month"])
                for channel, status, kpi, issued_in in await pipe.execute():
                    if kpi is None or _text(issued_in) != month:
                        continue  # another month's, or an outcome parked for a task not issued (yet)
                    counts[(_text(channel), _text(status) if status else "none")] += 1
        return dict(counts)


# How long a follower waits in XREAD for the next entry before it says it is idle.
FOLLOW_BLOCK_MS: Final = 10_000


async def follow(client: Redis, after: str, wanted: dict[str, str], block_ms: int = FOLLOW_BLOCK_MS
                 ) -> AsyncIterator[dict[str, Any] | None]:
    """Yield feed rows after entry `after` passing `wanted` as they arrive; None when idle.

    `client` blocks in XREAD: give each follower a connection of its own, with a socket timeout
    above `block_ms`."""
    while True:
        got = await client.xread({FEED: after}, count=500, block=block_ms)
        if not got:
            yield None
            continue
        for entry_id, fields in got[0][1]:
            after = _text(entry_id)
            row = parse_entry(entry_id, fields)
            if matches(row, wanted):
                yield row


# -- pure figures over feed rows ------------------------------------------------------------------------

def local_day(iso: str, tz: ZoneInfo) -> date | None:
    try:
        return datetime.fromisoformat(iso).astimezone(tz).date()
    except (ValueError, TypeError):
        return None


def call_list(rows: list[dict[str, Any]], infos: dict[str, dict[str, str]], arpus: dict[str, float],
              day: date, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Rank the call-centre tasks open on `day`: created by its end, due no earlier than its start,
    with no final outcome. Scored tasks first by expected saved revenue (risk x 30-day ARPU), then
    the others by priority and ARPU."""
    start = datetime.combine(day, datetime.min.time(), tz)
    end = start + timedelta(days=1)
    out = []
    for row in rows:
        if row["channel"] != "callcentre" or row["status"] not in ("issued", "released"):
            continue
        try:
            created, due = datetime.fromisoformat(row["created_at"]), datetime.fromisoformat(row["due_by"])
        except (ValueError, TypeError):
            continue
        if created >= end or due < start or infos.get(row["task_id"], {}).get("completed"):
            continue
        arpu = arpus.get(row["msisdn"])
        risk = row["risk"] if isinstance(row["risk"], (int, float)) else None
        saved = round(risk * arpu, 2) if risk is not None and arpu is not None else None
        out.append({**row, "arpu": arpu, "saved": saved,
                    "outcome": infos.get(row["task_id"], {}).get("status", "")})
    out.sort(key=lambda r: (r["risk"] is None, -(r["saved"] or 0.0), PRIORITY_RANK.get(r["priority"], 9),
                            -(r["arpu"] or 0.0), r["due_by"]))
    return out


def light_moves(rows: list[dict[str, Any]], tz: ZoneInfo, days: int = 30) -> dict[str, dict[str, int]]:
    """Count light changes that made a task decision, per event day and light, over the last `days`
    days of the feed's event time: {day: {light: n}}."""
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    latest: date | None = None
    for row in rows:
        if row["kind"] not in LIGHT_KINDS or not row["light"]:
            continue
        day = local_day(row["created_at"], tz)
        if day is None:
            continue
        latest = day if latest is None or day > latest else latest
        per_day[day.isoformat()][row["light"]] += 1
    if latest is None:
        return {}
    return {(latest - timedelta(days=n)).isoformat(): dict(per_day.get((latest - timedelta(days=n)).isoformat(), {}))
            for n in range(days - 1, -1, -1)}


def uplift(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Churn of contacted subscribers against the hold-out group, per light and channel.

    A subscriber counts in the group of their first yellow or red light task: `contacted` when it
    was issued (or released from the call-centre queue), `holdout` when the hold-out suppressed it; churned when a later decision in the
    feed says they turned black.
    """
    first: dict[str, tuple[str, str, str, int]] = {}
    black_at: dict[str, int] = {}
    for row in rows:
        m = row["msisdn"]
        if row["light"] == "black":
            black_at[m] = row["decided_ms"]  # the latest: a reactivated subscriber may turn black again
        if m in first or row["kind"] not in ("yellow_light", "red_light"):
            continue
        # A task held for call-centre capacity contacts when it is released (an expired one never does).
        group = ("contacted" if row["status"] in ("issued", "released")
                 else "holdout" if row["reason"] == "holdout" else None)
        if group is not None:
            first[m] = (row["light"], row["channel"], group, row["decided_ms"])
    cells: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: {"contacted": [0, 0], "holdout": [0, 0]})
    for m, (light, channel, group, at) in first.items():
        cell = cells[(light, channel)][group]
        cell[0] += 1
        if black_at.get(m, -1) >= at:
            cell[1] += 1
    out = []
    for (light, channel), groups in sorted(cells.items()):
        c_n, c_churn = groups["contacted"]
        h_n, h_churn = groups["holdout"]
        c_rate = c_churn / c_n if c_n else None
        h_rate = h_churn / h_n if h_n else None
        out.append({"light": light, "channel": channel, "contacted": c_n, "contacted_churned": c_churn,
                    "contacted_rate": c_rate, "holdout": h_n, "holdout_churned": h_churn, "holdout_rate": h_rate,
                    "uplift": None if c_rate is None or h_rate is None else h_rate - c_rate})
    return out
