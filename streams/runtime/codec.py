"""The storage codec of a subscriber's state: what the state changelog and the store hold.

`encode_state` writes a `rules.state.SubscriberState` compactly, `decode_state` reads it back
and raises ValueError on anything else. A record is a version varint, the scalar fields as one
JSON array (orjson), then the day buckets and the dedup memory as fixed-width little-endian
arrays. A typical subscriber fits in well under 1 KiB. Both run for every state loaded or
written, so they read and set the state's slots directly.

Formats: 2 holds the scalars as one orjson array and the arrays as fixed-width arrays (format 1,
varints written in Python loops, was a quarter of the worker's time; no deployment holds it any
more). 3 is format 2 with one more item in the scalar array: the risk features' memory. Both
keep the last close's risk score in the flags' bits from 7 up (risk_bp + 1; 0: never scored):
older records read as never scored, and older readers ignore those bits. A state whose memory is
empty is still written as format 2, so a deployment can roll back.

A changelog record (`encode_record`, `decode_record`) is a state as above, or, for a subscriber
with parked records (rules.schedule.Parked: held for the watermark, or waiting for a profile),
the byte 0x7F, the parked records as one orjson array (its length a varint) and then the state,
if any: a subscriber's record says all there is of it at one instant, so that a crash between two
records of a state write leaves every record whole (streams.runtime.recovery). A load reads only
a record's head (`scan_record`: the scalar array, what the store indexes) and leaves the state
to be decoded when first read.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, Final, NamedTuple

import orjson

from rules.event_types import Contract, Photo
from rules.schedule import Parked
from rules.subscriber import Churn, SubscriberState
from rules.vocabulary import Light, Reason

VERSION: Final = 3
_VERSION_BYTES: Final = bytes((VERSION,))  # its varint: a number below 128 is its own byte
_V2_BYTES: Final = bytes((2,))
# The day offsets' array codes by the value of their flag bits 1-2.
_OFFSET_CODES: Final = ("B", "H", "I")
# The array item sizes the format assumes (those of every mainstream platform).
assert [array(code).itemsize for code in ("B", "H", "I", "h", "i", "q", "Q")] == [1, 2, 4, 2, 4, 8, 8]
_LITTLE: Final = sys.byteorder == "little"
_intern: Final = sys.intern
_LIGHT_CODE: Final[dict[Light | None, int]] = {None: 0, "green": 1, "yellow": 2, "red": 3, "black": 4}
_LIGHT_OF: Final = {v: k for k, v in _LIGHT_CODE.items()}
_CHURN_CODE: Final[dict[Churn | None, int]] = {None: 0, "deactivated": 1, "ported_out": 2}
_CHURN_OF: Final = {v: k for k, v in _CHURN_CODE.items()}
# Each item of the risk memory's list (`_extras`) and the values it is left out for at the end.
_EXTRA_DEFAULTS: Final[tuple[tuple[object, ...], ...]] = ((0,), (0,), (None,), (0,), (0,), (None,), (None,), (0,),
                                                          (0,), ([],), (0,), ([],))
# The defaults of the items left out after the first n, by n (read only: the lists are never changed).
_EXTRA_TAILS: Final = tuple([d[0] for d in _EXTRA_DEFAULTS[n:]] for n in range(len(_EXTRA_DEFAULTS) + 1))


def encode_state(s: SubscriberState) -> bytes:
    """Serialise `s` compactly (the module docstring gives the format)."""
    photo, c = s.photo, s.contract
    extras = _extras(s)
    head = orjson.dumps([
        s.has_profile | s.prepaid << 1 | _LIGHT_CODE[s.light] << 2 | _CHURN_CODE[s.churned] << 5
        | (0 if s.risk_bp is None else s.risk_bp + 1) << 7,
        s.region, s.brand, s.segment, s.birthday,
        None if s.activated_on is None else s.activated_on.toordinal(),
        None if photo is None else [photo.month, photo.arpu_fen, photo.mou_seconds],
        None if c is None else [c.ends_on.toordinal(), c.committed_fen, c.spent_fen,
                                None if c.starts_on is None else c.starts_on.toordinal(),
                                # days before the end: shorter than an ordinal
                                *(() if s.contract_from is None else (c.ends_on.toordinal() - s.contract_from,))],
        s.contract_spent_fen, s.balance_fen, s.balance_ms, s.churned_ms,
        s.port_out_request_ms, s.light_since_ms,
        [[r.code, r.value, r.threshold] for r in s.reasons] if s.reasons else (),
        sorted(s.used) if s.used else (),
        *extras,
    ])
    parts = [_VERSION_BYTES if extras else _V2_BYTES, _varint(len(head)), head]
    # Days: the first ordinal, then offsets from it (uint8, or uint16 / uint32 as the span
    # needs: flag bits 1-2), revenue fen and voice seconds (int32, or int64: flag bit 0, or
    # int16 while every figure fits: flag bit 3; a typical day does, and they are most of the bytes).
    offsets = s.day_off
    n = len(offsets)
    parts.append(_varint(n))
    if n:
        fens, secs = s.day_fen, s.day_sec
        parts += (_varint((fens.typecode == "q") | _OFFSET_CODES.index(offsets.typecode) << 1
                          | (fens.typecode == "h") << 3), _varint(s.day_first),
                  _le(offsets), _le(fens), _le(secs))
    # Dedup memory, in the order remembered: the earliest minute since the epoch, then each
    # entry's minutes after it (uint16, or uint32 when they span more: flag 1) and its event
    # hash (uint64).
    m = len(s.seen_h)
    parts.append(_varint(m))
    if m:
        parts += (_varint(s.seen_off.typecode == "I"), _varint(s.seen_base), _le(s.seen_off), _le(s.seen_h))
    return b"".join(parts)


# The first byte of a record with parked records: no state format starts with it.
_PARKED: Final = 0x7F
_PARKED_BYTES: Final = bytes((_PARKED,))


def encode_record(state: bytes | None, parked: Sequence[Parked]) -> bytes | None:
    """The changelog value of a subscriber: its encoded state and its parked records (None: nothing,
    a tombstone)."""
    if not parked:
        return state
    items = orjson.dumps([[ts, kafka_ts, value, base, source, waited]
                          for ts, kafka_ts, _, value, base, source, waited in parked])
    return b"".join((_PARKED_BYTES, _varint(len(items)), items, state or b""))


def decode_record(key: bytes, data: bytes) -> tuple[SubscriberState | None, bytes, list[Parked]]:
    """Read a changelog value written by `encode_record`: the state (None: none), its own encoding
    (what `encode_state` gave) and the parked records; raise ValueError on anything else."""
    if not data or data[0] != _PARKED:
        return decode_state(data), data, []
    rest, parked = _parked_of(key, data)
    return (decode_state(rest) if rest else None), rest, parked


def _parked_of(key: bytes, data: bytes) -> tuple[bytes, list[Parked]]:
    """Split a record with parked records (its first byte 0x7F): the state's bytes and the records."""
    r = _Reader(data)
    r.pos = 1
    try:
        text = key.decode()
        parked: list[Parked] = [(int(ts), int(kafka_ts), text, str(value), str(base), str(source), int(waited))
                                for ts, kafka_ts, value, base, source, waited in orjson.loads(r.raw(r.uint()))]
    except (TypeError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"corrupt parked records: {exc!r}") from None
    return data[r.pos:], parked


class Head(NamedTuple):
    """What a state's record says without decoding its arrays: what the store indexes a subscriber
    by at a load (streams.runtime.store), so that a load decodes no state (issue 15)."""

    has_profile: bool
    light: Light | None
    churned: Churn | None
    region: str | None
    brand: str | None
    watched: bool  # a photo: in the photographed base
    dated: bool  # a contract or a birthday
    port_out_request_ms: int | None
    reasons: list[Any]


def scan_record(key: bytes, data: bytes) -> tuple[Head | None, bytes, list[Parked]]:
    """Read a changelog value as `decode_record` does, but its state's head only (None: no state):
    the state's own encoding and the parked records come back whole. Checks the head (its format,
    its length, its items' shapes); the arrays after it are read when the state is first decoded
    (walking their lengths here was a third of a load's time). Raises ValueError."""
    parked: list[Parked] = []
    own = data
    if data and data[0] == _PARKED:
        own, parked = _parked_of(key, data)
        if not own:
            return None, own, parked
    try:
        return _head(own), own, parked
    except (KeyError, IndexError, OverflowError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"corrupt subscriber state: {exc!r}") from None


def _head(data: bytes) -> Head:
    version, pos = _uv(data, 0)
    if version not in (2, VERSION):
        raise ValueError(f"unknown subscriber state version {version}")
    size, pos = _uv(data, pos)
    if pos + size > len(data):
        raise ValueError("truncated subscriber state")
    items = orjson.loads(data[pos:pos + size])
    if len(items) != (17 if version == VERSION else 16):
        raise ValueError("corrupt subscriber state: its head has the wrong length")
    if version == VERSION and not (isinstance(items[16], list) and 1 <= len(items[16]) <= len(_EXTRA_DEFAULTS)):
        raise ValueError("corrupt risk memory in subscriber state")
    flags, region, brand, birthday, photo, contract = items[0], items[1], items[2], items[4], items[6], items[7]
    if photo is not None and len(photo) != 3 or contract is not None and len(contract) not in (4, 5):
        raise ValueError("corrupt subscriber state: a photo or contract of the wrong length")
    return Head(bool(flags & 1), _LIGHT_OF[flags >> 2 & 7], _CHURN_OF[flags >> 5 & 3],
                None if region is None else _intern(region), None if brand is None else _intern(brand),
                photo is not None, contract is not None or birthday is not None, items[12], items[14])


def _uv(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at `pos` and the position after it (IndexError past the end)."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    n, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, pos + 1
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def decode_state(data: bytes) -> SubscriberState:
    """Rebuild a state written by `encode_state`; raise ValueError on anything else."""
    try:
        return _decode(_Reader(data))
    except (KeyError, IndexError, OverflowError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"corrupt subscriber state: {exc!r}") from None


def _decode(r: _Reader) -> SubscriberState:
    version = r.uint()
    if version not in (2, VERSION):
        raise ValueError(f"unknown subscriber state version {version}")
    s = SubscriberState()
    items = orjson.loads(r.raw(r.uint()))
    if version == VERSION:
        _set_extras(s, items.pop())
    (flags, s.region, s.brand, s.segment, s.birthday, activated, photo, contract, s.contract_spent_fen,
     s.balance_fen, s.balance_ms, s.churned_ms, s.port_out_request_ms, s.light_since_ms, reasons,
     used) = items
    # One string object per distinct region, brand and segment, rather than one per decoded state.
    region, brand, segment = s.region, s.brand, s.segment
    if region is not None:
        s.region = _intern(region)
    if brand is not None:
        s.brand = _intern(brand)
    if segment is not None:
        s.segment = _intern(segment)
    s.has_profile = bool(flags & 1)
    s.prepaid = bool(flags >> 1 & 1)
    s.light = _LIGHT_OF[flags >> 2 & 7]
    s.churned = _CHURN_OF[flags >> 5 & 3]
    s.risk_bp = None if flags < 128 else (flags >> 7) - 1
    s.activated_on = None if activated is None else date.fromordinal(activated)
    if photo is not None:
        s.photo = Photo(*photo)
    if contract is not None:
        # A fifth item (since 2026-12-05): the first day counted against the contract, as days
        # before the contract's end.
        ends, committed, spent, starts, *counted_from = contract
        s.contract = Contract(date.fromordinal(ends), committed, spent,
                              None if starts is None else date.fromordinal(starts))
        s.contract_from = ends - counted_from[0] if counted_from else None
    s.reasons = tuple(Reason(code, value, threshold) for code, value, threshold in reasons)
    if used:  # else the shared empty set a new state holds
        s.used = frozenset(used)
    n = r.uint()
    if n:
        flags = r.uint()
        s.day_first = r.uint()
        span = flags >> 1 & 3
        s.day_off = _from_le(_OFFSET_CODES[span], r.raw((1 << span) * n))
        if flags & 8:
            s.day_fen = _from_le("h", r.raw(2 * n))
            s.day_sec = _from_le("h", r.raw(2 * n))
        else:
            code = "q" if flags & 1 else "i"
            width = 8 if flags & 1 else 4
            s.day_fen = _from_le(code, r.raw(width * n))
            s.day_sec = _from_le(code, r.raw(width * n))
    m = r.uint()
    if m:
        far = r.uint()
        s.seen_base = r.uint()
        s.seen_off = _from_le("I" if far else "H", r.raw((4 if far else 2) * m))
        s.seen_h = _from_le("Q", r.raw(8 * m))
    r.end()
    return s


def _extras(s: SubscriberState) -> tuple[list[object], ...]:
    """The risk features' memory as the one extra item of format 3, or nothing while it is empty:
    day ordinals after the first as days from the last usage day (null: none), trailing defaults left out."""
    base = s.last_use_ord
    if not (base or s.in_ord or s.prev_ord or s.topup_ord or s.complaint_ords or s.port_requests
            or s.in_sec or s.prev_fen or s.prev_sec or s.topup_fen or s.topup_avg_fen or s.use_ahead):
        return ()
    items: list[object] = [base, s.in_sec, _rel(s.in_ord, base), s.prev_fen, s.prev_sec,
                           _rel(s.prev_ord, base), _rel(s.topup_ord, base),
                           s.topup_fen, s.topup_avg_fen, [d - base for d in s.complaint_ords],
                           s.port_requests, [x for d, sec in s.use_ahead for x in (d - base, sec)]]
    while items[-1] in _EXTRA_DEFAULTS[len(items) - 1]:
        items.pop()
    return (items,)


def _set_extras(s: SubscriberState, items: list[Any]) -> None:
    given = len(items)
    if not 1 <= given <= len(_EXTRA_DEFAULTS):
        raise ValueError("corrupt risk memory in subscriber state")
    full: list[Any] = items + _EXTRA_TAILS[given]
    (base, in_sec, in_ord, prev_fen, prev_sec, prev_ord, topup_ord, topup_fen, topup_avg, complaints, ports,
     ahead) = full
    if not isinstance(base, int) or not isinstance(complaints, list) or not isinstance(ahead, list) or len(
            ahead) % 2:
        raise ValueError("corrupt risk memory in subscriber state")
    if ahead:  # else the empty tuple a new state holds (a generator per decode was a tenth of it)
        s.use_ahead = tuple((ahead[i] + base, ahead[i + 1]) for i in range(0, len(ahead), 2))
    s.last_use_ord, s.in_sec, s.prev_fen, s.prev_sec = base, in_sec, prev_fen, prev_sec
    s.in_ord, s.prev_ord = _abs(in_ord, base), _abs(prev_ord, base)
    s.topup_ord, s.topup_fen, s.topup_avg_fen = _abs(topup_ord, base), topup_fen, topup_avg
    if complaints:
        s.complaint_ords = tuple(d + base for d in complaints)
    s.port_requests = ports


def _rel(day: int, base: int) -> int | None:
    return None if not day else day - base


def _abs(offset: object, base: int) -> int:
    if offset is None:
        return 0
    if not isinstance(offset, int):
        raise ValueError("corrupt risk memory in subscriber state")
    return offset + base


def _swapped(values: array[int]) -> bytes:
    """The array's items little-endian, on a big-endian machine."""
    swapped = array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


# The array's items little-endian, whatever this machine's byte order (no call of our own on the
# little-endian ones: five of these go into every state written).
_le: Final[Callable[[array[int]], bytes]] = array.tobytes if _LITTLE else _swapped


def _from_le(code: str, data: bytes) -> array[int]:
    values = array(code)
    values.frombytes(data)
    if not _LITTLE:
        values.byteswap()
    return values


_SMALL: Final = tuple(bytes((i,)) for i in range(128))


def _varint(n: int) -> bytes:
    """An unsigned LEB128 varint."""
    if n < 0x80:
        if n < 0:
            raise ValueError("negative unsigned")
        return _SMALL[n]
    # Day ordinals take three bytes, epoch minutes four: without a loop.
    if n < 0x200000:
        if n < 0x4000:
            return bytes((n & 0x7F | 0x80, n >> 7))
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint(self) -> int:
        data, pos = self.data, self.pos
        if pos < len(data) and data[pos] < 0x80:  # one byte: most varints of a state
            self.pos = pos + 1
            return data[pos]
        n = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise ValueError("truncated subscriber state")
            byte = self.data[self.pos]
            self.pos += 1
            n |= (byte & 0x7F) << shift
            if byte < 0x80:
                return n
            shift += 7
            if shift > 70:
                raise ValueError("varint too long")

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated subscriber state")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ValueError("trailing bytes after subscriber state")
