"""Call-centre capacity (CONTRACT §5): the queue's order and what each morning's release takes.

A rule set may give a region a number of call-centre calls per local day. Call-centre tasks
beyond it wait, ranked by expected saved revenue (risk x 30-day ARPU; the ARPU alone without a
scoring model); at 08:00 local each day the queue releases up to the day's free calls, highest
first, and a task whose `due_by` is not after that 08:00 leaves as `expired`.

The call centre's day starts with that release: a task decided before it (the night's day-close
decisions above all) waits for it, so that the morning ranks all of them, not the first come; one
decided after it takes a free call of its day at once, or waits when the day's calls are taken.

Everything here is pure: the Redis side (sinks.capacity) reads the waiting tasks, asks `select`
what a release takes, and applies the answer atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Final

from rules.localtime import local_ms

# When the call centre's day starts and the queue releases (CONTRACT §5).
RELEASE_AT: Final = time(8, 0)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A queued task as the ranking sees it."""

    task_id: str
    saved: float  # expected saved revenue, fen (expected_saved_fen)
    due_by_ms: int
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class Release:
    """What one morning's release does with the queue: publish these, expire those, keep the rest."""

    released: tuple[Waiting, ...]  # highest expected saved revenue first
    expired: tuple[Waiting, ...]


def expected_saved_fen(arpu_fen: int, risk: float | None) -> float:
    """Return a task's expected saved revenue in fen: risk x 30-day ARPU, or the ARPU alone without a score."""
    return float(arpu_fen) if risk is None else risk * arpu_fen


def rank_key(w: Waiting) -> tuple[float, int, int, str]:
    """Order waiting tasks: highest expected saved revenue first; ties by the earlier due time,
    the earlier decision, then task id, so that every worker and every replay ranks alike."""
    return (-w.saved, w.due_by_ms, w.created_at_ms, w.task_id)


def select(waiting: Iterable[Waiting], at_ms: int, free: int) -> Release:
    """Return what a release at `at_ms` with `free` calls left takes from `waiting`.

    A task decided after `at_ms` is not this release's (a partition that ran ahead queued it).
    One due at or before `at_ms` can no longer be called in time: expired. Of the others, the
    `free` highest ranked are released.
    """
    mine = sorted((w for w in waiting if w.created_at_ms <= at_ms), key=rank_key)
    expired = tuple(w for w in mine if w.due_by_ms <= at_ms)
    callable_ = [w for w in mine if w.due_by_ms > at_ms]
    return Release(tuple(callable_[:max(0, free)]), expired)


def release_ms(day: date, tz: tzinfo) -> int:
    """Return UTC epoch ms of `day`'s release (08:00 local)."""
    return local_ms(day, RELEASE_AT, tz)


def last_release_day(ms: int, tz: tzinfo) -> date:
    """Return the day of the latest release at or before `ms`."""
    moment = datetime.fromtimestamp(ms // 1000, tz)
    day = moment.date()
    return day if release_ms(day, tz) <= ms else day - timedelta(days=1)
