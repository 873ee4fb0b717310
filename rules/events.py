"""Validation of the input events (CONTRACT §1): a topic's raw record in, a typed event
(rules.event_types) or a `Rejection` out.

Everything here is pure, and `decode` never raises whatever the bytes are. The busiest topic's
common record takes a fast path (`_usage_fast`) that accepts nothing the full validation rejects.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, Final

import orjson

from rules.event_types import (
    BILLING, BIRTHDAY_RE, ERRORS, INPUT_TOPICS, LIFECYCLE, LIFECYCLE_TYPES, MONTH_RE, MSISDN_RE, OUTCOME_STATUSES,
    OUTCOMES, PROFILES, USAGE, Billing, BillingType, Contract, Event, Lifecycle, LifecycleType, Outcome, OutcomeStatus,
    Photo, Profile, ProfileDeleted, Rejection, Usage, UsageType, event_time_ms, mask,
)
from rules.localtime import DAY_MS
from rules.vocabulary import CHANNELS

# Re-exported: the worker, the sinks and the tools import the event types from here.
__all__ = ["BILLING", "BIRTHDAY_RE", "ERRORS", "INPUT_TOPICS", "LIFECYCLE", "LIFECYCLE_TYPES", "MONTH_RE", "MSISDN_RE",
           "OUTCOMES", "OUTCOME_STATUSES", "PROFILES", "USAGE", "Billing", "BillingType", "Contract", "Event",
           "Lifecycle", "LifecycleType", "Outcome", "OutcomeStatus", "Photo", "Profile", "ProfileDeleted", "Rejection",
           "Usage", "UsageType", "event_time_ms", "mask"]

MAX_MESSAGE_BYTES: Final = 64 * 1024
FUTURE_LIMIT_MS: Final = DAY_MS
_MSISDN_MATCH: Final = MSISDN_RE.match
# Bounds of one event's figures (CONTRACT §1): beyond them a value is a unit or system error,
# and applying it could overflow the state's integer arrays.
MAX_MONEY_CNY: Final = 1e9
MAX_MINUTES: Final = 1440.0  # a day's worth in one call
MAX_MB: Final = 1e7
# A photo's monthly minutes: a whole month of calling.
MAX_PHOTO_MINUTES: Final = 31 * 1440.0


class _Reject(Exception):
    def __init__(self, error: str, detail: str) -> None:
        self.error = error
        self.detail = detail


def decode(
    topic: str, key: bytes | None, value: bytes | None, watermark_ms: int | None = None
) -> Event | Rejection:
    """Validate one raw message of input `topic` (without prefix) against CONTRACT §1."""
    if topic == USAGE:
        try:
            usage = _usage_fast(key, value, watermark_ms)
        except Exception:  # what it cannot take, the full validation explains
            usage = None
        if usage is not None:
            return usage
    try:
        return _decode(topic, key, value, watermark_ms)
    except _Reject as r:
        return Rejection(r.error, r.detail)
    except Exception as exc:  # validation must never raise, whatever the bytes are
        return Rejection("bad_value", f"{type(exc).__name__}")


def _decode(topic: str, key: bytes | None, value: bytes | None, watermark_ms: int | None) -> Event:
    if value is not None and len(value) > MAX_MESSAGE_BYTES:
        raise _Reject("too_large", f"{len(value)} bytes")
    if value is None or value == b"":
        if topic == PROFILES and key:
            return ProfileDeleted(_msisdn_of_key(key))
        raise _Reject("invalid_json", "empty value")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise _Reject("invalid_json", "not JSON") from None
    if not isinstance(doc, dict):
        raise _Reject("not_object", type(doc).__name__)
    msisdn: Any = doc.get("msisdn")
    if type(msisdn) is not str or not _MSISDN_MATCH(msisdn):
        msisdn = _msisdn(doc)  # which says what is wrong with it
    if key is None or key.decode("utf-8", "replace") != msisdn:
        raise _Reject("key_mismatch", "key differs from msisdn")
    event: Event
    if topic == USAGE:
        event = _usage(doc, msisdn)
    elif topic == BILLING:
        event = _billing(doc, msisdn)
    elif topic == PROFILES:
        event = _profile(doc, msisdn)
    elif topic == LIFECYCLE:
        event = _lifecycle(doc, msisdn)
    elif topic == OUTCOMES:
        event = _outcome(doc, msisdn)
    else:
        raise ValueError(f"unknown input topic {topic!r}")
    ts = event_time_ms(event)
    if ts is not None and watermark_ms is not None and ts > watermark_ms + FUTURE_LIMIT_MS:
        raise _Reject("too_far_ahead", "more than 1 day ahead of the watermark")
    return event


def _msisdn_of_key(key: bytes) -> str:
    text = key.decode("utf-8", "replace")
    if not MSISDN_RE.match(text):
        raise _Reject("bad_value", "msisdn")
    return text


def _field(doc: dict[str, Any], name: str) -> Any:
    if name not in doc or doc[name] is None:
        raise _Reject("missing_field", name)
    return doc[name]


def _str(doc: dict[str, Any], name: str, required: bool = True) -> str | None:
    if not required and doc.get(name) is None:
        return None
    value = _field(doc, name)
    if not isinstance(value, str):
        raise _Reject("wrong_type", name)
    if not value:
        raise _Reject("bad_value", name)
    return value


def _req_str(doc: dict[str, Any], name: str) -> str:
    value = _str(doc, name)
    assert value is not None
    return value


def _msisdn(doc: dict[str, Any]) -> str:
    value = _req_str(doc, "msisdn")
    if not MSISDN_RE.match(value):
        raise _Reject("bad_value", "msisdn")
    return value


def _number(doc: dict[str, Any], name: str, required: bool = True, *, bound: float = MAX_MONEY_CNY) -> float | None:
    """Return field `name` as a finite number whose magnitude is below `bound` (money by default)."""
    if not required and doc.get(name) is None:
        return None
    value = _field(doc, name)
    # bool is an int subclass; a JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Reject("wrong_type", name)
    if not math.isfinite(value) or not -bound < value < bound:
        raise _Reject("bad_value", name)
    return float(value)


def _fen(value: float) -> int:
    return int(round(value * 100))


def _time_ms(doc: dict[str, Any], name: str, required: bool = True) -> int | None:
    if not required and doc.get(name) is None:
        return None
    value = _field(doc, name)
    if not isinstance(value, str):
        raise _Reject("wrong_type", name)
    return _parse_time(value, name)


def _parse_time(value: str, name: str) -> int:
    """Return the epoch milliseconds of ISO 8601 time `value` (field `name`), which needs a UTC offset."""
    ms = _time_fast(value)
    if ms is not None:
        return ms
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _Reject("bad_time", name) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _Reject("bad_time", f"{name} has no UTC offset")
    return int(parsed.timestamp() * 1000)


def _date(value: Any, name: str) -> date:
    if not isinstance(value, str):
        raise _Reject("wrong_type", name)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _Reject("bad_value", name) from None


def _choice(doc: dict[str, Any], name: str, allowed: frozenset[str] | tuple[str, ...]) -> str:
    value = _req_str(doc, name)
    if value not in allowed:
        raise _Reject("bad_value", name)
    return value


def _usage(doc: dict[str, Any], msisdn: str) -> Usage:
    event_id = _req_str(doc, "event_id")
    ts_ms = _time_ms(doc, "ts")
    assert ts_ms is not None
    kind = _choice(doc, "type", ("voice", "sms", "data"))
    direction = None
    if kind in ("voice", "sms"):
        direction = _choice(doc, "direction", ("out", "in"))
    elif doc.get("direction") is not None:
        raise _Reject("bad_unit", "direction on data")
    charge = _number(doc, "charge")
    assert charge is not None
    if charge < 0:
        raise _Reject("bad_value", "charge")
    seconds = 0
    if kind == "voice":
        minutes = _number(doc, "minutes", bound=MAX_MINUTES)
        assert minutes is not None
        if minutes < 0:
            raise _Reject("bad_value", "minutes")
        seconds = int(round(minutes * 60))
    elif doc.get("minutes") is not None:
        raise _Reject("bad_unit", f"minutes on {kind}")
    if kind == "data":
        mb = _number(doc, "mb", required=False, bound=MAX_MB)
        if mb is not None and mb < 0:
            raise _Reject("bad_value", "mb")
    elif doc.get("mb") is not None:
        raise _Reject("bad_unit", f"mb on {kind}")
    return Usage(event_id, msisdn, ts_ms, kind, direction, seconds, _fen(charge))  # type: ignore[arg-type]


# Epoch milliseconds of "YYYY-MM-DDTHH:MM" + UTC offset: events of the same minute differ only in
# their seconds, and parsing a time and taking its timestamp was a third of the fast path.
_MINUTES: dict[str, int] = {}
_MINUTES_MAX: Final = 200_000  # four months of minutes in one offset


def _time_fast(ts: str) -> int | None:
    """Return the epoch milliseconds of `ts` when it has exactly the form 2026-10-01T09:15:26+08:00
    and is a valid time (as datetime.fromisoformat and its UTC offset say); None otherwise."""
    if len(ts) != 25 or ts[4] != "-" or ts[7] != "-" or ts[13] != ":" or ts[16] != ":" or ts[22] != ":" or (
            ts[19] != "+" and ts[19] != "-"):
        return None
    tens, ones = ts[17], ts[18]
    if not ("0" <= tens <= "5" and "0" <= ones <= "9"):
        return None  # seconds 00-59 in ASCII digits, or whatever fromisoformat makes of it
    minute = ts[:16] + ts[19:]
    start = _MINUTES.get(minute)
    if start is None:
        try:
            parsed = datetime.fromisoformat(ts[:17] + "00" + ts[19:])
        except ValueError:
            return None
        if parsed.utcoffset() is None:
            return None
        if len(_MINUTES) >= _MINUTES_MAX:
            _MINUTES.clear()
        start = _MINUTES[minute] = int(parsed.timestamp() * 1000)
    return start + (ord(tens) - 48) * 10_000 + (ord(ones) - 48) * 1000


def _usage_fast(key: bytes | None, value: bytes | None, watermark_ms: int | None) -> Usage | None:
    """Accept the common, valid usage record in one pass; None leaves it to `_decode`, which says
    what is wrong (or accepts an unusual valid one). Accepts nothing `_decode` rejects."""
    if value is None or len(value) > MAX_MESSAGE_BYTES:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict:
        return None
    get: Callable[[str], Any] = doc.get
    msisdn, event_id, ts, kind, charge = get("msisdn"), get("event_id"), get("ts"), get("type"), get("charge")
    if type(msisdn) is not str or type(event_id) is not str or not event_id or type(ts) is not str:
        return None
    amount = type(charge)
    if not ((amount is float or amount is int) and 0 <= charge < MAX_MONEY_CNY):
        return None
    # An msisdn is ASCII: its key is exactly its bytes.
    if not _MSISDN_MATCH(msisdn) or key is None or key != msisdn.encode():
        return None
    direction, minutes, mb = get("direction"), get("minutes"), get("mb")
    seconds = 0
    if kind == "voice" or kind == "sms":
        if not (direction == "out" or direction == "in") or mb is not None:
            return None
        if kind == "voice":
            quantity = type(minutes)
            if not ((quantity is float or quantity is int) and 0 <= minutes < MAX_MINUTES):
                return None
            seconds = int(round(float(minutes) * 60))
        elif minutes is not None:
            return None
    elif kind == "data":
        if direction is not None or minutes is not None:
            return None
        if mb is not None:
            quantity = type(mb)
            if not ((quantity is float or quantity is int) and 0 <= mb < MAX_MB):
                return None
    else:
        return None
    try:
        ts_ms = _parse_time(ts, "ts")
    except _Reject:
        return None
    if watermark_ms is not None and ts_ms > watermark_ms + FUTURE_LIMIT_MS:
        return None
    return Usage(event_id, msisdn, ts_ms, kind, direction, seconds, _fen(float(charge)))


def _billing(doc: dict[str, Any], msisdn: str) -> Billing:
    event_id = _req_str(doc, "event_id")
    ts_ms = _time_ms(doc, "ts")
    assert ts_ms is not None
    kind = _choice(doc, "type", ("fee", "adjustment", "topup", "balance"))
    amount = _number(doc, "amount", required=kind != "balance")
    if amount is not None:
        if kind == "fee" and amount < 0:
            raise _Reject("bad_value", "amount")
        if kind == "topup" and amount <= 0:
            raise _Reject("bad_value", "amount")
    balance = _number(doc, "balance", required=kind == "balance")
    return Billing(
        event_id,
        msisdn,
        ts_ms,
        kind,  # type: ignore[arg-type]
        None if amount is None else _fen(amount),
        None if balance is None else _fen(balance),
    )


def _contract(value: Any, name: str = "contract") -> Contract | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Reject("wrong_type", name)
    ends_on = _date(_field(value, "ends_on"), f"{name}.ends_on")
    starts_on = None if value.get("starts_on") is None else _date(value["starts_on"], f"{name}.starts_on")
    committed = _number(value, "committed")
    assert committed is not None
    spent = _number(value, "spent", required=False) or 0.0
    if committed < 0 or spent < 0:
        raise _Reject("bad_value", name)
    return Contract(ends_on, _fen(committed), _fen(spent), starts_on)


def _photo(value: Any) -> Photo | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Reject("wrong_type", "photo")
    month = _req_str(value, "month")
    if not MONTH_RE.match(month):
        raise _Reject("bad_value", "photo.month")
    arpu = _number(value, "arpu")
    mou = _number(value, "mou", bound=MAX_PHOTO_MINUTES)
    assert arpu is not None and mou is not None
    if arpu < 0 or mou < 0:
        raise _Reject("bad_value", "photo")
    return Photo(month, _fen(arpu), int(round(mou * 60)))


def _profile(doc: dict[str, Any], msisdn: str) -> Profile:
    region = _req_str(doc, "region")
    brand = _req_str(doc, "brand")
    segment = _str(doc, "segment", required=False)
    activated_on = None if doc.get("activated_on") is None else _date(doc["activated_on"], "activated_on")
    birthday = _str(doc, "birthday", required=False)
    if birthday is not None and not BIRTHDAY_RE.match(birthday):
        raise _Reject("bad_value", "birthday")
    prepaid = doc.get("prepaid", False)
    if prepaid is None:
        prepaid = False
    if not isinstance(prepaid, bool):
        raise _Reject("wrong_type", "prepaid")
    return Profile(
        msisdn,
        region,
        brand,
        segment,
        activated_on,
        birthday,
        prepaid,
        _contract(doc.get("contract")),
        _photo(doc.get("photo")),
        _time_ms(doc, "updated_at", required=False),
    )


def _lifecycle(doc: dict[str, Any], msisdn: str) -> Lifecycle:
    event_id = _req_str(doc, "event_id")
    ts_ms = _time_ms(doc, "ts")
    assert ts_ms is not None
    kind = _choice(doc, "type", LIFECYCLE_TYPES)
    contract = None
    service = None
    ends_on = None
    if kind == "contract_signed":
        contract = _contract(_field(doc, "contract"))
    elif kind == "vas_trial_ending":
        service = _req_str(doc, "service")
        ends_on = _date(_field(doc, "ends_on"), "ends_on")
    return Lifecycle(event_id, msisdn, ts_ms, kind, contract, service, ends_on)  # type: ignore[arg-type]


def _outcome(doc: dict[str, Any], msisdn: str) -> Outcome:
    task_id = _req_str(doc, "task_id")
    ts_ms = _time_ms(doc, "ts")
    assert ts_ms is not None
    channel = _choice(doc, "channel", CHANNELS)
    status = _choice(doc, "status", OUTCOME_STATUSES)
    return Outcome(task_id, msisdn, ts_ms, channel, status)  # type: ignore[arg-type]
