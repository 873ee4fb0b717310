"""Tests for streams.runtime.codec: a subscriber state written and read back, and the records
earlier writers left in the changelog."""

from __future__ import annotations

import random
from datetime import date, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.event_types import Billing, Contract, Event, Photo, Usage
from rules.subscriber import SubscriberState
from rules.vocabulary import Reason
from rules.events import BILLING, USAGE
from rules.schedule import Parked, PartitionClock
from sinks.deadletters import DeadLetterSink
from sinks.outbox import Outbox
from streams.runtime.codec import _uv, decode_record, decode_state, encode_record, encode_state, scan_record
from streams.runtime.changelog import HELD, OPENED
from streams.runtime.store import Store, clock_key, encode_clock
from tests.rules.test_state import MSISDN, OPEN, at, call, fee, life, profile, run, usage_events

reason_values = st.one_of(st.none(), st.text(max_size=8), st.integers(-10**12, 10**12),
                          st.floats(allow_nan=False, allow_infinity=False))
maybe_ms = st.one_of(st.none(), st.integers(0, 4_102_444_800_000))


@st.composite
def states(draw: st.DrawFn) -> SubscriberState:
    s = SubscriberState()
    for e in draw(st.lists(usage_events(), max_size=15)):
        run(s, e)
    if draw(st.booleans()):
        contract = draw(st.one_of(st.none(), st.builds(
            Contract, st.dates(), st.integers(0, 10**9), st.integers(0, 10**9), st.one_of(st.none(), st.dates()))))
        photo = draw(st.one_of(st.none(), st.builds(Photo, st.just("2026-09"), st.integers(0, 10**7),
                                                    st.integers(0, 10**6))))
        run(s, profile(photo=photo, contract=contract, region=draw(st.text(min_size=1, max_size=10)),
                       segment=draw(st.one_of(st.none(), st.text(max_size=5))), prepaid=draw(st.booleans()),
                       birthday=draw(st.one_of(st.none(), st.just("02-29"))),
                       activated_on=draw(st.one_of(st.none(), st.dates()))))
        s.contract_spent_fen = draw(st.integers(-10**9, 10**9))
    s.light = draw(st.sampled_from([None, "green", "yellow", "red", "black"]))
    s.light_since_ms = draw(maybe_ms)
    s.churned = draw(st.sampled_from([None, "deactivated", "ported_out"]))
    s.churned_ms, s.port_out_request_ms, s.balance_ms = draw(maybe_ms), draw(maybe_ms), draw(maybe_ms)
    s.balance_fen = draw(st.one_of(st.none(), st.integers(-10**9, 10**9)))
    s.reasons = tuple(draw(st.lists(st.builds(Reason, st.text(min_size=1, max_size=16), reason_values,
                                              reason_values), max_size=4)))
    s.used = draw(st.sets(st.text(min_size=1, max_size=20), max_size=4))
    if draw(st.booleans()):  # the risk features' memory (format 3)
        ords = st.integers(0, 800_000)
        s.in_sec, s.in_ord, s.prev_fen, s.prev_sec, s.prev_ord, s.last_use_ord = (
            draw(st.integers(0, 10**9)), draw(ords), draw(st.integers(-10**9, 10**9)), draw(st.integers(0, 10**9)),
            draw(ords), draw(ords))
        s.topup_ord, s.topup_fen, s.topup_avg_fen = draw(ords), draw(st.integers(0, 10**9)), draw(
            st.integers(0, 10**9))
        s.complaint_ords = tuple(sorted(draw(st.lists(ords, max_size=8))))
        s.port_requests = draw(st.integers(0, 1000))
        s.use_ahead = tuple(sorted(draw(st.dictionaries(ords, st.integers(0, 10**6), max_size=3)).items()))
    if draw(st.booleans()):  # scored at a day close
        s.risk_bp = draw(st.integers(0, 10_000))
    return s


@given(states())
def test_state_round_trips_through_bytes(s: SubscriberState) -> None:
    assert decode_state(encode_state(s)) == s


KEY = "13900000001"
parked_entries = st.lists(st.tuples(
    st.integers(0, 4_102_444_800_000), st.integers(-1, 4_102_444_800_000), st.just(KEY), st.text(max_size=40),
    st.sampled_from(["lifecycle.events", "billing.events", "subscriber.profiles"]), st.text(max_size=20),
    st.integers(0, 1)), max_size=5)


@given(st.one_of(st.none(), states()), parked_entries)
def test_a_record_holds_a_state_and_its_parked_records_and_reads_back_the_same(
        s: SubscriberState | None, parked: list[Parked]) -> None:
    data = encode_record(None if s is None else encode_state(s), parked)
    if s is None and not parked:
        assert data is None  # nothing: a tombstone
        return
    assert data is not None
    state, own, back = decode_record(KEY.encode(), data)
    assert (state, back) == (s, parked)
    assert own == (b"" if s is None else encode_state(s))
    if not parked:  # a subscriber with nothing parked is written as its state alone
        assert data == encode_state(s)  # type: ignore[arg-type]


def test_a_subscriber_ahead_of_its_clock_is_not_judged_again_at_a_close_it_has_seen() -> None:
    store = Store(4)
    store.clocks[2] = PartitionClock()
    store.ahead = {2: {b"a": {USAGE: 5, OPENED: date(2026, 7, 10).toordinal()}, b"b": {USAGE: 5}}}
    assert store.judged(2, date(2026, 7, 10)) == {b"a"}  # the close before 07-10: in its state
    assert store.judged(2, date(2026, 7, 11)) == set()  # the next one: judged like everybody's
    assert store.judged(0, date(2026, 7, 10)) == set()


def test_a_subscriber_ahead_of_its_clock_skips_what_it_reflects_until_the_clock_passes_it() -> None:
    store = Store(4)
    clock = store.clocks[1] = PartitionClock()
    clock.offsets = {USAGE: 10}
    store.ahead = {1: {b"k": {USAGE: 20, BILLING: 3, HELD: 15}}}
    assert store.reflected(1, b"k", USAGE, 20) and store.reflected(1, b"k", BILLING, 3)
    assert not store.reflected(1, b"k", USAGE, 21)  # read after the crash: not in the state yet
    assert not store.reflected(1, b"k", USAGE, 15)  # held as suspect, not applied
    assert not store.reflected(1, b"other", USAGE, 5) and not store.reflected(0, b"k", USAGE, 5)
    clock.offsets = {USAGE: 20, BILLING: 2}
    store.caught_up(1)
    assert store.reflected(1, b"k", BILLING, 3)  # billing not read that far yet
    clock.offsets[BILLING] = 3
    assert store.judged(1, date(2026, 7, 9)) == set()  # no day it had opened
    store.caught_up(1)
    assert store.ahead == {} and not store.reflected(1, b"k", USAGE, 20)


@pytest.mark.parametrize("data", [b"", b"\x09", b"\x01\x00", b"\x01\x1f" + b"\x00" * 40])
def test_garbage_is_not_a_state(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_state(data)
    with pytest.raises(ValueError):
        scan_record(KEY.encode(), data)


@given(st.one_of(st.none(), states()), parked_entries)
def test_a_load_reads_of_a_record_what_decoding_it_gives(s: SubscriberState | None, parked: list[Parked]) -> None:
    """A load indexes a subscriber from its record's head (its light, region, brand, photo, dates)
    without decoding the state: the same facts as the decoded state, the same bytes and parked records."""
    data = encode_record(None if s is None else encode_state(s), parked)
    if data is None:
        return
    head, own, back = scan_record(KEY.encode(), data)
    state, own_decoded, back_decoded = decode_record(KEY.encode(), data)
    assert (own, back) == (own_decoded, back_decoded)
    if state is None:
        assert head is None
        return
    assert head is not None
    assert (head.has_profile, head.light, head.churned, head.region, head.brand, head.port_out_request_ms) == (
        state.has_profile, state.light, state.churned, state.region, state.brand, state.port_out_request_ms)
    assert head.watched == (state.photo is not None)
    assert head.dated == (state.contract is not None or state.birthday is not None)
    assert bool(head.reasons) == bool(state.reasons)


@settings(max_examples=30)
@given(states(), st.data())
def test_a_cut_or_lengthened_state_is_dead_lettered_once_by_the_load_or_when_first_read(
        s: SubscriberState, data: st.DataObject) -> None:
    """A load reads a record's head only (scan_record): a state cut short or with bytes after it is
    refused there when its head shows it, else when the state is first read; either way it is
    dead-lettered once (corrupt_state) and the subscriber starts empty, the others untouched."""
    whole = encode_state(s)
    cut = whole[:data.draw(st.integers(0, len(whole) - 1))]
    for bad in (cut, whole + b"\x00"):
        with pytest.raises(ValueError):
            decode_state(bad)
        store, outbox = _loaded({b"1": bad, b"2": whole})
        assert store.states.get(b"1") is None
        assert store.states.get(b"2") == s
        assert [(o[1], dict(o[3])["error"]) for o in outbox.queued] == [(b"1", b"corrupt_state")]


def _loaded(records: dict[bytes, bytes]) -> tuple[Store, Outbox]:
    """A one-partition store loaded with `records` (and a clock), and the outbox of its dead letters."""
    async def send(*_: object) -> None:
        return None

    store, outbox = Store(1), Outbox(send)
    store.load({0}, {0: {**records, clock_key(0): encode_clock(PartitionClock())}}, "state-changelog",
               DeadLetterSink(outbox, "churn.deadletter"))
    return store, outbox


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10**6))
def test_typical_subscriber_fits_in_1_kib(seed: int) -> None:
    """Photo, contract, ~10 events a day over 40 days of a running partition."""
    rnd = random.Random(seed)
    s = SubscriberState()
    start = OPEN - timedelta(days=40)
    run(s, profile(contract=Contract(date(2027, 6, 30), 300000, 120000, date(2025, 7, 1)),
                   updated_at_ms=at(start), region="zunyi", brand="gotone", segment="valuable"), open_day=start)
    s.light, s.reasons = "yellow", (Reason("arpu_below", 95.5, 120.0),)
    for i in range(41):
        day = start + timedelta(days=i)
        for k in range(10):
            hour = rnd.uniform(0, 23.9)
            ts = at(day, hour)
            eid = f"{rnd.getrandbits(128):032x}"  # realistic ids, as long as a UUID
            if k < 5:
                event: Event = Usage(eid, MSISDN, ts, "voice", rnd.choice(["out", "in"]), rnd.randint(10, 900),
                                     rnd.randint(0, 200))
            elif k < 8:
                event = Usage(eid, MSISDN, ts, "data", None, 0, rnd.randint(0, 300))
            else:
                event = Usage(eid, MSISDN, ts, "sms", "out", 0, 10)
            run(s, event, open_day=day)
        run(s, Billing(f"{rnd.getrandbits(128):032x}", MSISDN, at(day, 23.95), "balance", None, 8000), open_day=day)
    s.mark_used("contract:2027-06-30:remaining_match")
    s.mark_used("birthday:2026")
    s.risk_bp = 8765  # scored at the last close
    # Rare events, older than the dedup memory: a top-up, two complaints.
    run(s, Billing(f"{rnd.getrandbits(128):032x}", MSISDN, at(start, 9), "topup", 10000, 18000), open_day=start)
    for back in (5, 20):
        run(s, life("complaint", at(OPEN - timedelta(days=back))))
    data = encode_state(s)
    assert s.last_use_ord and s.in_sec and s.prev_ord and s.topup_ord and len(s.complaint_ords) == 2
    assert data[0] == 3 and len(data) <= 1024, len(data)
    assert decode_state(data) == s


# A state written by the version-2 writer of 2026-12-01 (dicts of lists packed with struct): the
# changelog of a running deployment holds such records, and they must load and write back unchanged.
V2_STATE = bytes.fromhex(
    "02a1015b372c227a756e7969222c22676f746f6e65222c2268696768222c2230372d3134222c3733353539392c5b2232"
    "3032362d3038222c31353030302c393030305d2c5b3734303136322c3330303030302c313030302c3733393433335d2c"
    "383831302c3830302c313739303030303030353030302c6e756c6c2c6e756c6c2c313739303030303030303030302c5b"
    "5d2c5b2262697274686461793a32303236225d5d0e00a5942d00030405060708090a0b0c0d0e0f0a000000000000003c"
    "000000dc0000000e010000680100006c0200003a020000840300000c0300009c040000de030000380400000203000000"
    "0000003c000000ba00000006010000cf000000d80000002e010000ed0000004a01000002010000660100001701000020"
    "010000c50000002900f5f09c0e0000a4014803ec0490063408d8097c0b200dc40e68100c12b0135415f8169c18401ae4"
    "1b881d2c1fd02074221824bc2560270429a82a4c2cf02d942f3831dc3280342436c8376c39103bb43c583efc3f0000e2"
    "1a4de1cededbbfd56a4e3f684d9992aeda853274429b7a1f85c968a926e80353e131fa9c8f32cad14dd54ef4c12ce835"
    "9ea4e0139acf9c00d37d4dd5a219e027c67ea6d8aab3ce921ad12a3564266aae01c9e540dcf72c50fd32d964d5a0d9c2"
    "623a01081c27e372a423921eeb840f0efe292edf667d8b8a6ad8552c073c2610b5f1068985609620c074b55683176d9f"
    "90e28933a2280fe674b6e9138232de8797c12555c90f1b90675c3ecb06d9f4eded7466fef0448159cb86f0c78610fa99"
    "f12b53a8d88765841e5c8f675d72e636b531f205070987c9931415f18f06a2325901dd082279593b8eeb39e17de426ca"
    "e58c592f5b2696511c8680432152c2bbd1fbc5477d023bc6bc24ff7e1a4b33a0861f3e5e02932774ab14dbad45087c4b"
    "9764901e156a15ca364a825b87c26ff287ea36e3531f30861f19c447263db3dafc1e327e9a2e99"
)


def test_a_state_written_by_the_earlier_writer_loads_and_is_written_back_byte_for_byte() -> None:
    s = decode_state(V2_STATE)
    assert (s.region, s.birthday, s.balance_fen, s.used) == ("zunyi", "07-14", 800, {"birthday:2026"})
    assert len(s.days) == 14 and len(s.seen) == 41
    assert encode_state(s) == V2_STATE
    assert decode_state(encode_state(s)) == s


def test_a_state_of_format_3_round_trips_and_an_empty_memory_is_written_as_format_2() -> None:
    s = decode_state(V2_STATE)
    run(s, call(date(2026, 8, 20), 3, direction="in"), open_day=None)
    data = encode_state(s)
    assert data[0] == 3 and decode_state(data) == s
    assert encode_state(SubscriberState())[0] == 2


def test_the_risk_score_is_kept_compactly_and_older_records_read_as_never_scored() -> None:
    s = decode_state(V2_STATE)
    assert s.risk_bp is None  # written before there was a score
    assert encode_state(s) == V2_STATE
    s.risk_bp = 3712
    scored = encode_state(s)
    assert decode_state(scored) == s and decode_state(scored).risk_bp == 3712
    assert len(scored) - len(V2_STATE) <= 6  # in the flags: "9" became "475145"
    run(s, call(date(2026, 8, 20), 3, direction="in"), open_day=None)  # format 3 keeps it the same way
    assert encode_state(s)[0] == 3 and decode_state(encode_state(s)).risk_bp == 3712
    only = SubscriberState()
    only.risk_bp = 0
    assert decode_state(encode_state(only)).risk_bp == 0
    # Leaving the watched base forgets it: only the watched base is scored.
    run(s, profile(photo=None))
    assert s.risk_bp is None and s.light is None


def test_day_figures_take_16_bits_until_a_day_needs_more_and_then_32_or_64() -> None:
    s = SubscriberState()
    day = OPEN - timedelta(days=3)
    run(s, call(day, 30, 20_000), open_day=day)
    small = encode_state(s)
    assert s.day_fen.typecode == "h" and decode_state(small) == s
    run(s, call(day, 30, 20_000, eid="more"), open_day=day)  # 400 CNY in a day: past 16 bits
    assert s.day_fen.typecode == "i" and s.days[day.toordinal()] == [40_000, 3_600]
    assert decode_state(encode_state(s)) == s
    run(s, fee(day, 3 * 10**9, eid="huge"), open_day=day)  # 30M CNY: past 32 bits
    assert s.day_fen.typecode == "q" and decode_state(encode_state(s)) == s


def test_a_state_the_load_took_unread_that_fails_to_decode_is_dead_lettered_once_and_starts_empty() -> None:
    """A load reads only a record's head and lengths; a state whose head passes but whose reasons
    do not decode is found when first read: dead-lettered (`corrupt_state`, once), unindexed, and the
    subscriber starts empty, as a record the load cannot read at all."""
    good, bad = SubscriberState(), SubscriberState()
    for s in (good, bad):
        run(s, profile(photo=Photo("2026-09", 30_000, 6_000)))
        s.light = "green"
    data = encode_state(bad)
    size, pos = _uv(data, 1)
    head = orjson.loads(data[pos:pos + size])
    head[14] = [["only_a_code"]]  # a reason of one item: decoding unpacks three
    text = orjson.dumps(head)
    broken = data[:1] + bytes((len(text),)) + text + data[pos + size:] if len(text) < 128 else b""
    assert broken and scan_record(b"2", broken)[0] is not None
    with pytest.raises(ValueError):
        decode_state(broken)
    store, outbox = _loaded({b"1": encode_state(good), b"2": broken})
    assert set(store.watched[0]) == {b"1", b"2"} and outbox.queued == []  # the load indexed both, unread
    assert [key for key, _ in store.read(list(store.watched[0]))] == [b"1", b"2"]  # as a day close reads them
    assert [(o[1], dict(o[3])["error"]) for o in outbox.queued] == [(b"2", b"corrupt_state")]
    assert set(store.watched[0]) == {b"1"} and store.states.get(b"2") is None
    assert b"2" in store.dirty[0]  # its record becomes a tombstone at the next write
    store.states.get(b"2")
    assert len(outbox.queued) == 1


def test_a_store_loaded_apart_is_taken_beside_the_partitions_kept() -> None:
    """The assignment's load indexes in a thread, into a store of its own (Processor.prebuild); the
    worker's store takes it beside the partitions it kept, whose states and lights stay as they were."""
    from streams.runtime.store import partition_of

    def subscriber(light: str, region: str) -> bytes:
        s = SubscriberState()
        run(s, profile(photo=Photo("2026-09", 30_000, 6_000), region=region))
        s.light = light  # type: ignore[assignment]
        return encode_state(s)

    keys = [f"1390000{i:04d}".encode() for i in range(40)]
    by_p = {p: [k for k in keys if partition_of(k, 2) == p] for p in (0, 1)}
    assert by_p[0] and by_p[1]
    async def send(*_: object) -> None:
        return None

    mine, outbox = Store(2), Outbox(send)
    mine.load({0, 1}, {p: {k: subscriber("green", "zunyi") for k in by_p[p]} for p in (0, 1)}, "state-changelog",
              DeadLetterSink(outbox, "churn.deadletter"))
    apart = Store(2)
    apart.load({1}, {1: {k: subscriber("red", "guiyang") for k in by_p[1]}}, "state-changelog",
               DeadLetterSink(outbox, "churn.deadletter"))
    mine.take(apart, DeadLetterSink(outbox, "churn.deadletter"), kept={0})
    assert mine.watched_facets({0}) == {("green", "zunyi", "gotone"): len(by_p[0])}
    assert mine.watched_facets({1}) == {("red", "guiyang", "gotone"): len(by_p[1])}
    assert all(mine.states.get(k).region == "zunyi" for k in by_p[0])  # type: ignore[union-attr]
    assert all(mine.states.get(k).light == "red" for k in by_p[1])  # type: ignore[union-attr]
    assert set(mine.clocks) == {0, 1} and outbox.queued == []
