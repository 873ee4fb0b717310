"""History lines (CONTRACT §6) from column arrays, built as strings in bulk for speed.

The hot kinds (usage, fee, balance, top-up, adjustment) are formatted with f-strings over lookup
tables; the rare ones (profiles, lifecycle, bad records) with orjson.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import cache
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import orjson

from rules.events import BILLING, LIFECYCLE, PROFILES, USAGE

OBJ = npt.NDArray[np.object_]
I64 = npt.NDArray[np.int64]

MONEY_TABLE_FEN: Final = 200_000  # table covers 0.00-1999.99 CNY; larger values formatted one by one
MAX_CALL_SEC: Final = 8 * 3600

TOPICS: Final = (USAGE, BILLING, PROFILES, LIFECYCLE)  # a row's topic is an index into this


def cny(fen: int) -> str:
    """Format integer fen as a JSON number of CNY with at most 2 decimals (-120 -> -1.2)."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), 100)
    if part == 0:
        return f"{sign}{whole}"
    if part % 10 == 0:
        return f"{sign}{whole}.{part // 10}"
    return f"{sign}{whole}.{part:02d}"


@cache
def _money_table() -> OBJ:
    return np.array([cny(f) for f in range(MONEY_TABLE_FEN)], dtype=object)


@cache
def _minutes_table() -> OBJ:
    # Two decimals of a minute are within 0.3 s, so round(minutes * 60) gives the seconds back.
    return np.array([repr(round(s / 60, 2)) for s in range(MAX_CALL_SEC + 1)], dtype=object)


@cache
def _hms_table() -> list[str]:
    return [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]


def money_strs(fen: I64) -> list[str]:
    """Format an array of fen (any sign) as CNY strings."""
    table = _money_table()
    inside = (fen >= 0) & (fen < MONEY_TABLE_FEN)
    out: list[str] = table[np.where(inside, fen, 0)].tolist()
    for i in np.nonzero(~inside)[0].tolist():
        out[i] = cny(int(fen[i]))
    return out


def minutes_strs(seconds: I64) -> list[str]:
    """Format call lengths in seconds (0..MAX_CALL_SEC) as minutes."""
    result: list[str] = _minutes_table()[seconds].tolist()
    return result


def utc_offset(tz: ZoneInfo, day: date) -> str:
    """Return the `+08:00` offset of `tz` at noon of `day`."""
    delta = datetime.combine(day, time(12), tz).utcoffset() or timedelta(0)
    minutes = int(delta.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@cache
def clock_table(offset: str) -> OBJ:
    """Return the 86 400 `HH:MM:SS+08:00` tails of ISO 8601 times, indexed by the second of the day."""
    return np.array([f"{hms}{offset}" for hms in _hms_table()], dtype=object)


def ts_str(day: date, second: int, offset: str) -> str:
    return f"{day.isoformat()}T{_hms_table()[second]}{offset}"


# One renderer per hot kind: (event ids, msisdns, date prefix "YYYY-MM-DDT", clock tails, a, b)
# -> lines. `a` and `b` are the kind's numbers (seconds and charge, MB hundredths and charge, ...).


def voice_lines(direction: str, eid: list[int], ms: list[str], day: str, ts: list[str], sec: I64, fen: I64) -> list[str]:
    head = f'{{"topic":"{USAGE}","value":{{"event_id":"u'
    tail = f'","type":"voice","direction":"{direction}","minutes":'
    return [
        f'{head}{e}","msisdn":"{m}","ts":"{day}{t}{tail}{mi},"charge":{c}}}}}\n'
        for e, m, t, mi, c in zip(eid, ms, ts, minutes_strs(sec), money_strs(fen))
    ]


def sms_lines(direction: str, eid: list[int], ms: list[str], day: str, ts: list[str], fen: I64) -> list[str]:
    head = f'{{"topic":"{USAGE}","value":{{"event_id":"u'
    tail = f'","type":"sms","direction":"{direction}","charge":'
    return [
        f'{head}{e}","msisdn":"{m}","ts":"{day}{t}{tail}{c}}}}}\n'
        for e, m, t, c in zip(eid, ms, ts, money_strs(fen))
    ]


def data_lines(eid: list[int], ms: list[str], day: str, ts: list[str], mb_cents: I64, fen: I64) -> list[str]:
    head = f'{{"topic":"{USAGE}","value":{{"event_id":"u'
    return [
        f'{head}{e}","msisdn":"{m}","ts":"{day}{t}","type":"data","mb":{mb},"charge":{c}}}}}\n'
        for e, m, t, mb, c in zip(eid, ms, ts, money_strs(mb_cents), money_strs(fen))
    ]


def billing_lines(kind: str, eid: list[int], ms: list[str], day: str, ts: list[str], amount: I64 | None,
                  balance: I64 | None) -> list[str]:
    head = f'{{"topic":"{BILLING}","value":{{"event_id":"b'
    mid = f'","type":"{kind}"'
    if amount is None:
        assert balance is not None
        return [
            f'{head}{e}","msisdn":"{m}","ts":"{day}{t}{mid},"balance":{b}}}}}\n'
            for e, m, t, b in zip(eid, ms, ts, money_strs(balance))
        ]
    if balance is None:
        return [
            f'{head}{e}","msisdn":"{m}","ts":"{day}{t}{mid},"amount":{a}}}}}\n'
            for e, m, t, a in zip(eid, ms, ts, money_strs(amount))
        ]
    return [
        f'{head}{e}","msisdn":"{m}","ts":"{day}{t}{mid},"amount":{a},"balance":{b}}}}}\n'
        for e, m, t, a, b in zip(eid, ms, ts, money_strs(amount), money_strs(balance))
    ]


def line(topic: str, value: dict[str, Any] | None, key: str | None = None, **extra: Any) -> str:
    """Render one history line with orjson: `{"topic", ["key",] [extra...,] "value"}`."""
    doc: dict[str, Any] = {"topic": topic}
    if key is not None:
        doc["key"] = key
    doc.update(extra)
    if "raw" not in extra:
        doc["value"] = value
    return orjson.dumps(doc).decode() + "\n"


def usage_value(kind: int, eid: int, msisdn: str, ts: str, a: int, b: int) -> dict[str, Any]:
    """Return the value of one usage event as a dict (kinds as in run.VO..DATA)."""
    value: dict[str, Any] = {"event_id": f"u{eid}", "msisdn": msisdn, "ts": ts}
    if kind in (0, 1):
        value.update(type="voice", direction="out" if kind == 0 else "in", minutes=round(a / 60, 2),
                     charge=b / 100)
    elif kind in (2, 3):
        value.update(type="sms", direction="out" if kind == 2 else "in", charge=b / 100)
    else:
        value.update(type="data", mb=a / 100, charge=b / 100)
    return value


BAD_KINDS: Final = ("invalid_json", "missing_field", "negative_charge", "minutes_on_sms",
                    "key_mismatch", "bad_time")
_BAD_TIMES: Final = ("{d}T25:61:00+08:00", "{d}T10:15:00", "01/07/2026 10:15", "yesterday", "")


def bad_line(kind: str, value: dict[str, Any], other_msisdn: str, pick: int) -> str:
    """Corrupt a valid usage event `value` in the way `kind` names; `pick` varies the details."""
    msisdn = value["msisdn"]
    value = dict(value)
    value["event_id"] = value["event_id"] + "x"
    if kind == "invalid_json":
        text = orjson.dumps(value).decode()
        cut = 1 + pick % (len(text) - 2)  # a truncated JSON object is never valid JSON
        return line(USAGE, None, key=msisdn, bad=kind, raw=text[:cut])
    if kind == "missing_field":
        fields = ["event_id", "ts", "type", "charge", "msisdn"]
        del value[fields[pick % len(fields)]]
    elif kind == "negative_charge":
        value["charge"] = -round(0.01 + (pick % 500) / 100, 2)
    elif kind == "minutes_on_sms":
        value.pop("mb", None)
        value.update(type="sms", direction="out", minutes=round(1 + pick % 30 / 10, 1))
    elif kind == "key_mismatch":
        return line(USAGE, value, key=other_msisdn, bad=kind)
    elif kind == "bad_time":
        template = _BAD_TIMES[pick % len(_BAD_TIMES)]
        value["ts"] = template.format(d=str(value["ts"])[:10])
    return line(USAGE, value, key=msisdn, bad=kind)
