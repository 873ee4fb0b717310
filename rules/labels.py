"""Metric label values from profile fields: a closed set, never a phone number (CONTRACT §9).

Regions and brands come from other systems' profiles; as labels they must stay a small closed
set, or one bad profile puts an msisdn into Prometheus and every new string is a new series.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

OTHER: Final = "other"
# Without a list in the rule set: short lower-case words, at most DEFAULT_CAP of them.
_WORD: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_DIGITS: Final = re.compile(r"\d{5,}")
DEFAULT_CAP: Final = 64


class LabelValues:
    """Map a profile field's value to a label value: itself when allowed, else `other`.

    `allowed` is the rule set's list; None accepts short lower-case words without a run of five
    digits, up to `cap` distinct ones. `noticed(value)` is called once per value sent to `other`.
    """

    def __init__(self, allowed: frozenset[str] | None, *, cap: int = DEFAULT_CAP,
                 noticed: Callable[[str], None] = lambda value: None) -> None:
        self.allowed = allowed
        self.cap = cap
        self.noticed = noticed
        self._seen: set[str] = set()
        self._other: set[str] = set()

    def __call__(self, value: str) -> str:
        if self.allowed is not None:
            if value in self.allowed:
                return value
        elif value in self._seen:
            return value
        elif _WORD.match(value) and not _DIGITS.search(value) and len(self._seen) < self.cap:
            self._seen.add(value)
            return value
        if value not in self._other and len(self._other) < 10 * self.cap:
            self._other.add(value)
            self.noticed(value)
        return OTHER


def shown(value: str) -> str:
    """Return `value` fit for a log line: digits masked, at most 40 characters."""
    return re.sub(r"\d", "*", value[:40])
