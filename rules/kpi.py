"""The branch KPIs of seed 004 (CONTRACT §9), as pure arithmetic.

- Task completion: tasks with a final outcome / tasks issued, per region, for the tasks created
  in one local calendar month (a task stays in the month it was created in, whenever its outcome
  comes back, so the ratio of a month never exceeds 1).
- Retention of the watched base: watched subscribers not black / watched subscribers.
- Churn of the watched base: black / watched subscribers (retention + churn = 1).

A ratio with a zero denominator is undefined (None), never 0: a region that issued nothing has
not completed 0 % of its tasks. Counting happens elsewhere (sinks.outcomes in Redis, the light
index of the stream); nothing here reads a clock or a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Final, NamedTuple

from rules.event_types import OutcomeStatus
from rules.vocabulary import LIGHTS, Light

# Every status of CONTRACT §1 ends one contact attempt, so each is final: `reached`,
# `unreachable` (the dialer's attempt is over), `accepted` and `declined` (the call's result);
# `delivered` and `failed` (the SMS gateway's terminal receipt). Final means the task was carried
# out, not that it succeeded: completion measures the branch's execution of its tasks, and the
# success shows in the lights. A task completes once, at its first final outcome.
FINAL_STATUSES: Final[frozenset[OutcomeStatus]] = frozenset(
    {"reached", "accepted", "declined", "unreachable", "delivered", "failed"}
)


class TaskCounts(NamedTuple):
    """Tasks issued in one month and region, and how many of them have a final outcome."""

    issued: int
    completed: int


class BaseRatios(NamedTuple):
    """The watched-base KPIs of one region."""

    retention_ratio: float
    churn_ratio: float


class KpiRatios(NamedTuple):
    """The three KPIs of one region, None where undefined; same fields as streams' RegionKpis."""

    task_completion_ratio: float | None
    retention_ratio: float | None
    churn_ratio: float | None


def is_final(status: OutcomeStatus, final_statuses: frozenset[OutcomeStatus] = FINAL_STATUSES) -> bool:
    """Say whether an outcome with `status` completes its task."""
    return status in final_statuses


def local_month(ms: int, tz: tzinfo) -> str:
    """Return the operator-local calendar month `YYYY-MM` of UTC epoch milliseconds `ms`."""
    return datetime.fromtimestamp(ms // 1000, tz).strftime("%Y-%m")


def completion_ratio(issued: int, completed: int) -> float | None:
    """Return completed / issued, or None when nothing was issued."""
    if issued < 0 or completed < 0:
        raise ValueError(f"task counts cannot be negative ({issued=}, {completed=})")
    if issued == 0:
        return None
    return completed / issued


def base_ratios(counts: Mapping[tuple[Light, str, str], int]) -> dict[str, BaseRatios]:
    """Return retention and churn of the watched base by region from counts by (light, region, brand).

    A region with no watched subscriber is absent: its ratios are undefined.
    """
    watched: dict[str, int] = {}
    black: dict[str, int] = {}
    for (light, region, _brand), count in counts.items():
        if light not in LIGHTS:
            raise ValueError(f"unknown light {light!r}")
        if count < 0:
            raise ValueError(f"negative count {count} for {light}/{region}")
        watched[region] = watched.get(region, 0) + count
        if light == "black":
            black[region] = black.get(region, 0) + count
    ratios: dict[str, BaseRatios] = {}
    for region, total in watched.items():
        if total == 0:
            continue
        gone = black.get(region, 0)
        ratios[region] = BaseRatios((total - gone) / total, gone / total)
    return ratios


def region_kpis(
    tasks: Mapping[str, TaskCounts], counts: Mapping[tuple[Light, str, str], int]
) -> dict[str, KpiRatios]:
    """Return the three KPIs of every region that issued a task or has a watched subscriber."""
    base = base_ratios(counts)
    regions = set(base) | {r for r, c in tasks.items() if c.issued > 0}
    out: dict[str, KpiRatios] = {}
    for region in sorted(regions):
        c = tasks.get(region)
        b = base.get(region)
        out[region] = KpiRatios(
            None if c is None else completion_ratio(c.issued, c.completed),
            None if b is None else b.retention_ratio,
            None if b is None else b.churn_ratio,
        )
    return out
