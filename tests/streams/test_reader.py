"""The reader's batch order and the state's recovery from its changelog (real embedded broker)."""

from __future__ import annotations

import asyncio

import orjson

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from streams.runtime.changelog import OFFSETS_HEADER, OWN_OFFSETS_HEADER, WRITE_HEADER, ChangelogWriter, Headers
from streams.runtime.reader import Record, interleave
from streams.runtime.recovery import read_changelog
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
    by_partition = read_changelog(settings, {0, 1, 2, 3})
    assert all(int(key[-4:]) % 4 == p for p, keys in by_partition.items() for key in keys)
    everything = {key: value for values in by_partition.values() for key, value in values.items()}
    assert len(everything) == 399
    assert everything[b"13900000002"] == b"v2-2"
    assert b"13900000001" not in everything
    assert not any(key.startswith(b"~") for key in everything)  # the seals are tombstones: gone
    # Only the partitions asked for.
    assert set(read_changelog(settings, {2})[2]) == {f"1390000{i:04d}".encode() for i in range(2, 400, 4)}


def test_a_state_write_cut_short_leaves_its_subscribers_ahead_of_the_clock_with_their_offsets(
        settings: Settings) -> None:
    """Write 1 whole (states, then the clock), write 2 cut short by a crash before its clock: the
    subscribers write 2 reached are ahead of the clock with write 2's offsets, the others are not;
    a subscriber with offsets of its own stays ahead after a later whole write that did not pass them."""
    ensure_topics(settings)
    writer = ChangelogWriter(settings, changelog_topic(settings))

    def headers(write: int, offsets: dict[str, int], own: bool = False) -> Headers:
        return [(WRITE_HEADER, str(write).encode()), (OWN_OFFSETS_HEADER if own else OFFSETS_HEADER,
                                                       orjson.dumps(offsets))]

    clock1 = {"usage.events": 99, "billing.events": 9}
    clock2 = {"usage.events": 199, "billing.events": 9}

    async def write() -> None:
        for i in range(6):
            writer.write(0, f"1390000{i:04d}".encode(), b"v1", headers(1, clock1))
        writer.write(0, b"~p:0", orjson.dumps({"of": clock1}), headers(1, clock1))
        writer.write(1, b"13900009999", b"v1", headers(1, {**clock1, "usage.events": 500}, own=True))
        writer.write(1, b"~p:1", orjson.dumps({"of": clock1}), headers(1, clock1))
        await writer.flush()
        for i in range(3):  # the crash came before the rest of write 2 and its clock record
            writer.write(0, f"1390000{i:04d}".encode(), b"v2", headers(2, clock2))
        writer.write(1, b"~p:1", orjson.dumps({"of": clock2}), headers(2, clock2))
        await writer.flush()

    asyncio.run(write())
    ahead: dict[int, dict[bytes, dict[str, int]]] = {}
    values = {key: value for values in read_changelog(settings, {0, 1}, ahead=ahead).values()
              for key, value in values.items()}
    assert [values[f"1390000{i:04d}".encode()] for i in range(6)] == [b"v2"] * 3 + [b"v1"] * 3
    assert ahead == {0: {f"1390000{i:04d}".encode(): clock2 for i in range(3)},
                     1: {b"13900009999": {**clock1, "usage.events": 500}}}
