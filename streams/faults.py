"""Crash points for the fault battery: kill the worker at a chosen step, not by chance.

`CHURNLIGHT_FAULT=point[:n]` (tests only) makes the n-th arrival at `point` send SIGKILL to the
worker itself, as a kill -9 from outside would at that instant: nothing after it runs, no
`finally`, no flush.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Final

log = logging.getLogger(__name__)

POINTS: Final = (
    "task_claimed",      # a task's publication claimed in Redis, its message not sent
    "task_sent",         # the broker acknowledged a task's message, the claim still `pending`
    "task_marked",       # the claim marked `sent`, the decision and feed entry not recorded
    "task_released",     # a morning's capacity release done in Redis, none of its tasks published
    "outputs_acked",     # a batch's outputs acknowledged, the state not written
    "state_half_written",  # half of a state write's records with the broker, the rest not
    "state_record",      # a state write's records up to this one with the broker (n counts them all)
    "state_before_clock",  # a partition's records of a state write with the broker, its clock record not
    "state_written",     # a state write acknowledged by the broker
    "claimed",           # a worker's claims of the partitions it loaded with the broker, no input read
    "released",          # a worker's releases of the partitions it lost with the broker, their inputs still assigned
)


class Faults:
    """Count arrivals at crash points; kill the process at the configured one."""

    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.at = 1
        self.seen = 0
        if spec:
            point, _, n = spec.partition(":")
            if point not in POINTS:
                raise ValueError(f"CHURNLIGHT_FAULT: unknown crash point {point!r}; one of {', '.join(POINTS)}")
            self.point, self.at = point, int(n or 1)

    def reached(self, point: str) -> None:
        """Note an arrival at `point`; die here if it is the configured one's n-th."""
        if point != self.point:
            return
        self.seen += 1
        if self.seen == self.at:
            log.warning("fault injection: SIGKILL at %s (arrival %d)", point, self.seen)
            os.kill(os.getpid(), signal.SIGKILL)


NONE: Final = Faults(None)
