"""A scripted 75-day history with one subscriber per light rule, and the light changes it must give.

Day 0 is 2026-07-01 (Asia/Shanghai). Every subscriber is photographed at day 0 (profile with
photo) unless said otherwise, so thresholds are judged from day 30 on (warm-up). Each
subscriber has one outgoing voice event a day at 10:00 carrying that day's charge and minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from streams.runtime.store import partition_of

TZ = ZoneInfo("Asia/Shanghai")
DAY0 = date(2026, 7, 1)
DAYS = 75


def at(day: int, hour: int = 10, minute: int = 0) -> str:
    return datetime.combine(DAY0 + timedelta(days=day), datetime.min.time(), TZ).replace(hour=hour, minute=minute).isoformat()


def midnight(day: int) -> str:
    return at(day, 0)


@dataclass
class Sub:
    msisdn: str
    daily: Callable[[int], tuple[float, float] | None]  # day -> (charge CNY, outgoing minutes) or None
    photo: tuple[float, float] | None = (150.0, 150.0)
    extra: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)  # (position day, topic, value)
    skip_days: set[int] = field(default_factory=set)


def steady(charge: float, minutes: float) -> Callable[[int], tuple[float, float]]:
    return lambda d: (charge, minutes)


SUBS = [
    Sub("13900000001", lambda d: (5.0, 5.0 if d < 40 else 0.0)),                       # minutes drop only
    Sub("13900000002", lambda d: (5.0 if d < 40 else 0.0, 5.0)),                       # revenue drop only
    Sub("13900000003", lambda d: (5.0, 5.0) if d < 40 else (0.0, 0.0)),                # both
    Sub("13900000004", lambda d: (13.34 if d < 35 else 5.0, 6.0), photo=(400.0, 180.0)),  # decline below half
    Sub("13900000005", lambda d: (5.0, 5.0) if d < 30 else None),                       # silent after the photo
    Sub("13900000006", steady(5.0, 5.0), extra=[                                         # port-out request, cancel
        (45, "lifecycle.events", {"event_id": "f-req", "ts": at(45), "type": "port_out_request"}),
        (48, "lifecycle.events", {"event_id": "f-can", "ts": at(48), "type": "port_out_cancelled"})]),
    Sub("13900000007", lambda d: (5.0, 5.0) if d <= 50 else None, extra=[                 # deactivation
        (50, "lifecycle.events", {"event_id": "g-deact", "ts": at(50, 12), "type": "deactivated"})]),
    Sub("13900000008", lambda d: None if d in (45, 46) else (5.0, 5.0), extra=[        # deactivation, reactivation
        (45, "lifecycle.events", {"event_id": "h-deact", "ts": at(45, 12), "type": "deactivated"}),
        (47, "lifecycle.events", {"event_id": "h-react", "ts": at(47, 9), "type": "reactivated"})]),
    Sub("13900000009", steady(4.1, 6.0), skip_days={49}, extra=[                          # late events
        (52, "usage.events", {"event_id": "i-usage-49", "ts": at(49), "type": "voice", "direction": "out",
                              "minutes": 6.0, "charge": 4.1}),
        (60, "usage.events", {"event_id": "i-ancient", "ts": at(10), "type": "voice", "direction": "out",
                              "minutes": 6.0, "charge": 50.0})]),
    Sub("13900000010", steady(4.1, 6.0), skip_days={40}, extra=[                          # duplicate resend
        (39, "usage.events", {"event_id": "u-13900000010-39", "ts": at(39), "type": "voice", "direction": "out",
                              "minutes": 6.0, "charge": 4.1})]),
    Sub("13900000011", lambda d: (5.0, 5.0) if d < 35 else (0.0, 0.0), photo=None),      # never photographed
]

# (msisdn, previous, light, at) in CONTRACT §5 terms, derived by hand in the module docstring's terms.
EXPECTED_CHANGES = {
    ("13900000001", "green", "yellow", midnight(51)),   # 30-day MOU 5*(70-D) < 100 from D=51
    ("13900000002", "green", "yellow", midnight(47)),   # 30-day ARPU 5*(70-D) < 120 from D=47
    ("13900000003", "green", "yellow", midnight(47)),
    ("13900000003", "yellow", "red", midnight(51)),
    ("13900000004", "green", "yellow", midnight(60)),   # ARPU 191.70 < 200 = half of the 400 photo
    ("13900000005", "green", "yellow", midnight(37)),   # 23 days of 5 CNY = 115
    ("13900000005", "yellow", "red", midnight(41)),     # 19 days: 95 CNY, 95 min
    ("13900000006", "green", "red", at(45)),            # port-out request, at once
    ("13900000006", "red", "green", at(48)),            # cancelled
    ("13900000007", "green", "black", at(50, 12)),
    ("13900000008", "green", "black", at(45, 12)),
    ("13900000008", "black", "green", at(47, 9)),
    ("13900000009", "green", "yellow", midnight(50)),   # day 49 missing: 29 * 4.10 = 118.90
    ("13900000009", "yellow", "green", midnight(53)),   # the late day-49 event counts from the next close
    ("13900000010", "green", "yellow", midnight(41)),   # day 40 missing and the resend of day 39 ignored
    ("13900000010", "yellow", "green", midnight(71)),
}


def fillers(partitions: int) -> list[str]:
    """Return unphotographed daily users so that every partition's watermark moves every day."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        msisdn = f"1370000{n:04d}"
        found.setdefault(partition_of(msisdn.encode(), partitions), msisdn)
        n += 1
    return sorted(found.values())


def usage(msisdn: str, day: int, charge: float, minutes: float) -> dict[str, Any]:
    return {"event_id": f"u-{msisdn}-{day}", "msisdn": msisdn, "ts": at(day), "type": "voice",
            "direction": "out", "minutes": minutes, "charge": charge}


def history(partitions: int) -> list[tuple[str, dict[str, Any]]]:
    """Return (topic, value) in production order."""
    out: list[tuple[str, dict[str, Any]]] = []
    for sub in SUBS:
        profile: dict[str, Any] = {"msisdn": sub.msisdn, "region": "zunyi", "brand": "easyown",
                                   "activated_on": "2020-01-01", "updated_at": at(0, 0)}
        if sub.photo:
            profile["photo"] = {"month": "2026-06", "arpu": sub.photo[0], "mou": sub.photo[1]}
        out.append(("subscriber.profiles", profile))
    filler = fillers(partitions)
    for day in range(DAYS):
        for msisdn in filler:
            out.append(("usage.events", usage(msisdn, day, 0.5, 1.0)))
        for sub in SUBS:
            figures = sub.daily(day)
            if figures is not None and day not in sub.skip_days:
                out.append(("usage.events", usage(sub.msisdn, day, *figures)))
            for position, topic, value in sub.extra:
                if position == day:
                    out.append((topic, {"msisdn": sub.msisdn, **value}))
    return out


def final_window(sub: Sub, open_day: int = DAYS - 1) -> tuple[float, float]:
    """Return the (ARPU, MOU) the window before `open_day` must hold for `sub`."""
    arpu = mou = 0.0
    for day in range(open_day - 30, open_day):
        figures = sub.daily(day)
        if figures is not None and day not in sub.skip_days:
            arpu += figures[0]
            mou += figures[1]
    for _, _, value in sub.extra:
        if "charge" in value:
            day = (datetime.fromisoformat(value["ts"]).date() - DAY0).days
            if open_day - 30 <= day < open_day and value["event_id"] != f"u-{sub.msisdn}-{day}":
                arpu += value["charge"]
                mou += value["minutes"]
    return round(arpu, 2), round(mou, 2)
