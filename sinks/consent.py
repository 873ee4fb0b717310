"""The consent sets in Redis (CONTRACT §3), shared with other systems."""

from __future__ import annotations

from typing import Final, Literal

import redis

from rules.event_types import MSISDN_RE

OPTOUT_SMS: Final = "churnlight:optout:sms"
DNC: Final = "churnlight:dnc"
ConsentSet = Literal["sms-optout", "dnc"]
KEYS: Final[dict[str, str]] = {"sms-optout": OPTOUT_SMS, "dnc": DNC}


class InvalidMsisdn(ValueError):
    """Some given numbers are not msisdns; nothing was written."""


def check_msisdns(numbers: list[str]) -> list[str]:
    """Return the cleaned numbers, or raise InvalidMsisdn listing the bad ones."""
    cleaned = [n.strip() for n in numbers if n.strip()]
    bad = [n for n in cleaned if not MSISDN_RE.match(n)]
    if bad:
        raise InvalidMsisdn(f"{len(bad)} value(s) are not msisdns (5-20 digits, optional +): {', '.join(bad[:5])}")
    return cleaned


def add(client: redis.Redis, which: ConsentSet, numbers: list[str]) -> int:
    """Add `numbers` to the set; return how many were new."""
    cleaned = check_msisdns(numbers)
    return int(client.sadd(KEYS[which], *cleaned)) if cleaned else 0


def remove(client: redis.Redis, which: ConsentSet, numbers: list[str]) -> int:
    """Remove `numbers` from the set; return how many were there."""
    cleaned = check_msisdns(numbers)
    return int(client.srem(KEYS[which], *cleaned)) if cleaned else 0


def members(client: redis.Redis, which: ConsentSet) -> list[str]:
    """Return the set's members, sorted."""
    return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in client.smembers(KEYS[which]))
