"""`SubscriberState`: the compact, mutable state of one subscriber (CONTRACT §5).

The state keeps day buckets instead of raw events so that a window is a sum of at most
`window_days` numbers, and a memory of recent event ids instead of the events, so that a typical
subscriber fits in well under 1 KiB (its storage codec is streams/runtime/codec.py). How events
change it is rules.state.apply; nothing here reads a clock.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from datetime import date, timedelta
from functools import lru_cache
from hashlib import blake2b
from typing import Final, Literal
from zoneinfo import ZoneInfo

from rules.event_types import Contract, Photo
from rules.localtime import DAY_MS, day_start_ms
from rules.vocabulary import Light, Reason

Churn = Literal["deactivated", "ported_out"]
_OFFSET: Final = ("B", "H", "I")
_I32_MIN: Final = -(2**31)
_I32_MAX: Final = 2**31 - 1
# The array item sizes the buckets' widening assumes (those of every mainstream platform).
assert [array(code).itemsize for code in ("B", "H", "I", "i", "q", "Q")] == [1, 2, 4, 4, 8, 8]
DUPLICATE_MINUTES: Final = 24 * 60
# Resends are recognised for events of the open day and of this many closed days before it.
# Remembering every event id of a 30-day window (~300 ids) would not fit the 1 KiB budget of a
# state; resends in practice arrive within hours. An older resend is applied again.
DEDUP_CLOSED_DAYS: Final = 2

# Decayed sums (incoming minutes, the days that left the window) keep this share of a day's
# weight per day that passes: a mean life of 30 days, so a steady stream sums to 30 days of it.
DECAY_KEEP: Final = 29 / 30


# Copied for every event: a third cheaper than building a hasher with its digest size each time.
_HASHER: Final = blake2b(digest_size=8)


def event_hash(event_id: str) -> int:
    """Return a stable 64-bit hash of an event id (Python's hash() is salted per process)."""
    hasher = _HASHER.copy()
    hasher.update(event_id.encode("utf-8"))
    return int.from_bytes(hasher.digest(), "big")


_NO_KEYS: Final[frozenset[str]] = frozenset()


class SubscriberState:
    """The compact, mutable state of one subscriber.

    Longer than a class should be (~330 lines, a third of them its slots and their comments): the
    day buckets, the dedup memory and the risk memory are updated in place for every event (the
    worker's hot path), so they stay slots of one object with their methods, rather than objects of
    their own (one more object per subscriber, one more call per event)."""

    __slots__ = (
        "day_first",
        "day_off",
        "day_fen",
        "day_sec",
        "has_profile",
        "region",
        "brand",
        "segment",
        "activated_on",
        "birthday",
        "prepaid",
        "photo",
        "contract",
        "contract_spent_fen",
        "contract_from",
        "balance_fen",
        "balance_ms",
        "churned",
        "churned_ms",
        "port_out_request_ms",
        "light",
        "light_since_ms",
        "reasons",
        "seen_base",
        "seen_off",
        "seen_h",
        "used",
        "in_sec",
        "in_ord",
        "prev_fen",
        "prev_sec",
        "prev_ord",
        "last_use_ord",
        "topup_ord",
        "topup_fen",
        "topup_avg_fen",
        "complaint_ords",
        "port_requests",
        "use_ahead",
        "risk_bp",
    )

    def __init__(self) -> None:
        # Day buckets, oldest first, kept as the codec writes them: the local day ordinals as
        # offsets from the first one's (uint8, widened as the span needs), revenue fen and outgoing
        # voice seconds (int32, widened to int64 by the first sum that needs it).
        self.day_first = 0
        self.day_off = array("B")
        # 16 bits a figure while every day fits (< 327.67 CNY, < 9.1 h): widened when one does not.
        self.day_fen = array("h")
        self.day_sec = array("h")
        self.has_profile = False
        self.region: str | None = None
        self.brand: str | None = None
        self.segment: str | None = None
        self.activated_on: date | None = None
        self.birthday: str | None = None  # "MM-DD"
        self.prepaid = False
        self.photo: Photo | None = None
        self.contract: Contract | None = None
        self.contract_spent_fen = 0
        # The first local day ordinal whose revenue counts against the contract (contract_spend);
        # None: every day in the buckets.
        self.contract_from: int | None = None
        self.balance_fen: int | None = None
        self.balance_ms: int | None = None  # event time of the balance reading
        self.churned: Churn | None = None
        self.churned_ms: int | None = None  # event time of the last churn / reactivation
        self.port_out_request_ms: int | None = None
        self.light: Light | None = None
        self.light_since_ms: int | None = None
        self.reasons: tuple[Reason, ...] = ()
        # Dedup memory, in the order remembered: event times in UTC epoch minutes as offsets from
        # the earliest (uint16, or uint32 when they span more), and 64-bit hashes of event ids.
        self.seen_base = 0
        self.seen_off = array("H")
        self.seen_h = array("Q")
        # Frozen, and shared while empty: a set per subscriber was 100k more objects for the
        # garbage collector to walk.
        self.used: frozenset[str] = _NO_KEYS
        # The risk features' memory (rules.features). Decayed sums as of the end of local day
        # ordinal `*_ord` (0: nothing yet): incoming voice seconds, and the revenue fen and
        # outgoing seconds of the days pruned from the window (the previous window).
        self.in_sec = 0
        self.in_ord = 0
        self.prev_fen = 0
        self.prev_sec = 0
        self.prev_ord = 0
        self.last_use_ord = 0  # the latest local day ordinal with any usage event
        self.topup_ord = 0  # the local day ordinal of the latest top-up (0: none)
        self.topup_fen = 0  # its amount
        self.topup_avg_fen = 0  # running average of the top-ups before it (0: none)
        self.complaint_ords: tuple[int, ...] = ()  # local day ordinals, ascending
        self.port_requests = 0  # port-out requests applied
        # Usage of days after the open day when it was applied (a replay reads usage ahead of the
        # day closes): (local day ordinal, incoming voice seconds), ascending. Taken into the memory
        # above once its day is open (`prune`), so that a close's features never see a later day.
        self.use_ahead: tuple[tuple[int, int], ...] = ()
        # The risk score of the last day close that scored it (rules.risk), in basis points (0-10000);
        # None: never scored. The `risk` task fires on a crossing from one close to the next.
        self.risk_bp: int | None = None

    # --- queries -------------------------------------------------------------------------------

    @property
    def days(self) -> dict[int, list[int]]:
        """The day buckets as {local day ordinal: [revenue fen, outgoing voice seconds]} (a copy)."""
        first = self.day_first
        return {first + d: [f, s] for d, f, s in zip(self.day_off, self.day_fen, self.day_sec, strict=True)}

    @property
    def seen(self) -> dict[int, list[int]]:
        """The dedup memory as {event hash: [epoch minutes]} (a copy)."""
        out: dict[int, list[int]] = {}
        for h, k in zip(self.seen_h, self.seen_off, strict=True):
            out.setdefault(h, []).append(self.seen_base + k)
        return out

    def forget_seen(self) -> None:
        """Empty the dedup memory."""
        self.seen_base, self.seen_off, self.seen_h = 0, array("H"), array("Q")

    def window(self, open_day: date, window_days: int) -> tuple[int, int]:
        """Return (revenue fen, outgoing voice seconds) over [open_day - window_days, open_day - 1]."""
        end = open_day.toordinal() - self.day_first
        offsets = self.day_off
        lo = bisect_left(offsets, end - window_days)
        hi = bisect_left(offsets, end, lo)
        return sum(self.day_fen[lo:hi]), sum(self.day_sec[lo:hi])

    def port_out_open(self, at_ms: int, open_days: int) -> bool:
        """Tell whether a port-out request is open at `at_ms` (it lapses after `open_days`)."""
        req = self.port_out_request_ms
        return req is not None and at_ms - req < open_days * DAY_MS

    def mark_used(self, key: str) -> bool:
        """Mark a once-only stage (e.g. a contract stage or a birthday year) used; True if new."""
        if key in self.used:
            return False
        self.used = self.used | {key}
        return True

    def is_empty(self) -> bool:
        """Tell whether the state holds nothing worth keeping."""
        # Cheap fields first: this runs for every state written.
        if self.day_off or self.seen_h or self.has_profile or self.used or self.light is not None:
            return False
        return self == _EMPTY

    # --- maintenance ---------------------------------------------------------------------------

    def prune(self, open_day: date, tz: ZoneInfo, window_days: int) -> None:
        """Drop day buckets older than the window and dedup entries that can no longer match."""
        if self.use_ahead and self.use_ahead[0][0] <= open_day.toordinal():
            self._settle_ahead(open_day.toordinal())
        offsets = self.day_off
        if offsets:
            cut = open_day.toordinal() - window_days - self.day_first
            if offsets[0] < cut:
                n = bisect_left(offsets, cut)
                first = self.day_first
                if self.contract is not None:
                    # Leaving the buckets, the counted days' revenue stays in the contract's spend
                    # (contract_spend sums the buckets on top of contract_spent_fen).
                    start = self.contract_from
                    self.contract_spent_fen += sum(fen for k, fen in zip(offsets[:n], self.day_fen[:n])
                                                   if start is None or self.day_first + k >= start)
                for k, fen, sec in zip(offsets[:n], self.day_fen[:n], self.day_sec[:n]):
                    since = self.prev_ord
                    self.prev_fen, _ = decayed_add(self.prev_fen, since, fen, first + k)
                    self.prev_sec, self.prev_ord = decayed_add(self.prev_sec, since, sec, first + k)
                del offsets[:n], self.day_fen[:n], self.day_sec[:n]
                if offsets:
                    self._rebase_days(self.day_first + offsets[0])
        hashes = self.seen_h
        if not hashes:
            return
        # An incoming event that is still deduplicated has ts >= this day start; an entry
        # 24 h or more before that can match none of them.
        cut = _dedup_limit(open_day, tz) - self.seen_base
        if cut < 0:  # the earliest remembered (offset 0) is still needed
            return
        seen = self.seen_off
        if max(seen) <= cut:  # the usual case for a subscriber quiet for days: all of it goes
            self.forget_seen()
            return
        newest = seen[-1]
        if newest > cut and (len(seen) == 1 or max(seen[:-1]) <= cut):
            # All but the event just remembered: the usual case for one seen every few days.
            self.seen_base += newest
            self.seen_off, self.seen_h = array("H", (0,)), array("Q", (hashes[-1],))
            return
        kept = [k for k in seen if k > cut]
        least = min(kept)
        self.seen_base += least
        self.seen_off = array(_width(max(kept) - least, _SEEN_WIDTHS), [k - least for k in kept])
        self.seen_h = array("Q", [h for k, h in zip(seen, hashes) if k > cut])

    def usage_memory(self, day: int) -> tuple[int, int, int]:
        """Return (incoming seconds, their day ordinal, the last usage day ordinal) of the usage
        memory with the usage applied ahead of its day taken in up to the day before `day`."""
        in_sec, in_ord, last = self.in_sec, self.in_ord, self.last_use_ord
        for d, sec in self.use_ahead:
            if d >= day:
                break
            if sec:
                in_sec, in_ord = decayed_add(in_sec, in_ord, sec, d)
            last = max(last, d)
        return in_sec, in_ord, last

    def remember_ahead(self, day: int, in_sec: int) -> None:
        """Remember usage of local day ordinal `day`, after the open day, until that day opens."""
        ahead = self.use_ahead
        if not ahead:
            self.use_ahead = ((day, in_sec),)
            return
        last, last_sec = ahead[-1]
        if last == day:  # the usual case: another event of the latest day read
            if in_sec:
                self.use_ahead = (*ahead[:-1], (day, last_sec + in_sec))
            return
        if last < day:
            self.use_ahead = (*ahead, (day, in_sec))
            return
        merged = dict(ahead)
        merged[day] = merged.get(day, 0) + in_sec
        self.use_ahead = tuple(sorted(merged.items()))

    def _settle_ahead(self, open_ord: int) -> None:
        """Take the usage of the days now open into the memory, as if it had come on time."""
        self.in_sec, self.in_ord, self.last_use_ord = self.usage_memory(open_ord + 1)
        self.use_ahead = tuple(e for e in self.use_ahead if e[0] > open_ord)

    def is_duplicate(self, h: int, minute: int) -> bool:
        """Tell whether event hash `h` was remembered within a day of epoch minute `minute`."""
        hashes = self.seen_h
        try:
            i = hashes.index(h)
        except ValueError:
            return False
        k = minute - self.seen_base
        seen = self.seen_off
        while True:
            if abs(k - seen[i]) < DUPLICATE_MINUTES:
                return True
            try:
                i = hashes.index(h, i + 1)
            except ValueError:
                return False

    def remember(self, h: int, minute: int) -> None:
        """Remember event hash `h` at epoch minute `minute` (the dedup memory)."""
        if not self.seen_h:
            self.seen_base = minute
        k = minute - self.seen_base
        if k < 0:  # earlier than any remembered: offsets from this one
            self._rebase_seen(minute)
            k = 0
        try:
            self.seen_off.append(k)
        except OverflowError:
            self.seen_off = array("I", self.seen_off)
            self.seen_off.append(k)
        self.seen_h.append(h)

    def _rebase_seen(self, base: int) -> None:
        shift = self.seen_base - base
        offsets = [k + shift for k in self.seen_off]
        self.seen_off = array(_width(max(offsets, default=0), _SEEN_WIDTHS), offsets)
        self.seen_base = base

    def _rebase_days(self, first: int) -> None:
        shift = self.day_first - first
        offsets = [d + shift for d in self.day_off]
        self.day_off = array(_width(max(offsets, default=0), _OFFSET), offsets)
        self.day_first = first

    def add_to_day(self, o: int, fen: int, seconds: int) -> None:
        """Add to the bucket of local day ordinal `o`."""
        offsets = self.day_off
        n = len(offsets)
        if not n:
            self.day_first = o
        elif o < self.day_first:  # a late event for a day before the first bucket
            self._rebase_days(o)
            offsets = self.day_off
        k = o - self.day_first
        if n and offsets[n - 1] == k:
            i = n - 1
        else:
            i = bisect_left(offsets, k)
            if i == n or offsets[i] != k:
                try:
                    offsets.insert(i, k)
                except OverflowError:
                    offsets = self.day_off = array(_width(k, _OFFSET), offsets)
                    offsets.insert(i, k)
                self.day_fen.insert(i, 0)
                self.day_sec.insert(i, 0)
        total_fen, total_seconds = self.day_fen[i] + fen, self.day_sec[i] + seconds
        try:
            self.day_fen[i], self.day_sec[i] = total_fen, total_seconds
        except OverflowError:
            wide = "i" if self.day_fen.typecode == "h" and all(
                _I32_MIN <= v <= _I32_MAX for v in (total_fen, total_seconds)) else "q"
            self.day_fen, self.day_sec = array(wide, self.day_fen), array(wide, self.day_sec)
            self.day_fen[i], self.day_sec[i] = total_fen, total_seconds

    def contract_spend(self, day: date) -> int:
        """Return the contract's spend (fen) as the local `day` opens: its `spent` when written plus
        the revenue of the days from then to `day` (CONTRACT §5), in event time: the same whatever
        order the events were read in."""
        total = self.contract_spent_fen
        first, start, end = self.day_first, self.contract_from, day.toordinal()
        for k, fen in zip(self.day_off, self.day_fen):
            if first + k >= end:
                break
            if start is None or first + k >= start:
                total += fen
        return total

    # --- comparison ------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubscriberState):
            return NotImplemented
        # Compared as what they hold: the days by ordinal, the dedup memory as a set of (hash, minute).
        return all(getattr(self, s) == getattr(other, s) for s in _FIELDS) and self.days == other.days and sorted(
            self._seen_pairs()) == sorted(other._seen_pairs())

    def _seen_pairs(self) -> list[tuple[int, int]]:
        return [(h, self.seen_base + k) for h, k in zip(self.seen_h, self.seen_off, strict=True)]

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in (*_FIELDS, "days", "seen"))
        return f"SubscriberState({fields})"

# What equality and repr compare; the dedup memory is compared as a set (SubscriberState.__eq__).
_FIELDS: Final = tuple(s for s in SubscriberState.__slots__ if not s.startswith("_") and not s.startswith("seen_"))


@lru_cache(maxsize=1024)
def _dedup_limit(open_day: date, tz: ZoneInfo) -> int:
    """The newest epoch minute a remembered event can have and still match none to come."""
    return day_start_ms(open_day - timedelta(days=DEDUP_CLOSED_DAYS), tz) // 60_000 - DUPLICATE_MINUTES


_SEEN_WIDTHS: Final = ("H", "I")


def _width(largest: int, codes: tuple[str, ...]) -> str:
    """The narrowest of the unsigned array `codes` that holds 0..`largest`."""
    for code in codes:
        if largest < 1 << 8 * array(code).itemsize:
            return code
    raise OverflowError(f"offset {largest} too large")


_EMPTY = SubscriberState()


def decayed_add(total: int, as_of: int, value: int, day: int) -> tuple[int, int]:
    """Add `value` of local day ordinal `day` to a decayed sum as of the end of day `as_of` (0: empty);
    return the sum and its day (the later of the two)."""
    if not as_of:
        return value, day
    if day >= as_of:
        return round(total * DECAY_KEEP ** (day - as_of)) + value if day > as_of else total + value, day
    return total + round(value * DECAY_KEEP ** (as_of - day)), as_of


def decayed(total: int, as_of: int, day: int) -> float:
    """Return a decayed sum as of the end of local day ordinal `day` (days after it are not taken out)."""
    if not as_of or day <= as_of:
        return float(total)
    return total * DECAY_KEEP ** (day - as_of)
