"""Claims and releases of partitions in the state changelog (streams.runtime.claims), on the embedded broker."""

from __future__ import annotations

import asyncio
import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from streams.runtime.changelog import ChangelogWriter
from streams.runtime.claims import Claim, Claims, decode_claim, encode_claim, holder, owner_key
from streams.runtime.recovery import read_changelog
from streams.settings import Settings
from streams.topics import changelog_topic, ensure_topics

ME, OTHER, GONE = "http://a:6066", "http://b:6066", "http://c:6066"


@given(st.sampled_from([ME, OTHER, GONE]), st.booleans())
def test_only_another_members_unreleased_claim_is_waited_for(by: str, released: bool) -> None:
    claim = decode_claim(encode_claim(Claim(by, released)))
    assert claim == Claim(by, released)
    waited = holder(claim, ME, {ME, OTHER})
    assert waited == (OTHER if by == OTHER and not released else None)


def test_no_claim_or_an_unreadable_one_waits_for_nobody() -> None:
    assert holder(None, ME, {ME, OTHER}) is None
    assert decode_claim(b"{not json") is None
    assert decode_claim(b'{"released": true}') is None
    assert holder(decode_claim(b"\xff"), ME, {OTHER}) is None


def _write(settings: Settings, records: list[tuple[int, bytes, bytes | None]]) -> None:
    async def go() -> None:
        writer = ChangelogWriter(settings, changelog_topic(settings))
        for p, key, value in records:
            writer.write(p, key, value)
        await writer.flush()
    asyncio.run(go())


def test_a_load_reads_on_until_the_other_members_release_and_has_what_it_wrote_before(settings: Settings) -> None:
    ensure_topics(settings)
    _write(settings, [(1, b"13800000001", b"old"), (1, owner_key(1), encode_claim(Claim(OTHER)))])
    asked: list[Claim | None] = []

    def waits(p: int, claim: Claim | None) -> bool:
        asked.append(claim)
        return holder(claim, ME, {ME, OTHER}) is not None

    def other_lets_go() -> None:
        time.sleep(1.5)
        # Its last state write, then its release.
        _write(settings, [(1, b"13800000001", b"new"), (1, b"13800000005", b"added")])
        _write(settings, [(1, owner_key(1), encode_claim(Claim(OTHER, released=True)))])

    thread = threading.Thread(target=other_lets_go)
    started = time.monotonic()
    thread.start()
    data = read_changelog(settings, {1}, waits=waits)
    waited = time.monotonic() - started
    thread.join()
    assert waited >= 1.5
    assert data[1][b"13800000001"] == b"new" and data[1][b"13800000005"] == b"added"
    assert asked[0] == Claim(OTHER) and asked[-1] == Claim(OTHER, released=True)


def test_a_load_does_not_wait_for_a_claimer_that_left_the_group_or_for_a_release(settings: Settings) -> None:
    ensure_topics(settings)
    _write(settings, [(0, b"13800000002", b"a"), (0, owner_key(0), encode_claim(Claim(GONE))),
                      (2, b"13800000003", b"b"), (2, owner_key(2), encode_claim(Claim(OTHER, released=True)))])
    data = read_changelog(settings, {0, 2}, waits=lambda p, claim: holder(claim, ME, {ME, OTHER}) is not None)
    assert data[0][b"13800000002"] == b"a" and data[2][b"13800000003"] == b"b"


class _Group:
    """The membership view Claims reads: who this worker is, who the members are now."""

    def __init__(self, me: str, members: set[str]) -> None:
        self.me, self.member, self.generation, self.rebalancing = me, True, 1, False
        self.now = members

    def members(self) -> set[str]:
        return self.now

    def owned(self) -> set[int]:
        return set()


def test_a_wait_ends_when_the_claimer_leaves_the_group_or_after_its_limit_or_when_the_load_is_stale() -> None:
    group = _Group(ME, {ME, OTHER})
    stale = False
    waits = Claims(group, None).waits(lambda: stale, limit_s=0.3)
    claimed = Claim(OTHER)
    assert waits(1, claimed) and waits(1, claimed)
    group.now = {ME}  # the claimer left the group: nobody to wait for
    assert not waits(1, claimed)
    group.now = {ME, OTHER}
    assert waits(2, claimed)
    time.sleep(0.4)
    assert not waits(2, claimed)  # past the limit: read without the release
    assert waits(3, claimed)
    stale = True  # a new rebalance: the load stops
    assert not waits(3, claimed)
    # Partitions another member claims are busy; those held here or released are not.
    claims = Claims(group, None)
    claims.held = {4}
    assert claims.busy({4, 5, 6, 7}, {4: claimed, 5: claimed, 6: Claim(OTHER, released=True)}) == {5}
