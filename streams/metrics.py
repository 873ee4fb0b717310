"""Every Prometheus metric of the worker (CONTRACT §9), declared in one place.

All metrics live on a `CollectorRegistry` handed to `Metrics` (a fresh one by default, never the
process-wide default registry), so that tests and an embedded demo can hold many independent sets.

The hot path calls the small typed helpers below, never the prometheus_client objects directly.
Each helper validates its label values once per distinct label set and then caches the bound
child, so a repeated call is one dict lookup plus the increment.

Label values are small closed sets wherever the contract closes them; a wrong value there is a
programming error and raises `ValueError`. The free labels (topic, region, brand) come from
configuration and profiles: a value that looks like an msisdn is replaced by `invalid`, so that no
label can ever carry a subscriber's number, whatever a profile contains (CONTRACT §4).

The module and `Metrics` are over the size guide (about 400 lines, the class about 290): one
declaration and one small helper per metric of §9 and the runbooks, kept side by side so that a
metric's name, labels and only writer are read in one place.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from rules.events import ERRORS
from rules.labels import OTHER, LabelValues, shown
from rules import vocabulary
from rules.vocabulary import Channel, Kind, Light, Status, SuppressReason

# The `_created` series doubles every counter and histogram series and nothing reads it (the
# dashboards and alerts use rate()); the exposition then holds exactly the families of §9.
# prometheus_client only offers this switch process-wide, and all of the worker's metrics are here.
disable_created_metrics()  # type: ignore[no-untyped-call]

Outcome = Literal["applied", "duplicate", "late_dropped", "rejected"]
TaskStatus = Status
TaskKind = Kind

OUTCOMES: Final[frozenset[str]] = frozenset(Outcome.__args__)  # type: ignore[attr-defined]
LIGHTS: Final[frozenset[str]] = frozenset(vocabulary.LIGHTS)
CHANNELS: Final[frozenset[str]] = frozenset(vocabulary.CHANNELS)
TASK_STATUSES: Final[frozenset[str]] = frozenset(Status.__args__)  # type: ignore[attr-defined]
SUPPRESS_REASONS: Final[frozenset[str]] = frozenset(vocabulary.SUPPRESS_REASONS)
# The capacity queue's statuses (CONTRACT §3 feed): counted apart from churnlight_tasks_total.
CAPACITY_STATUSES: Final[frozenset[str]] = frozenset({"queued", "released", "expired"})
TASK_KINDS: Final[frozenset[str]] = frozenset(vocabulary.KINDS)
DEADLETTER_ERRORS: Final[frozenset[str]] = frozenset(ERRORS)

# What a free label value becomes when it looks like a subscriber number.
INVALID: Final = "invalid"
# Same shape as an msisdn in CONTRACT §1 (5-20 digits, optional leading +).
_MSISDN_LIKE: Final = re.compile(r"^\+?\d{5,20}$")

# End-to-end latency runs from the Kafka timestamp of the triggering event to the task being
# published: normally milliseconds (decode, rules, Redis policy checks, produce), seconds under a
# batch or a rebalance, minutes while a backlog drains. The target is p99 < 1 s, so the buckets are
# dense from 5 ms to 2.5 s and 1.0 is an exact bound: the share of tasks within target is read off
# the le="1.0" bucket without interpolation. The tail buckets keep a backlog visible instead of
# folding it all into +Inf.
END_TO_END_BUCKETS_S: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)

_Key = TypeVar("_Key", bound=tuple[str, ...])

log = logging.getLogger(__name__)


def free_label(value: str) -> str:
    """Return `value` fit for a free label: anything msisdn-like becomes `invalid`."""
    return INVALID if _MSISDN_LIKE.match(value) else value


def _noticed(field: str) -> Callable[[str], None]:
    def note(value: str) -> None:
        log.warning("a profile's %s %r is not in the rule set's labels: counted as %r in the metrics",
                    field, shown(value), OTHER)
    return note


def _closed(value: str, allowed: frozenset[str], label: str) -> str:
    if value not in allowed:
        raise ValueError(f"metric label {label}={value!r} is not one of {sorted(allowed)}")
    return value


@dataclass(frozen=True, slots=True)
class RegionKpis:
    """The three KPIs of one region; None = undefined (zero denominator), no series exported."""

    task_completion_ratio: float | None
    retention_ratio: float | None
    churn_ratio: float | None


OUTCOME_RESULTS: Final = frozenset({"recorded", "duplicate", "unknown_task"})


class Metrics:
    """The worker's metrics (CONTRACT §9) on one registry, with cheap helpers for the hot path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # Region and brand label values: a closed set (the rule set's lists, `use_labels`).
        self.regions = LabelValues(None, noticed=_noticed("region"))
        self.brands = LabelValues(None, noticed=_noticed("brand"))
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # prometheus_client strips a trailing "_total" from a counter's name and appends it again
        # to the sample, so these are exposed as exactly churnlight_events_total and so on.
        self.events = Counter(
            "churnlight_events_total",
            "Input events by topic and outcome.",
            ["topic", "outcome"],
            registry=r,
        )
        self.deadletter_events = Counter(
            "churnlight_deadletter_total",
            "Input messages sent to the dead-letter topic, by topic and reason code.",
            ["topic", "error"],
            registry=r,
        )
        self.lights = Gauge(
            "churnlight_lights",
            "Watched subscribers by current light, region and brand.",
            ["light", "region", "brand"],
            registry=r,
        )
        self.light_changes = Counter(
            "churnlight_light_changes_total",
            "Light changes by previous and new light.",
            ["previous", "light"],
            registry=r,
        )
        self.tasks = Counter(
            "churnlight_tasks_total",
            "Retention task decisions by channel, kind and status.",
            ["channel", "kind", "status"],
            registry=r,
        )
        self.tasks_suppressed = Counter(
            "churnlight_tasks_suppressed_total",
            "Suppressed retention tasks by channel and contact-policy reason.",
            ["channel", "reason"],
            registry=r,
        )
        # Beyond CONTRACT §9: an outcome for a task this system never issued is counted, not dropped.
        self.outcomes = Counter(
            "churnlight_outcomes_total",
            "Retention outcomes by result (recorded, duplicate, unknown_task).",
            ["result"],
            registry=r,
        )
        # Beyond CONTRACT §9: the call-centre capacity queue (CONTRACT §5). A counter of its own, so
        # that churnlight_tasks_total keeps the contract's statuses and meaning: a queued task counts
        # `queued`, then `released` or `expired` here, never `issued` there; the call-centre tasks
        # published are issued + released.
        self.capacity_tasks = Counter(
            "churnlight_capacity_tasks_total",
            "Call-centre tasks through the capacity queue by region, kind and status (queued, released, expired).",
            ["region", "kind", "status"],
            registry=r,
        )
        # Beyond CONTRACT §9: how often the consumer had to be sent back to the state's offsets.
        self.rewinds = Counter(
            "churnlight_rewinds_total",
            "Input partitions read again from the state's next offset (a gap or a stall), by topic.",
            ["topic"],
            registry=r,
        )
        self.end_to_end = Histogram(
            "churnlight_end_to_end_seconds",
            "Kafka timestamp of the triggering event to the task published, by channel.",
            ["channel"],
            buckets=END_TO_END_BUCKETS_S,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "churnlight_consumer_lag",
            "Records not yet applied: from the state's next offset to the end the consumer knows, per partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.kpi_task_completion = Gauge(
            "churnlight_kpi_task_completion_ratio",
            "Tasks with a final outcome / tasks issued, this calendar month, by region.",
            ["region"],
            registry=r,
        )
        self.kpi_retention = Gauge(
            "churnlight_kpi_retention_ratio",
            "Watched base not black / watched base, by region.",
            ["region"],
            registry=r,
        )
        self.kpi_churn = Gauge(
            "churnlight_kpi_churn_ratio",
            "Black / watched base, by region.",
            ["region"],
            registry=r,
        )

        # Beyond CONTRACT §9, for alerts: the worker's health as /health says it, set at each scrape.
        self.ready = Gauge(
            "churnlight_ready",
            "1 when /health says 200 (state loaded, consuming, Redis reachable), else 0.",
            registry=r,
        )
        self.redis_degraded = Gauge(
            "churnlight_redis_degraded",
            "1 while Redis cannot be reached and decisions wait, else 0.",
            registry=r,
        )
        self.watermark = Gauge(
            "churnlight_watermark_seconds",
            "Event time of each owned partition (the watermark its days close on), in seconds since the epoch.",
            ["partition"],
            registry=r,
        )
        # process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ... of this
        # worker (Linux /proc), on this registry rather than the process-wide default one.
        ProcessCollector(registry=r)

        # Bound children by raw (unvalidated) label values: a hit skips validation entirely.
        self._events: dict[tuple[str, str], Counter] = {}
        self._deadletter: dict[tuple[str, str], Counter] = {}
        self._changes: dict[tuple[str, str], Counter] = {}
        self._tasks: dict[tuple[str, str, str, str | None], tuple[Counter, ...]] = {}
        self._end_to_end: dict[str, Histogram] = {}
        self._lag: dict[tuple[str, str], Gauge] = {}
        self._watermarks: set[str] = set()
        # Label sets the replace-all gauges hold now, so that vanished ones can be removed.
        self._lights_held: set[tuple[str, str, str]] = set()
        self._kpis_held: tuple[set[tuple[str]], set[tuple[str]], set[tuple[str]]] = (set(), set(), set())

    # -- counters and histogram -------------------------------------------------------------

    def event(self, topic: str, outcome: Outcome, n: int = 1) -> None:
        """Count `n` input events of `topic` with their `outcome`."""
        child = self._events.get((topic, outcome))
        if child is None:
            child = self.events.labels(free_label(topic), _closed(outcome, OUTCOMES, "outcome"))
            self._events[(topic, outcome)] = child
        child.inc(n)

    def rewind(self, topic: str) -> None:
        """Count one input partition of `topic` read again from the state's offsets."""
        self.rewinds.labels(free_label(topic)).inc()

    def deadletter(self, topic: str, error: str) -> None:
        """Count one message of `topic` dead-lettered with reason code `error`."""
        child = self._deadletter.get((topic, error))
        if child is None:
            child = self.deadletter_events.labels(
                free_label(topic), _closed(error, DEADLETTER_ERRORS, "error")
            )
            self._deadletter[(topic, error)] = child
        child.inc()

    def light_change(self, previous: Light, light: Light) -> None:
        """Count one light change from `previous` to `light`."""
        child = self._changes.get((previous, light))
        if child is None:
            child = self.light_changes.labels(
                _closed(previous, LIGHTS, "previous"), _closed(light, LIGHTS, "light")
            )
            self._changes[(previous, light)] = child
        child.inc()

    def task(
        self,
        channel: Channel,
        kind: TaskKind,
        status: TaskStatus,
        reason: SuppressReason | None = None,
    ) -> None:
        """Count one task decision; a suppressed one also counts under its `reason`."""
        key = (channel, kind, status, reason)
        children = self._tasks.get(key)
        if children is None:
            # Everything is validated before any series is created, so a bad call records nothing.
            if (status == "suppressed") != (reason is not None):
                raise ValueError(f"a task has a reason iff it is suppressed ({status=}, {reason=})")
            labels = (
                _closed(channel, CHANNELS, "channel"),
                _closed(kind, TASK_KINDS, "kind"),
                _closed(status, TASK_STATUSES, "status"),
            )
            if reason is None:
                children = (self.tasks.labels(*labels),)
            else:
                _closed(reason, SUPPRESS_REASONS, "reason")
                children = (self.tasks.labels(*labels), self.tasks_suppressed.labels(channel, reason))
            self._tasks[key] = children
        for child in children:
            child.inc()

    def capacity(self, region: str, kind: str, status: str) -> None:
        """Count one call-centre task queued, released or expired by the capacity queue."""
        self.capacity_tasks.labels(self.regions(region), _closed(kind, TASK_KINDS, "kind"),
                                   _closed(status, CAPACITY_STATUSES, "status")).inc()

    def observe_end_to_end(self, channel: Channel, seconds: float) -> None:
        """Record the latency from the triggering event's Kafka timestamp to the task's publish."""
        child = self._end_to_end.get(channel)
        if child is None:
            child = self.end_to_end.labels(_closed(channel, CHANNELS, "channel"))
            self._end_to_end[channel] = child
        # Clocks of producer and worker may disagree by a little: a negative latency is 0.
        child.observe(max(0.0, seconds))

    # -- gauges ------------------------------------------------------------------------------

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the consumer lag of one assigned partition."""
        key = (topic, str(partition))
        child = self._lag.get(key)
        if child is None:
            child = self.consumer_lag.labels(free_label(topic), key[1])
            self._lag[key] = child
        child.set(max(0, lag))

    def set_lags(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Replace all lag series with `lags` by (topic, partition); revoked partitions vanish."""
        # A partition that moved to another worker must not keep its last value here, or
        # sum(churnlight_consumer_lag) would count it twice.
        wanted = {(topic, str(partition)) for topic, partition in lags}
        for key in [k for k in self._lag if k not in wanted]:
            del self._lag[key]
            self.consumer_lag.remove(free_label(key[0]), key[1])
        for (topic, partition), lag in lags.items():
            self.set_lag(topic, partition, lag)

    def set_watermarks(self, watermarks: Mapping[int, int]) -> None:
        """Replace the watermark series with `watermarks` (ms) by partition; revoked partitions vanish."""
        wanted = {str(p) for p in watermarks}
        for key in self._watermarks - wanted:
            self.watermark.remove(key)
        self._watermarks = wanted
        for p, ms in watermarks.items():
            self.watermark.labels(str(p)).set(ms / 1000)

    def use_labels(self, regions: frozenset[str] | None, brands: frozenset[str] | None) -> None:
        """Allow these region and brand label values (a rule set's lists); others are `other`."""
        self.regions = LabelValues(regions, noticed=_noticed("region"))
        self.brands = LabelValues(brands, noticed=_noticed("brand"))

    def set_lights(self, counts: Mapping[tuple[Light, str, str], int]) -> None:
        """Replace the light gauge with `counts` by (light, region, brand); vanished sets go."""
        merged: dict[tuple[str, str, str], int] = {}
        for (light, region, brand), count in counts.items():
            key = (_closed(light, LIGHTS, "light"), self.regions(region), self.brands(brand))
            # Two regions that both become "other" add up rather than overwrite.
            merged[key] = merged.get(key, 0) + count
        _replace(self.lights, self._lights_held, merged)

    def set_kpis(self, kpis: Mapping[str, RegionKpis]) -> None:
        """Replace the three KPI gauges with `kpis` by region; an undefined ratio has no series."""
        completion: dict[tuple[str], float] = {}
        retention: dict[tuple[str], float] = {}
        churn: dict[tuple[str], float] = {}
        for region, k in kpis.items():
            # Callers group by self.regions first (streams.runtime.queries.Queries.update_kpis): ratios do not add up.
            key = (self.regions(region),)
            if k.task_completion_ratio is not None:
                completion[key] = k.task_completion_ratio
            if k.retention_ratio is not None:
                retention[key] = k.retention_ratio
            if k.churn_ratio is not None:
                churn[key] = k.churn_ratio
        held_completion, held_retention, held_churn = self._kpis_held
        _replace(self.kpi_task_completion, held_completion, completion)
        _replace(self.kpi_retention, held_retention, retention)
        _replace(self.kpi_churn, held_churn, churn)

    # -- exposition --------------------------------------------------------------------------

    def set_health(self, *, ready: bool, redis_degraded: bool) -> None:
        """Set the readiness and Redis-degraded gauges (what /health says)."""
        self.ready.set(1 if ready else 0)
        self.redis_degraded.set(1 if redis_degraded else 0)

    def outcome(self, result: str) -> None:
        self.outcomes.labels(_closed(result, OUTCOME_RESULTS, "result")).inc()

    def render(self) -> bytes:
        """Return the registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


def _replace(gauge: Gauge, held: set[_Key], values: Mapping[_Key, float]) -> None:
    """Make `gauge` hold exactly `values`, removing the label sets in `held` that are not in it."""
    for stale in held - values.keys():
        gauge.remove(*stale)
    held.clear()
    for labels, value in values.items():
        gauge.labels(*labels).set(value)
        held.add(labels)
