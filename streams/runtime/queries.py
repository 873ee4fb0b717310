"""What the worker answers about itself over HTTP and in its gauges: health, the lights, one subscriber, KPIs."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING

from rules.kpi import TaskCounts, local_month, region_kpis
from rules.state import local_day
from rules.tasks import iso_time
from sinks.lights import reason_json
from streams.metrics import RegionKpis
from streams.runtime.store import partition_of

if TYPE_CHECKING:
    from streams.runtime.processor import Processor

# A GET /subscribers/{msisdn} answer, a JSON object.
Answer = dict[str, object]


class Queries:
    """Read-only views of a processor's state for the web views and the gauges."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def health(self) -> tuple[bool, Answer]:
        """Say whether the worker has loaded its state, is consuming, and can reach Redis."""
        proc = self.processor
        source = proc.source
        recovered = proc.loaded
        consuming = source.consuming and not proc.group.rebalancing
        tasks = proc.tasks
        degraded = bool(tasks is not None and tasks.degraded)
        broker = source.broker_ok
        ok = recovered and consuming and not degraded and broker
        status = "ok" if ok else ("degraded" if degraded or not broker else "starting")
        return ok, {
            "status": status, "recovered": recovered, "consuming": consuming, "redis": not degraded,
            "broker": broker,
            "partitions": sorted(proc.owned()) if consuming else [],
        }

    def update_lag(self) -> None:
        """Publish consumer lag per input topic and owned partition."""
        proc = self.processor
        clocks = proc.owned_clocks()
        proc.metrics.set_lags(proc.progress.lags(clocks))
        proc.metrics.set_watermarks({p: clock.watermark_ms for p, clock in clocks if clock.watermark_ms is not None})

    def month(self) -> str | None:
        """Return the operator-local month of the newest watermark owned here (event time)."""
        proc = self.processor
        marks = [c.watermark_ms for c in proc.store.clocks.values() if c.watermark_ms is not None]
        return local_month(max(marks), proc.tz) if marks else None

    async def update_kpis(self) -> None:
        """Publish the KPI gauges: this month's task completion (Redis) and the watched base."""
        proc = self.processor
        month = self.month()
        if month is None or proc.outcomes is None:
            return
        label = proc.metrics.regions
        counts: dict[tuple[str, str, str], int] = {}
        for (light, region, brand), n in self.summary().items():
            key = (light, label(region), brand)
            counts[key] = counts.get(key, 0) + n
        tasks: dict[str, TaskCounts] = {}
        for region, c in (await proc.outcomes.kpis(month)).items():
            before = tasks.get(label(region), TaskCounts(0, 0))
            tasks[label(region)] = TaskCounts(before.issued + c.issued, before.completed + c.completed)
        proc.metrics.set_kpis({region: RegionKpis(*k) for region, k in region_kpis(
            tasks, counts).items()})  # type: ignore[arg-type]

    def summary(self) -> dict[tuple[str, str, str], int]:
        """Count watched subscribers by (light, region, brand) over the partitions owned now."""
        proc = self.processor
        counts: dict[tuple[str, str, str], int] = {}
        # Revoked partitions are left out (their state stays until the next load).
        for (light, region, brand), n in proc.store.watched_facets(proc.owned()).items():
            if light is None:
                continue
            k = (light, region or "unknown", brand or "unknown")
            counts[k] = counts.get(k, 0) + n
        return counts

    def subscriber(self, msisdn: str) -> Answer | None:
        """Describe one subscriber owned here, as GET /subscribers/{msisdn} returns it."""
        proc = self.processor
        rules, tz = proc.rules, proc.tz
        p = partition_of(msisdn.encode(), proc.settings.partitions)
        key = msisdn.encode()
        if key not in proc.store.states or p not in proc.owned():
            return None
        state = proc.store.states.peek(key)
        clock = proc.store.clocks.get(p)
        open_day = clock.open_day if clock and clock.open_day else None
        arpu, mou = state.window(open_day, rules.window_days) if open_day else (0, 0)
        c = state.contract
        return {
            "msisdn": msisdn, "light": state.light,
            "light_since": None if state.light_since_ms is None else iso_time(state.light_since_ms, tz),
            "arpu": arpu / 100, "mou": round(mou / 60, 2),
            "window": None if open_day is None else {
                "from": (open_day - timedelta(days=rules.window_days)).isoformat(),
                "to": (open_day - timedelta(days=1)).isoformat()},
            "reasons": [reason_json(r) for r in state.reasons],
            "region": state.region, "brand": state.brand, "segment": state.segment,
            "photo": None if state.photo is None else {
                "month": state.photo.month, "arpu": state.photo.arpu_fen / 100,
                "mou": round(state.photo.mou_seconds / 60, 2)},
            "contract": None if c is None else {
                "starts_on": c.starts_on.isoformat() if c.starts_on else None, "ends_on": c.ends_on.isoformat(),
                "committed": c.committed_fen / 100,
                "spent": state.contract_spend(open_day or local_day(int(time.time() * 1000), tz)) / 100},
            "prepaid": state.prepaid,
            "balance": None if state.balance_fen is None else state.balance_fen / 100,
            "churned": state.churned,
            "port_out_request_open": state.port_out_open(
                clock.watermark_ms or 0, rules.port_out_request_open_days) if clock else False,
            "rule_set": rules.name,
            **proc.handoff.risk_fields(msisdn.encode(), state, open_day),
        }
