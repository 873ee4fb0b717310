"""The subscribers' states of a worker: kept serialised, decoded on touch, a bounded number decoded at once.

A decoded `SubscriberState` costs about 1.6 KiB of memory, its serialised form (the changelog's
value) a fifth of that. `States` holds every subscriber as the bytes the changelog has (or will
have at the next state write), behind two bytes naming its partition, and a bounded cache of
decoded ones; a decoded state the pipeline changed (`touch`) is encoded again when it leaves the
cache or when the state is written.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from rules.state import SubscriberState

# Decoded states kept at once (about 1.6 KiB each: 80 MB). A worker with more subscribers than
# this pays a decode for most events (memory against CPU: at 1M, 80 bytes a subscriber). A state
# is handed out to be changed in place and marked with `touch`: the cache must be larger than the
# number of states any one step holds at the same time (one per event or evaluation), by far.
HOT_STATES = 50_000
# The value of a key created (`states[key] = ...`) and not touched yet: no partition known, empty.
_NEW = b""


def tag(p: int) -> bytes:
    """The two bytes in front of every value of partition `p`."""
    return p.to_bytes(2, "big")


class States:
    """A mapping of msisdn (bytes) to `SubscriberState`, resident as (partition, bytes)."""

    __slots__ = ("_cold", "_hot", "_dirty", "hot_max")

    def __init__(self, hot_max: int = HOT_STATES) -> None:
        # Every key's partition tag and latest encoded value (the tag alone: an empty state).
        self._cold: dict[bytes, bytes] = {}
        # Decoded states, oldest first; those in `_dirty` may differ from their bytes. (An
        # OrderedDict: taking the oldest of a plain dict again and again walks the holes the
        # earlier ones left at its start.)
        self._hot: OrderedDict[bytes, SubscriberState] = OrderedDict()
        self._dirty: set[bytes] = set()
        self.hot_max = hot_max

    def __len__(self) -> int:
        return len(self._cold)

    def __contains__(self, key: object) -> bool:
        return key in self._cold

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._cold))

    def get(self, key: bytes, default: SubscriberState | None = None) -> SubscriberState | None:
        """Return the state of `key`, decoded (kept in the cache), or `default`."""
        state = self._hot.get(key)
        if state is not None:
            return state
        data = self._cold.get(key)
        if data is None:
            return default
        state = _decode(data)
        self._keep(key, state)
        return state

    def hot(self, key: bytes) -> SubscriberState | None:
        """Return the state of `key` if it is decoded now (never decodes)."""
        return self._hot.get(key)

    def __getitem__(self, key: bytes) -> SubscriberState:
        state = self.get(key)
        if state is None:
            raise KeyError(key)
        return state

    def __setitem__(self, key: bytes, state: SubscriberState) -> None:
        """Add or replace the state of `key` (encoded when it leaves the cache or is written)."""
        if key not in self._hot:
            self._keep(key, state)
        else:
            self._hot[key] = state
        self._cold.setdefault(key, _NEW)
        self._dirty.add(key)

    def touch(self, key: bytes, p: int) -> None:
        """Note that the decoded state of `key` (of partition `p`) changed: its bytes are out of date."""
        if key in self._hot:
            self._dirty.add(key)
            if self._cold.get(key) == _NEW:
                self._cold[key] = tag(p)

    def pop(self, key: bytes, default: SubscriberState | None = None) -> SubscriberState | None:
        state = self._hot.pop(key, None)
        data = self._cold.pop(key, None)
        self._dirty.discard(key)
        if state is None and data is not None:
            state = _decode(data)
        return default if state is None else state

    def __delitem__(self, key: bytes) -> None:
        if key not in self._cold:
            raise KeyError(key)
        self.pop(key)

    def clear(self) -> None:
        self._cold.clear()
        self._hot.clear()
        self._dirty.clear()

    def put_bytes(self, p: int, key: bytes, data: bytes) -> None:
        """Take the serialised state of `key` in partition `p` as it is (a load)."""
        self._cold[key] = tag(p) + data
        if self._hot.pop(key, None) is not None:
            self._dirty.discard(key)

    def drop(self, partitions: Iterable[int]) -> list[bytes]:
        """Forget every state of `partitions`; return their keys."""
        tags = {tag(p) for p in partitions}
        if not tags:
            return []
        keys = [key for key, data in self._cold.items() if data[:2] in tags]
        for key in keys:
            self.pop(key)
        return keys

    def encoded(self, key: bytes) -> bytes | None:
        """Return the current bytes of `key` for a state write; None (and the key removed) when
        its state is absent or empty."""
        state = self._hot.get(key)
        if state is not None and key in self._dirty:
            self._dirty.discard(key)
            prefix = self._cold[key][:2]
            if not prefix or state.is_empty():
                self.pop(key)
                return None
            value = state.to_bytes()
            self._cold[key] = prefix + value
            return value
        data = self._cold.get(key)
        if data is None or len(data) <= 2:
            self.pop(key)
            return None
        return data[2:]

    def values(self) -> Iterator[SubscriberState]:
        """Every state, decoded one by one without entering the cache (for reading only)."""
        for _, state in self.items():
            yield state

    def items(self) -> Iterator[tuple[bytes, SubscriberState]]:
        """Every (key, state), decoded one by one without entering the cache (for reading only)."""
        hot = self._hot
        for key, data in list(self._cold.items()):
            state = hot.get(key)
            yield key, _decode(data) if state is None else state

    def _keep(self, key: bytes, state: SubscriberState) -> None:
        hot = self._hot
        hot[key] = state
        while len(hot) > self.hot_max:
            old, evicted = hot.popitem(last=False)
            if old in self._dirty:
                self._dirty.discard(old)
                prefix = self._cold[old][:2]
                if not prefix:
                    del self._cold[old]  # created, never touched: nothing to keep
                else:
                    self._cold[old] = prefix if evicted.is_empty() else prefix + evicted.to_bytes()


def _decode(data: bytes) -> SubscriberState:
    return SubscriberState.from_bytes(data[2:]) if len(data) > 2 else SubscriberState()
