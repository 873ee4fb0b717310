"""Calls to a dependency that wait out its outages (Redis, the broker's producer).

A `Retrier` retries a call on the dependency's transient errors with exponential backoff until
it answers or `stop()` is called (then the call raises `Stopped`); it never answers from a guess,
and says in the logs when the dependency goes away and when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Final, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):
    """A call stopped waiting for its dependency because its owner is shutting down."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: `initial_s`, doubling, capped at `max_s`."""

    initial_s: float = 0.1
    max_s: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


DEFAULT_BACKOFF: Final = Backoff()


class Retrier:
    """Run calls to one dependency, waiting out its outages until stopped."""

    def __init__(self, name: str, transient: tuple[type[Exception], ...], backoff: Backoff) -> None:
        self.name = name  # what the logs call the dependency; never carries a secret
        self.transient = transient
        self.backoff = backoff
        self.degraded = False
        self._stopping = asyncio.Event()
        self._down_since = 0.0
        self._failures = 0

    def stop(self) -> None:
        """Make every call that is waiting, and every later one, raise `Stopped`."""
        self._stopping.set()

    async def call(self, action: str, op: Callable[[], Awaitable[T]]) -> T:
        """Return `op()`, retried on transient errors; `action` names it in logs (no msisdn)."""
        delays = self.backoff.delays()
        while True:
            if self._stopping.is_set():
                raise Stopped(f"stopped while waiting for {self.name} ({action})")
            try:
                result = await op()
            except self.transient as exc:
                self._failed(action, exc)
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=next(delays))
                except TimeoutError:
                    pass
                continue
            if self.degraded:
                self.degraded = False
                log.warning(
                    "%s is back after %.1f s (%d failed attempts); resuming",
                    self.name, time.monotonic() - self._down_since, self._failures,
                )
            return result

    def _failed(self, action: str, exc: Exception) -> None:
        if self.degraded:
            self._failures += 1
            log.debug("%s still unavailable (%s: %s) during %s", self.name, type(exc).__name__, exc, action)
            return
        self.degraded = True
        self._down_since = time.monotonic()
        self._failures = 1
        log.warning(
            "%s unavailable (%s: %s) during %s; retrying with backoff from %.1f s up to %.0f s "
            "until it is back", self.name, type(exc).__name__, exc, action,
            self.backoff.initial_s, self.backoff.max_s,
        )
