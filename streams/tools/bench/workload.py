"""The bench's synthetic base: a profile per subscriber (a quarter photographed) and N usage events
spread over ~30 days in time order."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson

from rules.events import PROFILES, USAGE

DAY_S: Final = 86400
# Bulk events cover [D0 00:00, D0 + 29.5 days): 29 local days close, but none with a full 30-day
# window behind it, so no light is judged and the bulk issues no task (CONTRACT §5, start-up rule).
# The latency step continues on the afternoon of the last day, before quiet hours.
BULK_SPAN_S: Final = 29.5 * DAY_S
START_DAYS_AGO: Final = 45  # far from the wall clock: no partition counts as live
MSISDN_BASE: Final = "100"  # + 8 digits: not an allocated mobile prefix, and clearly synthetic
PHOTO_SHARE: Final = 0.25
PREPAID_SHARE: Final = 0.5
REGIONS: Final = ("zunyi", "renhuai", "chishui", "tongzi", "xishui")
BRANDS: Final = ("gotone", "mzone", "easyown")
SEGMENTS: Final = ("high", "valuable", "low")


@dataclass(frozen=True, slots=True)
class Workload:
    """What gets produced: sizes, the seed and the local calendar it lives in."""

    events: int
    subscribers: int
    zone: ZoneInfo
    start_day: date
    seed: int = 7
    # Shifts the msisdn pool. Task ids hash the msisdn, and Redis remembers published ids: against
    # a Redis that outlives the run, a fresh offset keeps this run's tasks from being deduplicated.
    msisdn_offset: int = 0

    @property
    def start_s(self) -> float:
        """Epoch seconds of local 00:00 of the first day."""
        return datetime(self.start_day.year, self.start_day.month, self.start_day.day, tzinfo=self.zone).timestamp()

    @property
    def live_start_s(self) -> float:
        """Epoch seconds where the latency step's event times begin (after every bulk event)."""
        return self.start_s + BULK_SPAN_S

    def msisdn(self, i: int) -> str:
        return f"{MSISDN_BASE}{(self.msisdn_offset + i) % 10**8:08d}"

    def iso(self, epoch_s: float) -> str:
        return datetime.fromtimestamp(int(epoch_s), self.zone).isoformat()

    def profile(self, i: int, rng: random.Random) -> dict[str, Any]:
        """Return subscriber i's profile; the same seed always gives the same base."""
        before = self.start_day - timedelta(days=1)
        photo = None
        if rng.random() < PHOTO_SHARE:
            photo = {"month": before.strftime("%Y-%m"), "arpu": round(rng.lognormvariate(4.7, 0.5), 2),
                     "mou": round(rng.lognormvariate(5.0, 0.7), 2)}
        return {
            "msisdn": self.msisdn(i), "region": rng.choice(REGIONS), "brand": rng.choice(BRANDS),
            "segment": rng.choice(SEGMENTS),
            "activated_on": (self.start_day - timedelta(days=rng.randrange(30, 5000))).isoformat(),
            "prepaid": rng.random() < PREPAID_SHARE, "contract": None, "photo": photo,
            "updated_at": self.iso(self.start_s - 3600),
        }

    def profiles(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        for i in range(self.subscribers):
            yield self.profile(i, rng)

    def usage(self, rng: random.Random, event_id: str, msisdn: str, epoch_s: float) -> dict[str, Any]:
        """Return one valid usage event (CONTRACT §1): voice 35 %, sms 25 %, data 40 %."""
        doc: dict[str, Any] = {"event_id": event_id, "msisdn": msisdn, "ts": self.iso(epoch_s)}
        r = rng.random()
        if r < 0.35:
            out = rng.random() < 0.6
            minutes = round(rng.expovariate(1 / 2.5), 2)
            doc.update(type="voice", direction="out" if out else "in", minutes=minutes,
                       charge=round(minutes * 0.19, 2) if out else 0.0)
        elif r < 0.60:
            out = rng.random() < 0.5
            doc.update(type="sms", direction="out" if out else "in", charge=0.1 if out else 0.0)
        else:
            mb = round(rng.lognormvariate(3.0, 1.0), 2)
            doc.update(type="data", mb=mb, charge=round(mb * 0.01, 2))
        return doc

    def bulk(self) -> Iterator[dict[str, Any]]:
        """Yield the N usage events in time order, msisdns drawn uniformly from the base."""
        rng = random.Random(self.seed + 1)
        step = BULK_SPAN_S / max(1, self.events)
        t0 = self.start_s
        for i in range(self.events):
            yield self.usage(rng, f"u{i:012d}", self.msisdn(rng.randrange(self.subscribers)), t0 + i * step)


def records(workload: Workload) -> Iterator[tuple[str, bytes, bytes]]:
    """Yield (topic base, key, value) for the profiles first, then the usage events."""
    for doc in workload.profiles():
        yield PROFILES, doc["msisdn"].encode(), orjson.dumps(doc)
    for doc in workload.bulk():
        yield USAGE, doc["msisdn"].encode(), orjson.dumps(doc)


def prepaid_msisdns(workload: Workload) -> list[str]:
    return [doc["msisdn"] for doc in workload.profiles() if doc["prepaid"]]

