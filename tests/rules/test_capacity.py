"""The capacity queue's ranking and what a morning's release takes (rules.capacity, pure)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from rules.capacity import Waiting, expected_saved_fen, last_release_day, release_ms, select

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 8, 10)
EIGHT = release_ms(DAY, TZ)
HOUR = 3_600_000


def w(task_id: str, saved: float, due_in_h: float = 24, created_h: float = -8) -> Waiting:
    return Waiting(task_id, saved, EIGHT + int(due_in_h * HOUR), EIGHT + int(created_h * HOUR))


def test_expected_saved_revenue_is_risk_times_arpu_or_the_arpu_alone() -> None:
    assert expected_saved_fen(12_000, 0.25) == 3_000.0
    assert expected_saved_fen(12_000, None) == 12_000.0
    # With a score, a likely leaver with less revenue comes before a safe one with more.
    assert expected_saved_fen(5_000, 0.9) > expected_saved_fen(20_000, 0.1)


def test_release_takes_the_free_calls_highest_expected_saved_revenue_first() -> None:
    waiting = [w("a", 100), w("b", 900), w("c", 500), w("d", 700), w("e", 300)]
    plan = select(waiting, EIGHT, 3)
    assert [x.task_id for x in plan.released] == ["b", "d", "c"]
    assert plan.expired == ()


def test_a_task_due_by_the_release_expires_whatever_its_rank() -> None:
    waiting = [w("stale", 10_000, due_in_h=0), w("older", 9_000, due_in_h=-3), w("fresh", 1)]
    plan = select(waiting, EIGHT, 5)
    assert [x.task_id for x in plan.released] == ["fresh"]
    assert {x.task_id for x in plan.expired} == {"stale", "older"}


def test_ties_are_ranked_the_same_way_everywhere() -> None:
    waiting = [w("z", 500, due_in_h=30), w("y", 500, due_in_h=20), w("x", 500, due_in_h=20, created_h=-9)]
    assert [x.task_id for x in select(waiting, EIGHT, 3).released] == ["x", "y", "z"]
    assert [x.task_id for x in select(list(reversed(waiting)), EIGHT, 3).released] == ["x", "y", "z"]


def test_a_task_decided_after_the_release_waits_for_the_next_one() -> None:
    plan = select([w("later", 10_000, created_h=2), w("now", 1)], EIGHT, 5)
    assert [x.task_id for x in plan.released] == ["now"]
    assert plan.expired == ()


def test_no_free_calls_releases_nothing_but_still_expires() -> None:
    plan = select([w("a", 1), w("b", 2, due_in_h=-1)], EIGHT, 0)
    assert plan.released == () and [x.task_id for x in plan.expired] == ["b"]
    assert select([w("a", 1)], EIGHT, -3).released == ()


def test_the_release_is_at_eight_local_and_the_last_one_before_a_time_is_found() -> None:
    assert datetime.fromtimestamp(EIGHT / 1000, TZ) == datetime(2026, 8, 10, 8, 0, tzinfo=TZ)
    assert last_release_day(EIGHT, TZ) == DAY
    assert last_release_day(EIGHT - 1000, TZ) == date(2026, 8, 9)
    assert last_release_day(EIGHT + 15 * HOUR, TZ) == DAY  # 23:00 the same day
