"""Which worker holds a partition: claim and release records in the state changelog (issue 15).

A worker reads its partitions on through a rebalance (streams.runtime.reader): Tansu answers a
rejoin only after seconds, and partitions a worker keeps would otherwise wait that long. A
partition it loses it therefore still reads after the group has given it to another worker, until
its own new assignment comes. Kafka offers no fence for that on this broker (no transactions), so
the workers keep one in the changelog: a worker writes a claim record to a partition's changelog
before it reads the partition's inputs, and a release once it has stopped (its state written,
its outputs acknowledged). A worker given a partition reads its changelog on past the end while the
latest of these records is another live member's claim, until that member's release comes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from streams.faults import NONE as NO_FAULTS
from streams.faults import Faults

if TYPE_CHECKING:
    from streams.runtime.changelog import ChangelogWriter
    from streams.runtime.ports import Membership

log = logging.getLogger(__name__)

# The key prefix of a partition's claim or release record (one key a partition).
OWNER_PREFIX = b"~own:"


@dataclass(frozen=True)
class Claim:
    """Who (a worker's canonical URL) claimed a partition, and whether it released it since."""

    by: str
    released: bool = False


def owner_key(p: int) -> bytes:
    """The changelog key of partition `p`'s claim and release records."""
    return OWNER_PREFIX + str(p).encode()


def encode_claim(claim: Claim) -> bytes:
    """Serialise a claim or release for its changelog record."""
    return orjson.dumps({"by": claim.by, "released": claim.released})


def decode_claim(value: bytes | None) -> Claim | None:
    """Read a claim record; None when there is none or it cannot be read (nobody is waited for)."""
    if not value:
        return None
    try:
        doc = orjson.loads(value)
        return Claim(str(doc["by"]), bool(doc.get("released", False)))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.warning("a claim record of the changelog cannot be read: taken as no claim")
        return None


def holder(claim: Claim | None, me: str, members: Collection[str]) -> str | None:
    """The worker to wait for before reading a partition whose latest claim is `claim`: its claimer,
    when that is another member of the group (`members`, canonical URLs) that has not released it.

    A claim of this worker's own is one its earlier process left (killed): nobody to wait for. Nor
    is a claimer gone from the group: a worker that loses its membership stops at once (the reader
    reads on only through a rebalance it is a member of).
    """
    if claim is None or claim.released or claim.by == me or claim.by not in members:
        return None
    return claim.by


class Claims:
    """This worker's claims: written before it reads a partition's inputs, released once it stops."""

    def __init__(self, group: Membership, changelog: ChangelogWriter | None, faults: Faults = NO_FAULTS) -> None:
        self.group = group
        self.changelog = changelog
        self.faults = faults
        # The partitions claimed and not released.
        self.held: set[int] = set()
        # Held while claims are written: a revocation waits for it, so that they land before this
        # worker rejoins (whoever the group gives the partition next then waits for its release).
        self.writing = asyncio.Lock()

    async def claim(self, partitions: set[int]) -> None:
        """Write this worker's claim of each of `partitions` (no state write in flight: its seal stays last)."""
        if not partitions or self.changelog is None:
            return
        # Written right after a load, whose local store refresh may take seconds: the local store
        # takes them with the next write instead.
        await self._write(partitions, Claim(self.group.me), store=False)
        self.held |= partitions
        log.info("claimed partitions %s", sorted(partitions))
        self.faults.reached("claimed")

    async def release(self, partitions: set[int]) -> None:
        """Write a release of each of `partitions`, which this worker reads no more (their state
        and outputs written first): their next owner reads them once it sees it."""
        if not partitions or self.changelog is None:
            return
        await self._write(partitions, Claim(self.group.me, released=True), store=True)
        self.held -= partitions
        log.info("released partitions %s to their next owner", sorted(partitions))
        self.faults.reached("released")

    async def _write(self, partitions: set[int], claim: Claim, *, store: bool) -> None:
        assert self.changelog is not None
        value = encode_claim(claim)
        for p in sorted(partitions):
            self.changelog.write(p, owner_key(p), value)
        await self.changelog.flush(store=store)

    def busy(self, partitions: set[int], claims: dict[int, Claim | None]) -> set[int]:
        """The partitions of `partitions` not held here whose latest claim (`claims`) is another member's."""
        me, members = self.group.me, self.group.members()
        return {p for p in partitions - self.held if holder(claims.get(p), me, members) is not None}

    def waits(self, stale: Callable[[], bool], limit_s: float) -> Callable[[int, Claim | None], bool]:
        """Say, for a partition read to the end of its changelog with `claim` its latest claim,
        whether to read on for the release of another member that still claims it (in the load's
        thread; streams.runtime.recovery). Gives up, with a warning, after `limit_s`."""
        me = self.group.me
        since: dict[int, float] = {}

        def waits(p: int, claim: Claim | None) -> bool:
            if stale():
                return False
            who = holder(claim, me, self.group.members())
            now = time.monotonic()
            if who is None:
                if p in since:
                    log.info("partition %d was released after %.2f s", p, now - since.pop(p))
                return False
            if p not in since:
                since[p] = now
                log.info("partition %d is still claimed by %s: it is read on once released", p, who)
            elif now - since[p] > limit_s:
                log.warning("partition %d is still claimed by %s after %.0f s: read without its release", p, who,
                            limit_s)
                return False
            return True
        return waits
