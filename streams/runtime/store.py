"""The state of the owned partitions in memory: subscribers, partition clocks, what changed since the last write.

Loaded from the state changelog after each rebalance (streams.runtime.recovery reads it); written
back by the checkpoint (streams.runtime.checkpoint). The storage codec of a subscriber's record is
used here only (`encode_state`, `encode_record`, `scan_record`).

Every changelog record says which input offsets its subscriber's state reflects (a header, the
partition's offsets at the write); a partition's clock record, written last, says where its
inputs are read from again. A crash between two records of a write leaves some subscribers ahead
of their clock: they are loaded as they are, `ahead` remembers their offsets, and the records they
reflect already are not applied again (`reflected`) while the partition reads them a second time.
The states themselves are held serialised by their container (streams.runtime.states), a
bounded number decoded.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from typing import Any

import numpy as np
import orjson
from aiokafka.partitioner import murmur2

from rules.events import BILLING, LIFECYCLE, USAGE, mask
from rules.lights import steady_before_window
from rules.schedule import Parked, PartitionClock
from rules.state import SubscriberState
from sinks.deadletters import DeadLetterSink
from streams.runtime.changelog import CLOCK_PREFIX, HELD, OPENED, passes, reflects
# The storage codec of a subscriber's record (and streams.runtime.states' of its state).
from streams.runtime.codec import decode_state as decode_state, encode_record as encode_record, scan_record
from streams.runtime.codec import encode_state as encode_state
from streams.runtime.states import States

log = logging.getLogger(__name__)

# The key prefix of a partition's clock record in the changelog.
META_PREFIX = CLOCK_PREFIX
# The dead-letter metric's topic label of unreadable state records.
STATE = "state"
# Per subscriber ahead of its partition's clock: the last offset applied per input topic (and HELD,
# OPENED: streams.runtime.changelog).
Offsets = dict[str, int]


def partition_of(key: bytes, partitions: int) -> int:
    """Return the partition Kafka's default (murmur2) partitioner gives `key`."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def partitions_of(keys: Sequence[bytes], partitions: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Return `partition_of` of every key, computed over all keys of one length at once (numpy):
    a partition let go in a rebalance drops its subscribers while the others wait, and the
    per-key murmur2 took 3.5 us a key."""
    out = np.empty(len(keys), dtype=np.int64)
    if not keys:
        return out
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    m = np.uint32(0x5BD1E995)
    for length in np.unique(lengths).tolist():
        at = np.flatnonzero(lengths == length)
        group = keys if len(at) == len(keys) else [keys[i] for i in at.tolist()]
        data = np.frombuffer(b"".join(group), dtype=np.uint8).reshape(len(at), length).astype(np.uint32)
        h = np.full(len(at), 0x9747B28C ^ length, dtype=np.uint32)
        for i in range(0, length - length % 4, 4):
            k = data[:, i] | (data[:, i + 1] << 8) | (data[:, i + 2] << 16) | (data[:, i + 3] << 24)
            k *= m
            k ^= k >> 24
            k *= m
            h *= m
            h ^= k
        tail = length & ~3
        if length % 4 >= 3:
            h ^= data[:, tail + 2] << 16
        if length % 4 >= 2:
            h ^= data[:, tail + 1] << 8
        if length % 4 >= 1:
            h ^= data[:, tail]
            h *= m
        h ^= h >> 13
        h *= m
        h ^= h >> 15
        out[at] = (h & 0x7FFFFFFF) % partitions
    return out


def clock_key(p: int) -> bytes:
    """The changelog key of partition `p`'s clock record."""
    return META_PREFIX + str(p).encode()


def encode_clock(clock: PartitionClock) -> bytes:
    """Serialise a partition clock for its changelog record."""
    return orjson.dumps({
        "mx": clock.max_ts, "wm": clock.watermark_ms, "ft": clock.first_ts,
        "fd": clock.first_day.toordinal() if clock.first_day else None,
        "od": clock.open_day.toordinal() if clock.open_day else None,
        "of": clock.offsets,
        "out": clock.out,
        "su": clock.suspect,
        "w": clock.write,
    })


def decode_clock(data: bytes) -> PartitionClock:
    """Rebuild a partition clock from its changelog record.

    Parked records live in their subscribers' records; a clock written before 2026-12-06 holds
    them itself, and they are parked again from it (`Store.load` puts them in their records).
    """
    doc = orjson.loads(data)
    clock = PartitionClock()
    clock.max_ts = {str(k): int(v) for k, v in doc.get("mx", {}).items()}
    clock.watermark_ms = doc.get("wm")
    clock.first_ts = doc.get("ft")
    clock.first_day = date.fromordinal(doc["fd"]) if doc.get("fd") else None
    clock.open_day = date.fromordinal(doc["od"]) if doc.get("od") else None
    legacy = [_parked(item, LIFECYCLE) for item in doc.get("pk", [])]
    # Written before 2026-12-05: billing events waiting for the profiles topic, kept apart.
    legacy += [_parked(item, BILLING) for item in doc.get("wt", [])]
    clock.restore(legacy)
    clock.offsets = {str(k): int(v) for k, v in doc.get("of", {}).items()}
    clock.out = {str(k): int(v) for k, v in doc.get("out", {}).items()}
    clock.suspect = None if doc.get("su") is None else _parked(doc["su"], USAGE)
    clock.write = int(doc.get("w", 0))
    return clock


def _parked(item: list[Any], topic: str) -> Parked:
    if len(item) == 4:  # written before 2026-12-05: (ts, kafka ts, key, value), lifecycle or billing
        ts, kafka_ts, key, value = item
        return (int(ts), -1 if kafka_ts is None else int(kafka_ts), str(key), str(value), topic, "", 0)
    ts, kafka_ts, key, value, base, source, waited = item
    return (int(ts), int(kafka_ts), str(key), str(value), str(base), str(source), int(waited))


# What the watched index keeps of a subscriber: light, region, brand, and whether a close before
# the window is whole would leave it as it is.
Facet = tuple[str | None, str | None, str | None, bool]


class Store:
    """Subscriber states and partition clocks of the owned partitions, and what changed since the last write."""

    def __init__(self, partitions: int, hot_states: int = 1 << 62) -> None:
        # `hot_states`: the worker's setting; unbounded when not given (a test's store).
        self.partitions = partitions
        self.clocks: dict[int, PartitionClock] = {}
        # Held serialised, at most `hot_states` decoded (streams.runtime.states).
        self.states = States(hot_states, self._corrupt)
        # Where a state that fails to decode is reported (the last load's).
        self._dead: DeadLetterSink | None = None
        self._changelog = "state-changelog"
        # Per partition, the photographed subscribers (their lights are judged at each close) and
        # the profiled ones a day opening can be due to (a contract stage, a birthday). The watched
        # map to a code of their `Facet`, kept with every change of it, so that neither the gauges'
        # summary nor a close before the window is whole decodes a state for it.
        self.watched: dict[int, dict[bytes, int]] = {}
        self.dated: dict[int, set[bytes]] = {}
        self._facets: dict[Facet, int] = {}
        self._facet_of: list[Facet] = []
        # Subscribers touched since the last write, per partition; partitions whose clock changed.
        self.dirty: dict[int, set[bytes]] = {}
        self.dirty_clocks: set[int] = set()
        # Per partition, the subscribers whose loaded state reflects input records past the clock's
        # offsets (a crash in the middle of a state write): their offsets (module docstring).
        self.ahead: dict[int, dict[bytes, Offsets]] = {}

    def adopt(self, p: int) -> PartitionClock:
        """Start partition `p` empty: a record of a partition no load covered (the backtest's)."""
        self.watched.setdefault(p, {})
        self.dated.setdefault(p, set())
        clock = self.clocks[p] = PartitionClock()
        return clock

    def state(self, key: bytes) -> SubscriberState:
        """Return the state of `key` to change (then `touch`), created empty if there is none."""
        return self.states.fetch(key)

    def index(self, p: int, key: bytes, state: SubscriberState) -> None:
        """Note whether `key` is watched (photographed), with its light, region and brand, and dated
        (a profile with a contract or birthday)."""
        if state.photo is not None:
            self.watched[p][key] = self._code((state.light, state.region, state.brand, steady_before_window(state)))
        else:
            self.watched[p].pop(key, None)
        dated = state.has_profile and (state.contract is not None or state.birthday is not None)
        (self.dated[p].add if dated else self.dated[p].discard)(key)

    def watched_facets(self, partitions: set[int]) -> dict[tuple[str | None, str | None, str | None], int]:
        """Count the watched subscribers of `partitions` by (light, region, brand)."""
        by_code: dict[int, int] = {}
        for p, codes in self.watched.items():
            if p in partitions:
                for code in codes.values():
                    by_code[code] = by_code.get(code, 0) + 1
        counts: dict[tuple[str | None, str | None, str | None], int] = {}
        for code, n in by_code.items():
            light, region, brand, _ = self._facet_of[code]
            counts[light, region, brand] = counts.get((light, region, brand), 0) + n
        return counts

    def unsteady(self, p: int) -> list[bytes]:
        """The watched subscribers of partition `p` a close before the window is whole judges
        (rules.lights.steady_before_window: the others stay as they are)."""
        facet_of = self._facet_of
        return [key for key, code in self.watched.get(p, {}).items() if not facet_of[code][3]]

    def touch(self, p: int, key: bytes) -> None:
        """Mark `key` of partition `p` for the next write: its state (from `state`) changed."""
        keys = self.dirty.get(p)
        if keys is None:
            keys = self.dirty[p] = set()
        keys.add(key)
        # States.touch, inline: every applied event comes here.
        states = self.states
        if key in states.hot:
            states.cold.pop(key, None)

    def keep(self, p: int, key: bytes, state: SubscriberState) -> None:
        """Mark `key` of partition `p` for the next write: `state`, read with `read`, changed (its
        light, say: indexed again)."""
        self.states.keep(key, state)
        self.touch(p, key)
        self.index(p, key, state)

    def read(self, keys: Iterable[bytes]) -> Iterator[tuple[bytes, SubscriberState]]:
        """Yield (key, state) for `keys`, decoded without entering the cache (a day close reads every
        watched subscriber); one that is changed goes back with `keep`."""
        return self.states.items(keys)

    def has_profile(self, key: bytes) -> bool:
        state = self.states.get(key)
        return state is not None and state.has_profile

    def reflected(self, p: int, key: bytes, base: str, offset: int) -> bool:
        """Say whether the state of `key` (partition `p`) reflects record `offset` of topic `base`
        already: loaded ahead of its clock, it is not applied again (module docstring)."""
        ahead = self.ahead.get(p)
        if not ahead:
            return False
        offsets = ahead.get(key)
        return offsets is not None and offset <= offsets.get(base, -1) and not (
            base == USAGE and offset == offsets.get(HELD))

    def caught_up(self, p: int) -> None:
        """Forget the subscribers of `p` whose offsets its clock has reached (after a state write)."""
        ahead = self.ahead.get(p)
        clock = self.clocks.get(p)
        if not ahead or clock is None:
            return
        done = reflects(clock.offsets, None if clock.open_day is None else clock.open_day.toordinal())
        for key in [k for k, offsets in ahead.items() if not passes(offsets, done)]:
            del ahead[key]
        if not ahead:
            del self.ahead[p]

    def judged(self, p: int, day: date) -> set[bytes]:
        """The subscribers of `p` loaded ahead of their clock whose state has been through the close
        before `day` already (its day buckets and dedup memory pruned for a later day): a close
        read again does not judge them again."""
        ahead = self.ahead.get(p)
        if not ahead:
            return set()
        n = day.toordinal()
        return {key for key, offsets in ahead.items() if offsets.get(OPENED, 0) >= n}

    def dirty_count(self) -> int:
        return sum(len(keys) for keys in self.dirty.values())

    def load(self, owned: set[int], data: Mapping[int, Mapping[bytes, bytes]], changelog: str, dead: DeadLetterSink,
             ahead: dict[int, dict[bytes, Offsets]] | None = None, *,
             kept: set[int] | frozenset[int] = frozenset()) -> None:
        """Replace the state with what the changelog holds for partitions `owned` (after a rebalance),
        except partitions `kept`, whose state in memory stays as it is (`data`, per partition the
        latest value of each key, need not hold them); `ahead`: the subscribers found ahead of
        their partition's clock (streams.runtime.recovery).

        The states are indexed from their records' heads and decoded when first read
        (streams.runtime.states). A record that cannot be read is skipped, so that the rest of the
        partition loads (issue 13): dead-lettered with the next batch, and overwritten in the
        changelog by the next write; so is one whose arrays fail to decode when it is first read.
        A partition whose clock is lost is rebuilt from its input topics, from their first offsets.
        """
        started = time.monotonic()
        self._dead, self._changelog = dead, changelog
        kept = kept & owned
        if kept:
            self.drop((set(self.clocks) | set(self.watched)) - kept)
        else:
            self.clocks.clear()
            self.states.clear()
        self.watched = {p: self.watched[p] if p in kept else {} for p in owned}
        self.dated = {p: self.dated[p] if p in kept else set() for p in owned}
        owned = owned - kept  # the partitions read from `data`
        self.dirty.clear()
        self.dirty_clocks.clear()
        self.ahead = {**{p: keys for p, keys in self.ahead.items() if p in kept},
                      **{p: dict(keys) for p, keys in (ahead or {}).items() if p in owned and keys}}
        corrupt: list[tuple[int, bytes, bytes, str]] = []
        parked: dict[int, list[Parked]] = {}
        cold = self.states.cold
        for p, records in data.items():
            if p not in owned:
                continue
            watched, dated = self.watched[p], self.dated[p]
            for key, value in records.items():
                if key.startswith(b"~"):
                    if key.startswith(META_PREFIX):
                        try:
                            if int(key[len(META_PREFIX):]) == p:
                                self.clocks[p] = decode_clock(value)
                        except Exception as exc:
                            corrupt.append((p, key, value, type(exc).__name__))
                    continue  # else the changelog's own markers, never a subscriber
                try:
                    head, own, held = scan_record(key, value)
                except Exception as exc:
                    corrupt.append((p, key, value, type(exc).__name__))
                    continue
                if held:
                    parked.setdefault(p, []).extend(held)
                if head is None:
                    continue
                cold[key] = own  # decoded when first read (streams.runtime.states)
                # `index`, inline: a new partition's indexes hold nothing yet.
                if head.watched:
                    watched[key] = self._code((head.light, head.region, head.brand, steady_before_window(head)))
                if head.dated and head.has_profile:
                    dated.add(key)
        lost_clocks: set[int] = set()
        for p, key, value, error in corrupt:
            dead.put(STATE, key, value, [], f"{changelog}/{p}", "corrupt_state", exception=error, identity_key=key)
            if key.startswith(META_PREFIX):
                lost_clocks.add(p)
                log.error("the clock record of partition %d in %s cannot be read (%s): the partition's state is "
                          "rebuilt from its input topics, from their first offsets", p, changelog, error)
            else:
                log.error("the state of subscriber %s in %s/%d cannot be read (%s): it starts empty", mask(
                    key.decode("utf-8", "replace")), changelog, p, error)
        dropped: list[tuple[int, bytes]] = []
        for p in lost_clocks:
            # The states' offsets are gone with the clock: what the inputs still hold is read again.
            for key in [k for k in self.states if partition_of(k, self.partitions) == p]:
                del self.states[key]
                dropped.append((p, key))
            parked.pop(p, None)
            self.ahead.pop(p, None)
            self.watched[p], self.dated[p] = {}, set()
        for p in owned:
            clock = self.clocks.setdefault(p, PartitionClock())
            if clock.parked:
                # Parked in the clock record (written before 2026-12-06): into their subscribers' records.
                for entry in clock.parked:
                    self.touch(p, entry[2].encode())
                self.dirty_clocks.add(p)
            if p in parked:
                legacy, clock.parked, clock.held = clock.parked, [], {}
                clock.restore(list(set(legacy) | set(parked[p])))
        for p, key in [*((p, key) for p, key, _, _ in corrupt if not key.startswith(META_PREFIX)), *dropped]:
            self.touch(p, key)  # without a state by the next write: a tombstone replaces the record
        self.dirty_clocks.update(lost_clocks)
        if self.ahead:
            log.warning("a state write was cut short (a crash): %d subscribers of partitions %s are ahead of their "
                        "partition's offsets; their records already applied are not applied again",
                        sum(len(keys) for keys in self.ahead.values()), sorted(self.ahead))
        log.debug("indexed %d subscribers in %.2f s", len(self.states), time.monotonic() - started)

    def _corrupt(self, key: bytes, data: bytes, exc: ValueError) -> None:
        """A state loaded unread turned out not to decode (streams.runtime.states has forgotten it): as
        a load does with an unreadable record, dead-letter it, log it and start the subscriber empty."""
        p = partition_of(key, self.partitions)
        self.watched.get(p, {}).pop(key, None)
        self.dated.get(p, set()).discard(key)
        self.touch(p, key)  # without a state by the next write: a tombstone replaces the record
        if self._dead is not None:
            self._dead.put(STATE, key, data, [], f"{self._changelog}/{p}", "corrupt_state",
                           exception=type(exc).__name__, identity_key=key)
        log.error("the state of subscriber %s in %s/%d cannot be read (%s): it starts empty",
                  mask(key.decode("utf-8", "replace")), self._changelog, p, type(exc).__name__)

    def take(self, other: Store, dead: DeadLetterSink, kept: set[int] | frozenset[int] = frozenset()) -> None:
        """Hold what `other`, loaded apart (in a thread: streams.runtime.processor `prebuild`), holds,
        in place of what this store held, except partitions `kept`, which stay as they are; a state
        that fails to decode goes to `dead`. `other` has nothing to write (`prebuild` says so)."""
        self._dead, self._changelog = dead, other._changelog
        if not kept:
            self.clocks, self.watched, self.dated, self.ahead = other.clocks, other.watched, other.dated, other.ahead
            self._facets, self._facet_of = other._facets, other._facet_of
            self.states.cold, self.states.hot = other.states.cold, other.states.hot
            self.dirty, self.dirty_clocks = other.dirty, other.dirty_clocks
            return
        self.drop((set(self.clocks) | set(self.watched)) - kept)
        self.dirty.clear()
        self.dirty_clocks.clear()
        code_of = [self._code(facet) for facet in other._facet_of]  # its facets' codes here
        for p, codes in other.watched.items():
            self.watched[p] = {key: code_of[code] for key, code in codes.items()}
        self.dated.update(other.dated)
        self.clocks.update(other.clocks)
        self.ahead = {**{p: keys for p, keys in self.ahead.items() if p in kept}, **other.ahead}
        self.states.cold.update(other.states.cold)
        for key, state in other.states.hot.items():
            self.states.keep(key, state)

    def _code(self, facet: Facet) -> int:
        """The code of `facet` in the watched index (a new one for a facet not seen before)."""
        code = self._facets.get(facet)
        if code is None:
            code = self._facets[facet] = len(self._facet_of)
            self._facet_of.append(facet)
        return code

    def drop(self, partitions: set[int]) -> None:
        """Forget partitions `partitions` (let go in a rebalance): their clocks, indexes and states."""
        if not partitions:
            return
        for p in partitions:
            self.clocks.pop(p, None)
            self.watched.pop(p, None)
            self.dated.pop(p, None)
        keys = list(self.states)
        gone = np.isin(partitions_of(keys, self.partitions), sorted(partitions))
        for key in itertools.compress(keys, gone.tolist()):
            del self.states[key]
