"""The subscribers' states of a worker: kept serialised, decoded on touch, a bounded number decoded at once.

A decoded `SubscriberState` costs about 1.6 KiB of memory, its serialised form (the changelog's
value) a fifth of that. `States` holds every subscriber as the bytes the changelog has (or will
have at the next state write) and a bounded cache of decoded ones; a decoded state the pipeline
changed (`touch`) is encoded again when it leaves the cache or when the state is written.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from rules.state import SubscriberState

# Decoded states kept at once (about 1.6 KiB each). A state is handed out to be changed in place
# and marked with `touch`: the cache must be larger than the number of states any one step holds
# at the same time (one per event or evaluation), by far.
HOT_STATES = 50_000
# The serialised value of a state that is empty (or created and not encoded yet, while decoded).
_EMPTY = b""


class States:
    """A mapping of msisdn (bytes) to `SubscriberState`, resident as bytes."""

    __slots__ = ("_cold", "_hot", "_dirty", "hot_max")

    def __init__(self, hot_max: int = HOT_STATES) -> None:
        # Every key's latest encoded value (_EMPTY: an empty state, or one only decoded so far).
        self._cold: dict[bytes, bytes] = {}
        # Decoded states, oldest first; those in `_dirty` may differ from their bytes.
        # (An OrderedDict: taking the oldest of a plain dict again and again walks the holes the
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
        state = SubscriberState.from_bytes(data) if data else SubscriberState()
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
        self._cold.setdefault(key, _EMPTY)
        self._dirty.add(key)

    def touch(self, key: bytes) -> None:
        """Note that the decoded state of `key` changed: its bytes are out of date."""
        if key in self._hot:
            self._dirty.add(key)

    def pop(self, key: bytes, default: SubscriberState | None = None) -> SubscriberState | None:
        state = self._hot.pop(key, None)
        data = self._cold.pop(key, None)
        self._dirty.discard(key)
        if state is None and data is not None:
            state = SubscriberState.from_bytes(data) if data else SubscriberState()
        return default if state is None else state

    def __delitem__(self, key: bytes) -> None:
        if key not in self._cold:
            raise KeyError(key)
        self.pop(key)

    def clear(self) -> None:
        self._cold.clear()
        self._hot.clear()
        self._dirty.clear()

    def put_bytes(self, key: bytes, data: bytes) -> None:
        """Take the serialised state of `key` as it is (a load from the changelog or local store)."""
        self._cold[key] = data
        if self._hot.pop(key, None) is not None:
            self._dirty.discard(key)

    def encoded(self, key: bytes) -> bytes | None:
        """Return the current bytes of `key` for a state write; None (and the key removed) when
        its state is absent or empty."""
        state = self._hot.get(key)
        if state is not None and key in self._dirty:
            self._dirty.discard(key)
            if state.is_empty():
                self.pop(key)
                return None
            data = self._cold[key] = state.to_bytes()
            return data
        data = self._cold.get(key)
        if not data:
            self.pop(key)
            return None
        return data

    def raw(self, key: bytes) -> bytes | None:
        """Return the bytes of `key` as last encoded (stale while its decoded state is touched)."""
        return self._cold.get(key)

    def values(self) -> Iterator[SubscriberState]:
        """Every state, decoded one by one without entering the cache (for reading only)."""
        for _, state in self.items():
            yield state

    def items(self) -> Iterator[tuple[bytes, SubscriberState]]:
        """Every (key, state), decoded one by one without entering the cache (for reading only)."""
        hot = self._hot
        for key, data in list(self._cold.items()):
            state = hot.get(key)
            if state is None:
                state = SubscriberState.from_bytes(data) if data else SubscriberState()
            yield key, state

    def _keep(self, key: bytes, state: SubscriberState) -> None:
        hot = self._hot
        hot[key] = state
        while len(hot) > self.hot_max:
            old, evicted = hot.popitem(last=False)
            if old in self._dirty:
                self._dirty.discard(old)
                self._cold[old] = _EMPTY if evicted.is_empty() else evicted.to_bytes()
