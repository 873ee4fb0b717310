"""Validation of input events: never raises, exact units, every rejection has a known reason."""

from __future__ import annotations

import re
from datetime import datetime

import orjson
import pytest
from hypothesis import example, given, settings, strategies as st

from rules.events import (
    BILLING, ERRORS, INPUT_TOPICS, LIFECYCLE, PROFILES, USAGE, Billing, Lifecycle, Outcome, Profile, ProfileDeleted,
    Rejection, Usage,
    decode, mask,
)
from rules.events import Event, _decode, _Reject, _time_fast, _usage_fast

MSISDN = "13800000001"
json_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELDS = ["event_id", "msisdn", "ts", "type", "direction", "minutes", "mb", "charge", "amount", "balance",
          "region", "brand", "contract", "photo", "task_id", "channel", "status", "service", "ends_on"]
plausible = st.fixed_dictionaries(
    {"msisdn": st.sampled_from([MSISDN, "+8613800000001", "123", 7])},
    optional={
        **{f: json_values for f in FIELDS if f != "msisdn"},
        "ts": st.sampled_from(["2026-10-03T09:15:00+08:00", "2026-10-03T09:15:00", "nope", 5]),
        "type": st.sampled_from(["voice", "sms", "data", "fee", "topup", "balance", "adjustment", "deactivated", "x"]),
        "direction": st.sampled_from(["out", "in", "up"]),
        "charge": st.floats(-5, 5) | st.integers(-5, 5),
        "minutes": st.floats(-5, 50),
    },
)


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(INPUT_TOPICS), doc=plausible | st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       keyed=st.booleans(), watermark=st.none() | st.integers(0, 2 * 10**12))
def test_any_json_object_is_either_accepted_or_rejected_with_a_known_reason(
    topic: str, doc: dict[str, object], keyed: bool, watermark: int | None
) -> None:
    key = str(doc.get("msisdn", MSISDN)).encode() if keyed else b"99999999"
    result = decode(topic, key, orjson.dumps(doc), watermark)
    if isinstance(result, Rejection):
        assert result.error in ERRORS
    else:
        assert result.msisdn == doc["msisdn"]


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(INPUT_TOPICS), raw=st.binary(max_size=200), key=st.none() | st.binary(max_size=30))
def test_arbitrary_bytes_never_raise(topic: str, raw: bytes, key: bytes | None) -> None:
    result = decode(topic, key, raw)
    assert isinstance(result, (Rejection, Usage, Billing, Profile, ProfileDeleted, Lifecycle, Outcome))


def test_money_becomes_integer_fen_and_minutes_integer_seconds() -> None:
    doc = {"event_id": "e", "msisdn": MSISDN, "ts": "2026-10-03T09:15:00+08:00", "type": "voice",
           "direction": "out", "minutes": 2.5, "charge": 0.29}
    event = decode(USAGE, MSISDN.encode(), orjson.dumps(doc))
    assert isinstance(event, Usage)
    assert (event.charge_fen, event.seconds) == (29, 150)
    assert event.ts_ms == 1790990100000  # 2026-10-03T01:15:00Z


@pytest.mark.parametrize(("topic", "change"), [
    (USAGE, {"charge": 100000000000000000}),  # the record that wedged a partition (issue 13)
    (USAGE, {"charge": 1e9}),
    (USAGE, {"minutes": 1440}),
    (USAGE, {"type": "data", "direction": None, "minutes": None, "mb": 1e7}),
    (BILLING, {"type": "adjustment", "amount": -1e9}),
    (BILLING, {"type": "balance", "balance": 2e9}),
    (PROFILES, {"contract": {"ends_on": "2027-01-01", "committed": 1e12}}),
    (PROFILES, {"photo": {"month": "2026-06", "arpu": 150, "mou": 1e9}}),
])
def test_figures_beyond_their_bounds_are_bad_values_on_both_paths(topic: str, change: dict[str, object]) -> None:
    base: dict[str, object] = {
        USAGE: {"event_id": "e", "msisdn": MSISDN, "ts": "2026-10-03T09:15:00+08:00", "type": "voice",
                "direction": "out", "minutes": 2.5, "charge": 0.29},
        BILLING: {"event_id": "e", "msisdn": MSISDN, "ts": "2026-10-03T09:15:00+08:00", "type": "fee", "amount": 1},
        PROFILES: {"msisdn": MSISDN, "region": "zunyi", "brand": "gotone"},
    }[topic]  # type: ignore[assignment]
    doc = {k: v for k, v in {**base, **change}.items() if v is not None}  # type: ignore[dict-item]
    raw = orjson.dumps(doc)
    assert _usage_fast(MSISDN.encode(), raw, None) is None
    rejection = decode(topic, MSISDN.encode(), raw)
    assert isinstance(rejection, Rejection) and rejection.error == "bad_value", rejection


def test_figures_just_inside_their_bounds_are_taken() -> None:
    doc = {"event_id": "e", "msisdn": MSISDN, "ts": "2026-10-03T09:15:00+08:00", "type": "voice",
           "direction": "out", "minutes": 1439.9, "charge": 999_999_999.99}
    raw = orjson.dumps(doc)
    assert _usage_fast(MSISDN.encode(), raw, None) == decode(USAGE, MSISDN.encode(), raw)
    assert isinstance(decode(USAGE, MSISDN.encode(), raw), Usage)


def test_adjustment_may_be_negative_but_a_fee_may_not() -> None:
    base = {"event_id": "e", "msisdn": MSISDN, "ts": "2026-10-03T09:15:00+08:00"}
    adj = decode(BILLING, MSISDN.encode(), orjson.dumps({**base, "type": "adjustment", "amount": -12.5}))
    assert isinstance(adj, Billing) and adj.amount_fen == -1250
    fee = decode(BILLING, MSISDN.encode(), orjson.dumps({**base, "type": "fee", "amount": -1}))
    assert fee == Rejection("bad_value", "amount")
    topup = decode(BILLING, MSISDN.encode(), orjson.dumps({**base, "type": "topup", "amount": 0}))
    assert isinstance(topup, Rejection)
    balance = decode(BILLING, MSISDN.encode(), orjson.dumps({**base, "type": "balance"}))
    assert balance == Rejection("missing_field", "balance")


def test_profile_tombstone_deletes_and_other_null_values_are_rejected() -> None:
    assert decode(PROFILES, MSISDN.encode(), None) == ProfileDeleted(MSISDN)
    assert isinstance(decode(USAGE, MSISDN.encode(), None), Rejection)
    assert isinstance(decode(LIFECYCLE, MSISDN.encode(), b""), Rejection)


def test_mask_hides_the_middle_of_a_number() -> None:
    assert mask("13800000001") == "138****0001"
    assert MSISDN not in mask(MSISDN)


usage_docs = st.fixed_dictionaries({
    "event_id": st.text(min_size=1, max_size=8), "msisdn": st.just(MSISDN),
    "ts": st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    "type": st.sampled_from(["voice", "sms", "data"]),
    "charge": st.floats(0, 1000) | st.integers(0, 1000),
}).flatmap(lambda d: st.fixed_dictionaries({
    **{k: st.just(v) for k, v in d.items()},
    **({"direction": st.sampled_from(["out", "in"])} if d["type"] != "data" else {}),
    **({"minutes": st.floats(0, 600) | st.integers(0, 600)} if d["type"] == "voice" else {}),
    **({"mb": st.none() | st.floats(0, 10**4)} if d["type"] == "data" else {}),
}))


def _slow(key: bytes | None, value: bytes, watermark: int | None = None) -> Event | str:
    """The full validation alone (decode tries the fast path first)."""
    try:
        return _decode(USAGE, key, value, watermark)
    except _Reject as r:
        return r.error


USAGE_FIELDS = ["event_id", "msisdn", "ts", "type", "direction", "minutes", "mb", "charge"]
keys = st.sampled_from([MSISDN.encode()] * 4 + [b"", b"", b"13800000002", None, MSISDN.encode() + b"\xff"])


def _same_as_the_full_validation(key: bytes | None, value: bytes, watermark: int | None) -> None:
    fast = _usage_fast(key, value, watermark)
    assert fast is None or fast == _slow(key, value, watermark)
    expected, got = fast or _slow(key, value, watermark), decode(USAGE, key, value, watermark)
    assert got == expected if isinstance(expected, Usage) else isinstance(got, Rejection) and got.error == expected


# Per field, values at the edges of the valid ones: numbers a float cannot hold exactly, small
# negatives, neighbouring words, times with and without an offset.
numbers = st.floats(-1, 1) | st.sampled_from([2**53 + 1, 2**63 - 1, 1e300, -0.0, 0.005, True, None, "1"])
near = {
    "charge": numbers, "minutes": numbers, "mb": numbers,
    "direction": st.sampled_from(["out", "in", "up", None, 1]),
    "type": st.sampled_from(["voice", "sms", "data", "fee", None]),
    "ts": st.sampled_from(["2026-10-03T09:15:00Z", "2026-10-03T09:15:00", "2026-10-03 09:15:00+08:00",
                           "2026-10-03T09:15:00.123456+08:00", "2026-10-03", 5]),
    "msisdn": st.sampled_from([MSISDN, "+" + MSISDN, MSISDN + "\n", "123", 7]),
    "event_id": st.sampled_from(["", "x", 5, None]),
}
damages = st.lists(st.sampled_from(USAGE_FIELDS).flatmap(lambda f: near[f].map(lambda v: (f, v))), max_size=2)


DAY_MS = 86_400_000
WELL_FORMED = {"event_id": "e1", "msisdn": MSISDN, "ts": "2026-10-03T09:15:00+08:00", "type": "voice",
               "direction": "out", "minutes": 2.5, "charge": 0.3}


def _ts_ms(doc: dict[str, object]) -> int:
    return int(datetime.fromisoformat(str(doc["ts"])).timestamp() * 1000)


@settings(max_examples=600, deadline=None)
@example(doc=WELL_FORMED, damage=[("msisdn", "123")], key=b"", ahead=None)  # too short, with its own key
@example(doc=WELL_FORMED, damage=[("charge", -0.01)], key=b"", ahead=None)
@example(doc=WELL_FORMED, damage=[], key=b"", ahead=DAY_MS + 1)
@given(doc=usage_docs, damage=damages, key=keys,
       ahead=st.none() | st.sampled_from([0, DAY_MS, DAY_MS + 1, 2 * DAY_MS]) | st.integers(0, 3 * DAY_MS))
def test_the_fast_usage_path_takes_a_usage_event_near_the_edges_as_the_full_validation_does(
        doc: dict[str, object], damage: list[tuple[str, object]], key: bytes | None, ahead: int | None) -> None:
    damaged = {**doc, **dict(damage)}
    if key == b"":
        key = str(damaged["msisdn"]).encode()  # the key of whatever the msisdn became
    # The watermark up to three days behind the event: around the limit of one day ahead.
    _same_as_the_full_validation(key, orjson.dumps(damaged), None if ahead is None else _ts_ms(doc) - ahead)


@settings(max_examples=400, deadline=None)
@given(doc=usage_docs | plausible, damage=st.dictionaries(st.sampled_from(USAGE_FIELDS), json_values, max_size=2),
       key=keys, watermark=st.none() | st.integers(0, 2 * 10**12))
def test_the_fast_usage_path_accepts_only_what_the_full_validation_accepts_and_the_same_way(
        doc: dict[str, object], damage: dict[str, object], key: bytes | None, watermark: int | None) -> None:
    _same_as_the_full_validation(key, orjson.dumps({**doc, **damage}), watermark)


@settings(max_examples=200, deadline=None)
@given(doc=usage_docs)
def test_the_fast_usage_path_takes_every_well_formed_usage_event(doc: dict[str, object]) -> None:
    value = orjson.dumps(doc)
    fast = _usage_fast(MSISDN.encode(), value, None)
    assert fast is not None and fast == _slow(MSISDN.encode(), value)


def _time_full(ts: str) -> int | str:
    """What datetime.fromisoformat makes of `ts` (the full validation parses with _time_fast too)."""
    try:
        parsed = datetime.fromisoformat(ts)
        if parsed.utcoffset() is None:
            return "bad_time"
        return int(parsed.timestamp() * 1000)
    except ValueError:
        return "bad_time"
    except OverflowError:
        return "overflow"


USUAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[+-][0-9]{2}:[0-9]{2}")
times = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat(timespec="seconds"))
# Characters a time string holds, and some it should not.
time_chars = st.sampled_from("0123456789-:+T Z.²٣")


@settings(max_examples=600, deadline=None)
@example(ts="2026-10-03T09:15:60+08:00")  # no leap seconds
@example(ts="2026-02-30T09:15:00+08:00")
@example(ts="2026-10-03T24:00:00+08:00")
@example(ts="2026-10-03T09:15:0٣+08:00")  # a digit, but not ASCII
@given(ts=times | st.tuples(times, st.integers(0, 24), time_chars).map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + 1:]))
def test_the_fast_time_parse_agrees_with_fromisoformat_or_declines(ts: str) -> None:
    try:
        fast = _time_fast(ts)
    except OverflowError:
        fast = None  # the full validation then says what it makes of it
    assert fast is None or fast == _time_full(ts)
    if USUAL_TIME.fullmatch(ts) and isinstance(_time_full(ts), int):
        assert fast is not None  # the usual form is taken
