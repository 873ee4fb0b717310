"""Tune CPython's garbage collector for a worker that holds every owned subscriber in memory.

With CPython's defaults (700, 10, 10) a batch's records and events live across thousands of
allocations, so they reach the oldest generation, and its collections came every two seconds:
190 ms each over the objects of 100k subscribers, a ninth of the worker's time in the benchmark
(`churnlight bench`), and a pause in every batch they fell into. Subscriber states hold no
reference cycles (they are freed as soon as they are dropped), so the collector has next to
nothing to find in them.
"""

from __future__ import annotations

import gc
from typing import Final

# Objects allocated between young collections, and collections between older ones: a batch's
# records die young, and the oldest generation is walked every few million allocations.
THRESHOLDS: Final = (20_000, 20, 20)


def tune() -> None:
    """Collect rarely, and leave what the worker holds for good out of later collections."""
    gc.set_threshold(*THRESHOLDS)
    settle()


def settle() -> None:
    """Collect everything, then leave whatever survived out of later collections (after a state load).

    Frozen objects are still freed when nothing refers to them; only a reference cycle among
    them would wait for the next settle.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
