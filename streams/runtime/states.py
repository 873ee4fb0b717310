"""The subscribers' states of the owned partitions: held serialised, a bounded number decoded (issue 15).

A decoded `SubscriberState` costs about 1 KiB of memory, its serialised form (what the changelog
holds, streams.runtime.codec) a fifth of that. `States` holds every subscriber as those bytes and
at most `hot_max` decoded states; the one decoded longest ago goes back to bytes when another is
decoded (first in, first out: a hit costs no bookkeeping, and under uniform traffic the order
would not matter).

A load indexes the states from their records' heads and decodes none (streams.runtime.codec
`scan_record`): each is decoded when first read. One that cannot be decoded then is reported to
`corrupt` (the store dead-letters it, as a load does one whose head is unreadable) and read as
none: the subscriber starts empty.

Whoever changes a decoded state says so (`touch`, or `keep` for one read with `peek`): its bytes
are then out of date and dropped, and it is encoded again when it leaves the cache or when the
state is written (`encoded`), whichever comes first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from rules.state import SubscriberState
from streams.runtime.codec import decode_state, encode_state


class States:
    """A mapping of msisdn (bytes) to `SubscriberState`, resident as bytes, with a cache of decoded ones."""

    __slots__ = ("cold", "corrupt", "hot", "hot_max")

    def __init__(self, hot_max: int, corrupt: Callable[[bytes, bytes, ValueError], None] | None = None) -> None:
        # Serialised states. A key's bytes, when present, are its current state: a touched decoded
        # state loses them until it is encoded again. Every key is here, in `hot`, or in both.
        self.cold: dict[bytes, bytes] = {}
        # Decoded states, the oldest decoded first. Read directly on the usage event's path
        # (streams.runtime.processor): a hit is one dictionary lookup, as before this cache.
        self.hot: OrderedDict[bytes, SubscriberState] = OrderedDict()
        self.hot_max = max(1, hot_max)
        # Told of a state that cannot be decoded (key, bytes, the error) after it is forgotten.
        self.corrupt = corrupt

    def __len__(self) -> int:
        cold = self.cold
        return len(cold) + sum(1 for key in self.hot if key not in cold)

    def __contains__(self, key: object) -> bool:
        return key in self.hot or key in self.cold

    def __iter__(self) -> Iterator[bytes]:
        """Every key, as they are now (the states may change while it runs)."""
        cold = self.cold
        return iter([*cold, *(key for key in self.hot if key not in cold)])

    def get(self, key: bytes) -> SubscriberState | None:
        """Return the state of `key`, decoded and kept in the cache; None if there is none."""
        state = self.hot.get(key)
        if state is not None:
            return state
        data = self.cold.get(key)
        if data is None:
            return None
        state = self._decode(key, data)
        if state is not None:
            self._keep(key, state)
        return state

    def fetch(self, key: bytes) -> SubscriberState:
        """Return the state of `key`, decoded and kept in the cache, created empty if there is none."""
        state = self.get(key)
        if state is None:
            state = SubscriberState()
            self._keep(key, state)
        return state

    def peek(self, key: bytes) -> SubscriberState:
        """Return the state of `key` without entering the cache (a copy if it is not decoded): to
        read; one that is changed goes back with `keep`. KeyError if there is none."""
        state = self.hot.get(key)
        if state is not None:
            return state
        return self._decode(key, self.cold[key]) or SubscriberState()

    def touch(self, key: bytes) -> None:
        """Note that the decoded state of `key` (from `get` or `fetch`) changed."""
        if key in self.hot:
            self.cold.pop(key, None)

    def keep(self, key: bytes, state: SubscriberState) -> None:
        """Take `state` as the changed state of `key` (one read with `peek`)."""
        self.cold.pop(key, None)
        if key in self.hot:
            self.hot[key] = state
        else:
            self._keep(key, state)

    def put(self, key: bytes, data: bytes) -> None:
        """Take the serialised state of `key` as a load gives it (the changelog's value), to be
        decoded when first read. (streams.runtime.store's load fills `cold` so, inline.)"""
        self.hot.pop(key, None)
        self.cold[key] = data

    def encoded(self, key: bytes) -> bytes | None:
        """Return the serialised state of `key` for a state write; None, and the key dropped, when it
        has none or an empty one (its record becomes a tombstone)."""
        data = self.cold.get(key)
        if data is not None:
            return data
        state = self.hot.get(key)
        if state is None or state.is_empty():
            self.hot.pop(key, None)
            return None
        data = encode_state(state)
        if len(self.hot) >= self.hot_max:
            # Decoded states leave the cache now: this one goes without being encoded again.
            self.cold[key] = data
        return data

    def pop(self, key: bytes) -> None:
        """Forget `key`."""
        self.hot.pop(key, None)
        self.cold.pop(key, None)

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self.pop(key)

    def clear(self) -> None:
        self.cold.clear()
        self.hot.clear()

    def items(self, keys: Iterable[bytes] | None = None) -> Iterator[tuple[bytes, SubscriberState]]:
        """Yield (key, state) for `keys` (default: every key) as `peek` reads them."""
        for key in self if keys is None else keys:
            yield key, self.peek(key)

    def _decode(self, key: bytes, data: bytes) -> SubscriberState | None:
        try:
            return decode_state(data)
        except ValueError as exc:
            del self.cold[key]
            if self.corrupt is None:
                raise
            self.corrupt(key, data, exc)
            return None

    def _keep(self, key: bytes, state: SubscriberState) -> None:
        hot = self.hot
        hot[key] = state
        if len(hot) > self.hot_max:
            cold = self.cold
            old, evicted = hot.popitem(last=False)
            if old not in cold and not evicted.is_empty():
                cold[old] = encode_state(evicted)
