"""Measure a worker from outside: its event counter sampled into a rate, and quantiles."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from streams.tools.scrape import Samples

POLL_S: Final = 0.2  # /metrics sampling period while measuring a rate: bounds the window error
STALL_S: Final = 300.0  # a worker that counts nothing new for this long is reported incomplete
PAUSE_S: Final = 5.0  # a gap this long between two increases of the count is reported as a pause


class Counted(Protocol):
    """What the sampler needs of a worker (streams.tools.harness.WorkerProcess)."""

    started_at: float

    def check_alive(self) -> None: ...

    def metrics(self) -> Samples | None: ...


def percentile(values: list[float], q: float) -> float | None:
    """Return the q-quantile (0..1) of `values` by linear interpolation, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Return the q-quantile of cumulative (upper bound, count) buckets as Prometheus estimates it."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bucket: its bound is all one can say
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound



def rate(count: float, seconds: float | None) -> float | None:
    return count / seconds if seconds and seconds > 0 and count > 0 else None



def events_counted(samples: Samples) -> tuple[float, dict[str, float]]:
    """Return the sum of churnlight_events_total and its split by outcome."""
    by_outcome: dict[str, float] = {}
    for labels, value in samples.get("churnlight_events_total", []):
        outcome = labels.get("outcome", "?")
        by_outcome[outcome] = by_outcome.get(outcome, 0.0) + value
    return sum(by_outcome.values()), by_outcome


def e2e_buckets(samples: Samples, channel: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for labels, value in samples.get("churnlight_end_to_end_seconds_bucket", []):
        if labels.get("channel") == channel:
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + value
    return out


@dataclass
class Throughput:
    """Events counted by workers over the window from the first to the last progress."""

    expected: int
    counted: float = 0.0
    window_events: float = 0.0
    window_s: float | None = None
    startup_s: float | None = None  # worker start to the window's start, excluded from the rate
    complete: bool = False
    outcomes: dict[str, float] = field(default_factory=dict)
    # What the workers themselves report as left to read at the end (churnlight_consumer_lag,
    # refreshed every 5 s): 0 while `counted` < `expected` means events were read but never counted.
    reported_lag: float | None = None
    # Gaps of PAUSE_S or more between two increases inside the window: the rate includes them.
    pauses: int = 0
    paused_s: float = 0.0
    note: str | None = None

    @property
    def events_per_s(self) -> float | None:
        return rate(self.window_events, self.window_s)

    def as_json(self) -> dict[str, Any]:
        return {"expected": self.expected, "counted": self.counted, "complete": self.complete,
                "window_events": self.window_events, "window_s": self.window_s,
                "events_per_s": self.events_per_s, "startup_s": self.startup_s,
                "outcomes": self.outcomes, "reported_lag": self.reported_lag, "pauses": self.pauses,
                "paused_s": self.paused_s, "note": self.note}


def measure_throughput(
    workers: Sequence[Counted],
    expected: int,
    on_progress: Callable[[float], None],
    *,
    ready: Callable[[], bool] | None = None,
    max_s: float,
) -> Throughput:
    """Sample the workers' event counters until `expected` are counted, they stall, or `max_s` passes.

    The window runs from the last sample before the first increase (or from the first sample once
    `ready()` holds, when given) to the first sample showing the final count, so start-up and the
    tail of idle sampling are both left out; the sampling period bounds the error of its ends.
    """
    result = Throughput(expected)
    samples: list[tuple[float, float]] = []
    outcomes: dict[str, float] = {}
    began = time.monotonic()
    last_change = began
    last_total = -1.0
    is_ready = ready is None
    while True:
        now = time.monotonic()
        for w in workers:
            w.check_alive()
        scraped = [w.metrics() for w in workers]
        if all(s is not None for s in scraped):
            total = 0.0
            outcomes = {}
            result.reported_lag = 0.0
            for s in scraped:
                assert s is not None
                t, by = events_counted(s)
                total += t
                result.reported_lag += sum(v for _, v in s.get("churnlight_consumer_lag", []))
                for k, v in by.items():
                    outcomes[k] = outcomes.get(k, 0.0) + v
            if total != last_total:
                last_change, last_total = now, total
            if not is_ready and ready is not None and ready():
                is_ready = True  # the window starts at this sample
            if is_ready:
                samples.append((now, total))
            on_progress(total)
            if total >= expected:
                break
        if now - last_change > STALL_S:
            result.note = f"stopped: no progress for {STALL_S:.0f} s"
            break
        if now - began > max_s:
            result.note = f"stopped after the step's limit of {max_s:.0f} s"
            break
        time.sleep(POLL_S)
    result.outcomes = outcomes
    if not samples:
        result.note = result.note or "no metrics sample"
        return result
    final = samples[-1][1]
    result.counted = final
    result.complete = final >= expected
    first_up = next((i for i, (_, c) in enumerate(samples) if c > samples[0][1]), None)
    if first_up is None:
        result.note = result.note or "no progress inside the measured window"
        return result
    start_t, start_c = samples[max(0, first_up - 1)]
    end_t, end_c = next((t, c) for t, c in samples if c >= final)
    result.window_events = end_c - start_c
    result.window_s = end_t - start_t if end_t > start_t else None
    changes = [t for (t, c), (_, before) in zip(samples[1:], samples) if c > before and t <= end_t]
    gaps = [b - a for a, b in zip(changes, changes[1:]) if b - a >= PAUSE_S]
    result.pauses, result.paused_s = len(gaps), sum(gaps)
    result.startup_s = start_t - min(w.started_at for w in workers)
    if result.window_s is None:
        result.note = "all events counted between two samples: rate not measurable at this size"
    return result


