"""Local time of the operator's zone: days, midnights and wall times as UTC epoch milliseconds.

Everything is a function of its arguments: nothing here reads the wall clock.
"""

from __future__ import annotations

from datetime import date, datetime, time, tzinfo
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS


_QUARTER_MS: Final = 15 * 60 * 1000
_QUARTERS: dict[ZoneInfo, dict[int, date]] = {}


def local_day(ts_ms: int, tz: ZoneInfo) -> date:
    """Return the local date of UTC epoch milliseconds `ts_ms` in `tz`."""
    # Remembered per UTC quarter of an hour when the date is the same at both of its ends (true of
    # every zone since 1972: offsets and their changes come in quarters of an hour).
    quarters = _QUARTERS.get(tz)
    if quarters is None:
        quarters = _QUARTERS[tz] = {}
    quarter = ts_ms // _QUARTER_MS
    day = quarters.get(quarter)
    if day is not None:
        return day
    day = datetime.fromtimestamp(ts_ms / 1000, tz).date()
    start = quarter * _QUARTER_MS
    if datetime.fromtimestamp(start / 1000, tz).date() == day == datetime.fromtimestamp(
            (start + _QUARTER_MS - 1) / 1000, tz).date():
        if len(quarters) >= 200_000:  # about five years of quarters
            quarters.clear()
        quarters[quarter] = day
    return day


@lru_cache(maxsize=4096)
def day_start_ms(day: date, tz: ZoneInfo) -> int:
    """Return local 00:00 of `day` in `tz` as UTC epoch milliseconds."""
    return int(datetime.combine(day, time(0), tzinfo=tz).timestamp() * 1000)


def local_date(ms: int, tz: tzinfo) -> date:
    """Return the operator-local date of the UTC epoch milliseconds `ms`."""
    return datetime.fromtimestamp(ms // 1000, tz).date()


def local_ms(day: date, at: time, tz: tzinfo) -> int:
    """Return UTC epoch milliseconds of local wall time `at` on `day`."""
    return int(datetime.combine(day, at, tzinfo=tz).timestamp()) * 1000


def local_midnight_ms(day: date, tz: tzinfo) -> int:
    """Return UTC epoch milliseconds of local 00:00 on `day`."""
    return local_ms(day, time(0), tz)


def iso_time(ms: int, tz: tzinfo) -> str:
    """Format `ms` as ISO 8601 in the operator's zone; milliseconds only when not whole."""
    moment = datetime.fromtimestamp(ms // 1000, tz)
    if ms % 1000:
        return moment.replace(microsecond=(ms % 1000) * 1000).isoformat(timespec="milliseconds")
    return moment.isoformat(timespec="seconds")
