"""The reader's batch order and the state's recovery from its changelog (real embedded broker)."""

from __future__ import annotations

import asyncio

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from streams.changelog import ChangelogWriter
from streams.reader import Record, interleave
from streams.recovery import read_changelog, recover
from streams.store import LocalStore
from streams.settings import Settings
from streams.topics import changelog_topic, ensure_topics

PROFILES = "subscriber.profiles"
TOPICS = ("usage.events", "billing.events", PROFILES, "lifecycle.events")


def _record(topic: str, partition: int, offset: int, ts: float) -> Record:
    return Record(TP(topic, partition), offset, b"k", b"v", ts, [])


@st.composite
def batches(draw: st.DrawFn) -> list[Record]:
    """Records of a few topic partitions, each in offset order, timestamps in any order."""
    out: list[Record] = []
    for topic in draw(st.lists(st.sampled_from(TOPICS), min_size=1, max_size=4, unique=True)):
        for partition in draw(st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True)):
            stamps = draw(st.lists(st.integers(0, 20), max_size=12))
            out += [_record(topic, partition, offset, float(ts)) for offset, ts in enumerate(stamps)]
    return out


@given(batches())
def test_interleave_keeps_every_record_and_each_topics_offset_order(records: list[Record]) -> None:
    merged = interleave(records, PROFILES)
    assert sorted(map(id, merged)) == sorted(map(id, records))
    for tp in {r.tp for r in records}:
        offsets = [r.offset for r in merged if r.tp == tp]
        assert offsets == sorted(offsets)


def test_interleave_takes_a_partitions_topics_in_production_order_profiles_first_on_ties() -> None:
    # A fetch as librdkafka hands it over: all of partition 0's usage, then its profile and lifecycle.
    usage = [_record("usage.events", 0, i, ts) for i, ts in enumerate([2.0, 3.0, 5.0])]
    profile = [_record(PROFILES, 0, 0, 2.0)]
    lifecycle = [_record("lifecycle.events", 0, 0, 4.0)]
    other = [_record("usage.events", 1, 0, 1.0)]
    merged = interleave(usage + other + lifecycle + profile, PROFILES)
    mine = [(r.topic, r.offset) for r in merged if r.partition == 0]
    assert mine == [(PROFILES, 0), ("usage.events", 0), ("usage.events", 1), ("lifecycle.events", 0),
                    ("usage.events", 2)]


def test_recovery_reads_the_latest_value_of_every_key_and_drops_deleted_ones(settings: Settings) -> None:
    ensure_topics(settings)
    writer = ChangelogWriter(settings, changelog_topic(settings))

    async def write() -> None:
        for round_ in range(3):
            for i in range(400):
                writer.write(i % 4, f"1390000{i:04d}".encode(), f"v{round_}-{i}".encode())
            await writer.flush()  # each flush seals its partitions with a tombstone
        writer.write(1, b"13900000001", None)  # deleted
        await writer.flush()

    asyncio.run(write())
    everything = read_changelog(settings, {0, 1, 2, 3})
    assert len(everything) == 399
    assert everything[b"13900000002"] == b"v2-2"
    assert b"13900000001" not in everything
    assert not any(key.startswith(b"~") for key in everything)  # the seals are tombstones: gone
    # Only the partitions asked for.
    assert set(read_changelog(settings, {2})) == {f"1390000{i:04d}".encode() for i in range(2, 400, 4)}


def _clock(p: int) -> bytes:
    return b"~p:" + str(p).encode()


def test_a_write_cut_short_is_rolled_back_also_when_a_newer_write_follows(settings: Settings) -> None:
    ensure_topics(settings)
    writer = ChangelogWriter(settings, changelog_topic(settings))

    async def write() -> None:
        writer.write(0, b"a", b"a1", 1)
        writer.write(0, _clock(0), b"c1", 1)
        await writer.flush()
        writer.write(0, b"a", b"a2", 2)  # the crash came before this write's clock record
        writer.write(0, b"b", b"b2", 2)
        await writer.flush()
        writer.write(0, b"c", b"c3", 3)  # the restarted worker's next write
        writer.write(0, _clock(0), b"c3", 3)
        await writer.flush()

    asyncio.run(write())
    assert read_changelog(settings, {0}) == {b"a": b"a1", b"c": b"c3", _clock(0): b"c3"}


def test_recovery_from_the_local_store_reads_the_changelogs_tail_only(settings: Settings) -> None:
    ensure_topics(settings)
    writer = ChangelogWriter(settings, changelog_topic(settings))
    store = LocalStore(settings, changelog_topic(settings))

    async def write(number: int, values: dict[bytes, bytes | None]) -> None:
        for key, value in values.items():
            writer.write(1, key, value, number)
        writer.write(1, _clock(1), f"clock{number}".encode(), number)
        await writer.flush()

    asyncio.run(write(1, {f"k{i}".encode(): b"v1" for i in range(50)}))
    first = recover(settings, {1}, store=store)  # no local state yet: read whole, then stored
    assert first.whole == {1} and first.records >= 51 and first.stored == {1}
    asyncio.run(write(2, {b"k1": b"v2", b"k2": None}))
    asyncio.run(write(3, {b"k3": b"v3"}))
    again = recover(settings, {1}, store=store)
    assert again.local == {1} and again.whole == set()
    assert 0 < again.tail_records < first.records
    assert again.parts[1] == read_changelog(settings, {1})
    assert again.parts[1][b"k1"] == b"v2" and b"k2" not in again.parts[1]
    # A store ahead of the changelog (another broker, a changelog made anew) is not used.
    store.put([], {1: (10_000, 3)}, set())
    stale = recover(settings, {1}, store=store)
    assert stale.whole == {1} and stale.parts[1] == again.parts[1]
    store.close()
