"""A day's records as column arrays (`Rows`), before they are rendered as history lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

DAY: Final = 86400
# Record kinds of a day's rows. SPEC rows point into the day's list of pre-rendered lines.
VO, VI, SO, SI, DATA, FEE, BAL, TOPUP, ADJ, SPEC = range(10)
KIND_TOPIC: Final = (0, 0, 0, 0, 0, 1, 1, 1, 1)  # index into render.TOPICS
ID_DAY: Final = 10**10  # event_id = letter + (day + 1) * ID_DAY + sequence of the day


@dataclass(slots=True)
class Rows:
    """Records as columns: kind, subscriber, event time and production time (seconds since the
    run's first local midnight), event id number, and two kind-specific numbers."""

    kind: npt.NDArray[np.int8]
    sub: I64
    ts: I64
    emit: I64
    eid: I64
    a: I64
    b: I64

    @staticmethod
    def empty() -> Rows:
        z = np.zeros(0, dtype=np.int64)
        return Rows(np.zeros(0, dtype=np.int8), z, z, z, z, z, z)

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        if not parts:
            return Rows.empty()
        return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in Rows.__slots__))

    def take(self, idx: npt.NDArray[np.intp] | B) -> Rows:
        return Rows(*(getattr(self, f)[idx] for f in Rows.__slots__))

    def __len__(self) -> int:
        return len(self.kind)


class Specials:
    """A day's pre-rendered lines (profiles, lifecycle events, bad records) with their second and topic."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._sec: list[int] = []
        self._topic: list[int] = []

    def add(self, sec: int, topic: int, text: str) -> None:
        """Add `text`, produced at `sec` of the day into render.TOPICS[topic]."""
        self.texts.append(text)
        self._sec.append(sec)
        self._topic.append(topic)

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, t0: int) -> Rows:
        """Return SPEC rows of the day starting at `t0`: `a` indexes `texts`, `b` is the topic."""
        k = len(self.texts)
        return Rows(
            np.full(k, SPEC, dtype=np.int8),
            np.zeros(k, np.int64),
            t0 + np.asarray(self._sec, dtype=np.int64),
            t0 + np.asarray(self._sec, dtype=np.int64),
            np.zeros(k, np.int64),
            np.arange(k, dtype=np.int64),
            np.asarray(self._topic, dtype=np.int64),
        )


def sample_seconds(rng: np.random.Generator, weights: tuple[float, ...], k: int) -> I64:
    """Draw k seconds of the day from an hourly profile."""
    w = np.asarray(weights, dtype=np.float64)
    cdf = np.cumsum(w) / w.sum()
    u = rng.random(k)
    hour = np.minimum(np.searchsorted(cdf, u, side="right"), 23)
    lo = np.where(hour > 0, cdf[hour - 1], 0.0)
    frac = (u - lo) / (cdf[hour] - lo)
    seconds: I64 = np.minimum(((hour + frac) * 3600).astype(np.int64), DAY - 1)
    return seconds
