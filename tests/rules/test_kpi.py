"""Tests for rules.kpi: the seed-004 KPI arithmetic."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.event_types import OUTCOME_STATUSES
from rules.kpi import (
    FINAL_STATUSES,
    BaseRatios,
    KpiRatios,
    TaskCounts,
    base_ratios,
    completion_ratio,
    is_final,
    local_month,
    region_kpis,
)
from rules.vocabulary import LIGHTS, Light

TZ = ZoneInfo("Asia/Shanghai")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * 1000


# -- months and finality -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("created_at", "month"),
    [
        ("2026-10-31T23:30:00+08:00", "2026-10"),
        ("2026-10-31T23:59:59+08:00", "2026-10"),
        ("2026-11-01T00:00:00+08:00", "2026-11"),
        # 2026-10-31T23:30Z in UTC, but already November for the operator.
        ("2026-11-01T07:30:00+08:00", "2026-11"),
        ("2027-01-01T00:10:00+08:00", "2027-01"),
        ("2026-12-31T16:10:00+00:00", "2027-01"),  # the same kind of instant written in UTC
    ],
)
def test_local_month_is_the_operators(created_at: str, month: str) -> None:
    assert local_month(ms(created_at), TZ) == month


def test_local_month_follows_the_zone() -> None:
    instant = ms("2026-11-01T07:30:00+08:00")
    assert local_month(instant, TZ) == "2026-11"
    assert local_month(instant, ZoneInfo("UTC")) == "2026-10"


def test_every_contract_status_ends_an_attempt() -> None:
    assert FINAL_STATUSES == OUTCOME_STATUSES
    assert all(is_final(s) for s in OUTCOME_STATUSES)
    assert not is_final("reached", frozenset({"accepted", "declined"}))


# -- completion --------------------------------------------------------------------------------


def test_completion_ratio_examples() -> None:
    assert completion_ratio(0, 0) is None
    assert completion_ratio(20, 7) == 0.35
    assert completion_ratio(3, 0) == 0.0
    assert completion_ratio(4, 4) == 1.0
    with pytest.raises(ValueError):
        completion_ratio(-1, 0)
    with pytest.raises(ValueError):
        completion_ratio(3, -1)


@given(st.integers(1, 10**9).flatmap(lambda i: st.tuples(st.just(i), st.integers(0, i))))
def test_completion_ratio_is_a_share(counts: tuple[int, int]) -> None:
    issued, completed = counts
    ratio = completion_ratio(issued, completed)
    assert ratio is not None
    assert 0.0 <= ratio <= 1.0
    assert ratio == completed / issued
    assert (ratio == 1.0) == (completed == issued)


# -- watched base ------------------------------------------------------------------------------


def test_base_ratios_examples() -> None:
    counts: dict[tuple[Light, str, str], int] = {
        ("green", "zunyi", "gotone"): 60,
        ("yellow", "zunyi", "mzone"): 20,
        ("red", "zunyi", "gotone"): 12,
        ("black", "zunyi", "gotone"): 5,
        ("black", "zunyi", "mzone"): 3,
        ("green", "anshun", "gotone"): 10,
        ("black", "kaili", "gotone"): 0,  # a series at 0 is no watched subscriber
        ("green", "kaili", "mzone"): 0,
    }
    assert base_ratios(counts) == {
        "zunyi": BaseRatios(92 / 100, 8 / 100),
        "anshun": BaseRatios(1.0, 0.0),
    }
    assert base_ratios({("black", "x", "b"): 4}) == {"x": BaseRatios(0.0, 1.0)}
    assert base_ratios({}) == {}


def test_base_ratios_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        base_ratios({("purple", "zunyi", "gotone"): 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        base_ratios({("green", "zunyi", "gotone"): -1})


light_counts = st.dictionaries(
    st.tuples(st.sampled_from(LIGHTS), st.sampled_from(["zunyi", "anshun", "kaili"]), st.sampled_from(["gotone", "mzone"])),
    st.integers(0, 10**7),
)


@given(light_counts)
def test_base_ratios_properties(counts: dict[tuple[Light, str, str], int]) -> None:
    ratios = base_ratios(counts)
    for region in {r for _, r, _ in counts}:
        watched = sum(c for (_, r, _), c in counts.items() if r == region)
        black = sum(c for (light, r, _), c in counts.items() if r == region and light == "black")
        if watched == 0:
            assert region not in ratios
            continue
        retention, churn = ratios[region]
        assert 0.0 <= churn <= 1.0 and 0.0 <= retention <= 1.0
        assert math.isclose(retention + churn, 1.0)
        assert churn == black / watched
        assert retention == (watched - black) / watched
    assert set(ratios) <= {r for _, r, _ in counts}


@given(light_counts)
def test_base_ratios_do_not_depend_on_brand(counts: dict[tuple[Light, str, str], int]) -> None:
    merged: dict[tuple[Light, str, str], int] = {}
    for (light, region, _), count in counts.items():
        merged[(light, region, "all")] = merged.get((light, region, "all"), 0) + count
    assert base_ratios(merged) == base_ratios(counts)


# -- all three ---------------------------------------------------------------------------------


def test_region_kpis_joins_tasks_and_base() -> None:
    tasks = {
        "zunyi": TaskCounts(20, 7),
        "tongren": TaskCounts(4, 1),  # tasks (balance_low, say) but no watched subscriber
        "kaili": TaskCounts(0, 0),  # nothing issued: no region from the tasks side
    }
    counts: dict[tuple[Light, str, str], int] = {
        ("green", "zunyi", "gotone"): 37,
        ("black", "zunyi", "gotone"): 3,
        ("green", "anshun", "gotone"): 8,
    }
    kpis = region_kpis(tasks, counts)
    assert kpis == {
        "anshun": KpiRatios(None, 1.0, 0.0),
        "tongren": KpiRatios(0.25, None, None),
        "zunyi": KpiRatios(0.35, 37 / 40, 3 / 40),
    }
    assert list(kpis) == sorted(kpis)
    assert KpiRatios._fields == ("task_completion_ratio", "retention_ratio", "churn_ratio")

