"""Read a worker's `/metrics` (Prometheus text) as the bench, the demo and the tests need it."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

# Sample name -> (labels, value) of each of its samples.
Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Return the samples of a Prometheus exposition by sample name."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def total(samples: Samples, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Return the sum of the samples of `name` whose labels include `labels`."""
    want = (labels or {}).items()
    return sum(value for got, value in samples.get(name, ()) if all(got.get(k) == v for k, v in want))


def sample_sum(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Return the sum of the samples of `name` in `text` whose labels include `labels`."""
    return total(parse(text), name, labels)
