"""Rebuild a worker's state from its local store and the state changelog, with confluent-kafka, in bulk.

The state of the partitions a worker owns lives in memory; the changelog (compacted, one
partition per input partition) holds every subscriber's latest serialised state and each
partition's clock; the local store (streams.runtime.local) holds the same records as of a
changelog offset per partition. After every assignment the worker folds, per partition, the
local store's records (where it has a copy the changelog still spans) and then the changelog
from that offset, or else the whole changelog, to its end, through one fold (`fold`) that keeps
the latest record per key. Faust's table recovery read the same records one by one through its
own stream machinery, at about 7,000 records/s here.

Each record carries the input offsets its state reflects (streams.runtime.changelog: the
partition's, or a subscriber's own when they differ). A write cut short by a crash leaves records
after the partition's last clock record whose offsets pass the clock's: those subscribers are
returned as ahead of their clock (streams.runtime.store), whatever compaction kept of their older
values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.runtime.changelog import (
    CLOCK_PREFIX, OFFSETS_HEADER, OWN_OFFSETS_HEADER, WRITE_HEADER, Headers, passes, reflects, write_of,
)
from streams.runtime.claims import Claim, decode_claim, owner_key
from streams.runtime.local import LocalStore, Record, StoreError, pack, value_of
from streams.runtime.topic_end import TopicEndError, read_messages
from streams.settings import Settings
from streams.topics import changelog_topic, client_config

log = logging.getLogger(__name__)

# No record for this long while partitions are still short of their end: the broker is away.
STALL_S = 60.0
# Larger fetches than a consumer's defaults: a load reads a whole changelog.
READ_CONFIG = {"queued.max.messages.kbytes": 262144, "fetch.max.bytes": 52428800,
               "max.partition.fetch.bytes": 10485760}


class RecoveryError(RuntimeError):
    """The changelog could not be read to its end."""


@dataclass
class Folded:
    """What the fold keeps: per partition, the latest record per key (packed; None: deleted), the
    newest state write seen, and the keys whose latest record reflects input offsets past the
    clock's (with those offsets)."""

    latest: dict[int, dict[bytes, bytes | None]] = field(default_factory=dict)
    writes: dict[int, int] = field(default_factory=dict)
    ahead: dict[int, dict[bytes, dict[str, int]]] = field(default_factory=dict)


@dataclass
class Sources:
    """Where a recovery's records came from, per partition, and how many."""

    ends: dict[int, int] = field(default_factory=dict)  # the changelog's high watermark as the read began
    local: set[int] = field(default_factory=set)  # the local store's records, then the changelog's tail
    whole: set[int] = field(default_factory=set)  # the whole changelog
    stored: int = 0  # records from the local store
    tail: int = 0  # changelog records of the partitions read from the local store
    changelog: int = 0  # changelog records of the partitions read whole
    # Per partition read from the local store, the keys its tail wrote (the store takes them after).
    tail_keys: dict[int, set[bytes]] = field(default_factory=dict)
    # Per partition read whole, its keys (the store is made anew from them after; filled then).
    keys: dict[int, set[bytes]] = field(default_factory=dict)


def read_changelog(settings: Settings, partitions: set[int], *, cancelled: Callable[[], bool] = lambda: False,
                   writes: dict[int, int] | None = None, local: LocalStore | None = None,
                   ahead: dict[int, dict[bytes, dict[str, int]]] | None = None, ends: dict[int, int] | None = None,
                   only_local: bool = False, refresh_later: list[Callable[[], None]] | None = None,
                   waits: Callable[[int, Claim | None], bool] | None = None) -> dict[int, dict[bytes, bytes]]:
    """Return per partition of `partitions` the latest value of each key of the changelog (tombstones removed).

    `writes`, when given, receives per partition the number of the newest state write seen;
    `ahead`, per partition, the keys whose latest record reflects input offsets past the clock's.
    `local`, when given, is the worker's local store: a partition it holds a usable copy of is
    read from it and the changelog's tail only; afterwards the store is brought up to what was read.
    With `only_local` the other partitions are not read (and not in the result). `ends`, when
    given, receives per partition read the changelog's end (high watermark) asked before reading it.
    `refresh_later`, when given, receives the local store's refresh instead of it being done now:
    the caller runs it once it has loaded what was read (a partition read whole is a million
    records to write, in a thread that competes for the interpreter with that load).

    Reads each partition until librdkafka reports its end (the high watermark the broker gives
    with the fetched records; the changelog writer seals each flush with a lone tombstone, so that
    a broker which reports the first offset of the last record batch as the end loses nothing).
    Returns early, with what it has, when `cancelled()` says so.
    """
    started = time.monotonic()
    topic = changelog_topic(settings)
    sources = Sources()
    folded = Folded()
    hold: Callable[[tuple[str, int]], bool] | None = None
    if waits is not None:
        asks = waits

        def hold(where: tuple[str, int]) -> bool:
            # The fold has taken every record before the end of the partition: its latest claim is the last one.
            packed = folded.latest.get(where[1], {}).get(owner_key(where[1]))
            return asks(where[1], decode_claim(None if packed is None else value_of(packed)))
    fold(_records(settings, topic, partitions, sources, local, cancelled, only_local, hold), folded)
    if cancelled():
        return {}
    log.info("read partitions %s of %s in %.2f s: %s", sorted(partitions), topic, time.monotonic() - started,
             describe(sources))
    if local is not None:
        if refresh_later is None:
            _refresh(local, folded, sources)
        else:
            refresh_later.append(lambda: _refresh(local, folded, sources))
    if writes is not None:
        writes.update(folded.writes)
    if ahead is not None:
        ahead.update(folded.ahead)  # the store's load says how many
    if ends is not None:
        ends.update({p: sources.ends[p] for p in sources.local | sources.whole})
    return {p: {key: value_of(packed) for key, packed in records.items() if packed is not None}
            for p, records in folded.latest.items()}


def describe(sources: Sources) -> str:
    """Say where the records of a recovery came from (the worker's log line)."""
    parts = []
    if sources.local:
        parts.append(f"from the local store and the changelog's tail: {sorted(sources.local)} "
                     f"({sources.stored} local records, {sources.tail} tail records)")
    if sources.whole:
        parts.append(f"from the whole changelog: {sorted(sources.whole)} ({sources.changelog} records)")
    return "; ".join(parts) or "nothing to read"


def fold(records: Iterable[Record], out: Folded | None = None) -> Folded:
    """Keep the latest record of every key, a partition's records in changelog order; find the
    keys a state write cut short left ahead of their partition's clock (into `out` when given,
    which a reader of the records may look at meanwhile)."""
    out = Folded() if out is None else out
    latest = out.latest
    newest = out.writes
    # Per partition: the offsets of the latest record of each key written since its last clock
    # record; of the keys whose latest record has offsets of its own; the last clock record.
    tail: dict[int, dict[bytes, bytes]] = {}
    own: dict[int, dict[bytes, bytes]] = {}
    clocks: dict[int, bytes | None] = {}
    interned: dict[bytes, bytes] = {}  # one bytes object per distinct offsets (a write's records share one)
    # The partition of the record before, its keys' latest records and its tail; the headers of the
    # record before (the local store's records of one write share one list) and what they say.
    last_p, of_partition, of_tail = -1, cast(dict[bytes, bytes | None], {}), cast(dict[bytes, bytes], {})
    last_headers: object = None
    offsets: bytes | None = None
    mine = False
    write = 0
    for m in records:
        key, p = m.key, m.partition
        if p != last_p:
            last_p, of_partition, of_tail = p, latest.setdefault(p, {}), tail.setdefault(p, {})
        of_partition[key] = m.packed
        if key.startswith(b"~"):
            if key.startswith(CLOCK_PREFIX):
                clocks[p] = m.value
                of_tail = tail[p] = {}
                clock_write = write_of(m.headers)
                if clock_write > newest.get(p, 0):
                    newest[p] = clock_write
            continue
        headers = m.headers
        if headers is not last_headers:
            last_headers, offsets, mine, write = headers, None, False, 0
            for name, raw in headers:
                if name == OFFSETS_HEADER or name == OWN_OFFSETS_HEADER:
                    assert isinstance(raw, bytes)
                    offsets = interned.setdefault(raw, raw)
                    mine = name == OWN_OFFSETS_HEADER
                elif name == WRITE_HEADER and raw:
                    write = int(raw)
        if write and write > newest.get(p, 0):
            newest[p] = write
        if offsets is None:
            continue  # written before records said their offsets: never ahead
        of_tail[key] = offsets
        if mine:
            own.setdefault(p, {})[key] = offsets
        elif p in own:
            own[p].pop(key, None)
    parsed: dict[bytes, dict[str, int]] = {}
    for p in set(tail) | set(own):
        clock = clocks.get(p)
        try:
            doc = orjson.loads(clock) if clock else {}
            done = reflects({str(t): int(v) for t, v in doc.get("of", {}).items()}, doc.get("od"))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            continue  # an unreadable clock: the store rebuilds the partition from its inputs
        verdicts: dict[bytes, bool] = {}
        keys: dict[bytes, dict[str, int]] = {}
        for key, raw in (*tail.get(p, {}).items(), *own.get(p, {}).items()):
            reflected = parsed.get(raw)
            if reflected is None:
                reflected = parsed[raw] = {str(t): int(v) for t, v in orjson.loads(raw).items()}
            past = verdicts.get(raw)
            if past is None:
                past = verdicts[raw] = passes(reflected, done)
            if past:
                keys[key] = reflected
        if keys:
            out.ahead[p] = keys
    return out


def _records(settings: Settings, topic: str, partitions: set[int], sources: Sources, local: LocalStore | None,
             cancelled: Callable[[], bool], only_local: bool = False,
             hold: Callable[[tuple[str, int]], bool] | None = None) -> Iterator[Record]:
    """Yield the records to fold: per partition the local store's (where usable), then the changelog
    from the local copy's offset, or from its beginning (streams.runtime.topic_end; not with
    `only_local`)."""
    starts: dict[tuple[str, int], int] = {}
    group = f"{settings.topic_prefix}{settings.app_id}-recovery"
    consumer = Consumer({**client_config(settings), "group.id": group})  # for the watermarks only
    try:
        for p in sorted(partitions):
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
            except KafkaException as exc:
                raise RecoveryError(f"cannot read the end of {topic}/{p}: {exc}") from exc
            sources.ends[p] = high
            offset = None if local is None else local.start(p, low, high)
            if offset is not None and local is not None:
                try:
                    count, stored = local.records(p)
                except StoreError as exc:
                    # Its copy is made anew after the read; the other partitions' copies read fine.
                    log.warning("%s/%d: the local state cannot be read (%s): reading the whole changelog",
                                topic, p, exc)
                else:
                    starts[(topic, p)] = offset
                    sources.local.add(p)
                    sources.tail_keys[p] = set()
                    sources.stored += count
                    yield from stored
            if p not in sources.local and not only_local:
                sources.whole.add(p)
                sources.keys[p] = set()
            if cancelled():
                return
    finally:
        consumer.close()
    messages = read_messages(settings, {topic: sources.local | sources.whole}, group_id=group, starts=starts,
                             cancelled=cancelled, stall_s=STALL_S, batch=20000, config=READ_CONFIG, hold=hold)
    # Per distinct headers (the records of one state write share theirs): their packed block and one
    # list of them, which the records share (the fold reads a write's headers once).
    shapes: dict[tuple[tuple[str, str | bytes | None], ...], tuple[bytes, Headers]] = {}
    try:
        for m in messages:
            key = m.key()
            assert key is not None  # the changelog's records all have keys
            p = m.partition() or 0  # always set on a record
            value, headers = m.value(), cast(Headers, m.headers() or [])
            shape = tuple(headers)
            known = shapes.get(shape)
            if known is None:
                if len(shapes) >= 4096:
                    shapes.clear()
                known = shapes[shape] = (pack(b"", headers), headers)
            head, headers = known
            tail = sources.tail_keys.get(p)
            if tail is not None:
                tail.add(key)
                sources.tail += 1
            else:
                sources.changelog += 1
            yield Record(p, key, None if value is None else head + value, headers)
    except TopicEndError as exc:
        raise RecoveryError(f"{topic}: {exc}") from exc


def _refresh(local: LocalStore, folded: Folded, sources: Sources) -> None:
    """Bring the local store up to what was read: the tail's keys, or a whole partition anew."""
    by_partition = folded.latest
    for p in sources.keys:
        sources.keys[p] = set(by_partition.get(p, ()))
    if sources.keys:
        latest = {key: packed for records in by_partition.values() for key, packed in records.items()}
    else:
        # Only tails: the store's write keeps their few records, not every record read.
        latest = {key: by_partition[p].get(key) for p, keys in sources.tail_keys.items() for key in keys}
    try:
        local.refresh(latest, sources.tail_keys, sources.keys, sources.ends)
    except Exception as exc:
        local.broken(exc)
