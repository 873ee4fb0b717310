"""The owned partitions' changelog records on local disk (RocksDB), each partition as of a changelog offset.

A cache of the changelog's records, not of decoded state: per key its latest record, value and
headers (`Record`), as a compacted changelog would hold it. A state write goes in only after the
broker acknowledged it and its seal (streams.runtime.changelog), with, per partition, the
changelog's end asked right then: at or below where the next write lands, however far the broker
under-reports its high watermark (Tansu gives the base offset of the last batch: the lone seal).
So the store is never ahead of the changelog, and a restart reads only the changelog's tail from
that offset (streams.runtime.recovery); a missing, stale or unreadable copy is not used, with a
log line saying why, and the partition is read from the whole changelog.

The store's writes skip RocksDB's write-ahead log and are flushed to table files right after, in
RocksDB's threads; a state write goes in as it came (runs of records that share their headers,
each run's packed once), in a few batches, its marks in the last. A crash may lose the last
writes, or the end of one: the copy is then as of an earlier mark, and what was written past it
is read again from the changelog's tail.

Layout: every key behind two bytes of its partition (a partition is one prefix scan); per
partition a mark `<p>\\x00` = JSON {"offset", "at_ms"}; one header `\\xff\\xff` naming the changelog
topic, its partition count and the format, so that another deployment's store is never read.

The module is over the size guide (about 500 lines, `LocalStore` about 300): the store is the one
owner of its RocksDB handle and of the thread that writes it in order; its checks of a copy
(stale, another deployment, unreadable) and its reads and writes share that handle's state.
"""

from __future__ import annotations

import logging
import shutil
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, cast

import orjson
from confluent_kafka import Consumer, TopicPartition
from rocksdict import BlockBasedOptions, Cache, MemtableFactory, Options, Rdict, WriteBatch, WriteOptions

from streams.runtime.changelog import CLOCK_PREFIX, Headers, Run, write_of
from streams.settings import Settings
from streams.topics import client_config

log = logging.getLogger(__name__)

_HEADER: Final = b"\xff\xff"
_MARK: Final = b"\x00"  # after a partition's tag: no changelog key starts with a NUL byte
FORMAT: Final = 1
# RocksDB's own memory counts against what a subscriber may cost in RSS: its defaults (64 MB write
# buffers and a block cache of its own) would add about 130 bytes a subscriber at 1M.
WRITE_BUFFER_BYTES: Final = 16 << 20
BLOCK_CACHE_BYTES: Final = 8 << 20
# A tombstone written to the changelog after a mark may be compacted away after the topic's
# delete.retention.ms (Kafka's default, one day; the changelog does not set it): a mark older
# than that, with records after it, may miss a deletion.
DELETE_RETENTION_MS: Final = 24 * 3600 * 1000
# Records a write batch: a state write is stored in a few (a batch is a copy of its records in
# RocksDB's memory, and the store's write holds the GIL until it is done).
_BATCH: Final = 16384
_NONE: Final = 0xFFFFFFFF
_U32: Final = struct.Struct(">I")


class StoreError(RuntimeError):
    """The local store cannot be read or written."""


def pack(value: bytes, headers: Headers | None) -> bytes:
    """Serialise a record: the length of its header block (2 bytes), the block (a count, then each
    header's name length, name, value length, value), then the record's value."""
    return _head(headers) + value


def _head(headers: Headers | None) -> bytes:
    block = [bytes([len(headers or ())])]
    for name, data in headers or ():
        encoded = name.encode()
        raw = data.encode() if isinstance(data, str) else data
        block += [bytes([len(encoded)]), encoded, _U32.pack(_NONE if raw is None else len(raw)), raw or b""]
    head = b"".join(block)
    return len(head).to_bytes(2, "big") + head


def _headers(block: bytes) -> Headers:
    headers: Headers = []
    at = 1
    for _ in range(block[0]):
        size = block[at]
        name = block[at + 1:at + 1 + size].decode()
        at += 1 + size
        (length,) = _U32.unpack_from(block, at)
        at += 4
        if length == _NONE:
            headers.append((name, None))
        else:
            if at + length > len(block):
                raise ValueError("a header runs past its block")
            headers.append((name, block[at:at + length]))
            at += length
    if at != len(block):
        raise ValueError("a header block longer than its headers")
    return headers


# Decoded header blocks: those of one state write are all alike (its number), so a load decodes few.
_BLOCKS: dict[bytes, Headers] = {}
_BLOCKS_MAX: Final = 4096


def headers_of(packed: bytes) -> Headers:
    """Return the headers of a packed record (a list shared with records of the same headers: do not change it)."""
    block = packed[2:2 + int.from_bytes(packed[:2], "big")]
    headers = _BLOCKS.get(block)
    if headers is None:
        headers = _headers(block)
        if len(_BLOCKS) >= _BLOCKS_MAX:
            _BLOCKS.clear()
        _BLOCKS[block] = headers
    return headers


def value_of(packed: bytes) -> bytes:
    """Return the value of a packed record."""
    return packed[2 + int.from_bytes(packed[:2], "big"):]


class Record:
    """One changelog record as recovery folds it, from the local store or the changelog.

    `packed` is its value and headers in one (None: a tombstone), what the fold keeps per key.
    """

    __slots__ = ("partition", "key", "packed", "_headers")

    def __init__(self, partition: int, key: bytes, packed: bytes | None, headers: Headers | None = None) -> None:
        self.partition = partition
        self.key = key
        self.packed = packed
        self._headers = headers

    @property
    def value(self) -> bytes | None:
        return None if self.packed is None else value_of(self.packed)

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = [] if self.packed is None else headers_of(self.packed)
        return self._headers


def _fill(batch: Any, prefix: bytes, head: bytes, keys: list[bytes], values: list[bytes | None]) -> None:
    """Put records of one partition and header block in `batch` (a value None: delete its key)."""
    if None in values:
        for key, value in zip(keys, values):
            if value is None:
                batch.delete(prefix + key)
            else:
                batch.put(prefix + key, head + value)
        return
    # In C: a loop in Python over the records was most of the store's work in the interpreter.
    deque(map(batch.put, map(prefix.__add__, keys), map(head.__add__, cast(list[bytes], values))), maxlen=0)


def tag(p: int) -> bytes:
    return p.to_bytes(2, "big")


def options() -> Options:
    """Return the store's RocksDB options (what opens it: its memtable takes no concurrent writes)."""
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
    opts.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
    opts.set_block_based_table_factory(table)
    # An unsorted memtable: a state write's keys come in no order, and putting each in its place
    # in RocksDB's default skip list was most of the store's write (which holds the GIL); a vector
    # is sorted when it is flushed, in RocksDB's own thread. A read of it sorts a copy: the store
    # reads at a load only (its marks it keeps), just after opening (an empty memtable) or rarely.
    opts.set_memtable_factory(MemtableFactory.vector())
    opts.set_allow_concurrent_memtable_write(False)
    return opts


def _rdict(path: Path) -> Any:
    """Open the store at `path`, its table's options these and not those it was made with."""
    db = Rdict(str(path), options(), column_families={"default": options()})
    # No write-ahead log: writing it was most of what was left of a state write's time in RocksDB,
    # with the GIL held. Each write of the store is flushed to a table file instead, right after,
    # in RocksDB's threads (`_flushed`); a crash before that leaves the store as it was after an
    # earlier batch (RocksDB flushes its memtables in order): its marks never claim records it lacks.
    skip = WriteOptions()
    skip.disable_wal = True  # type: ignore[method-assign,assignment]  # a property (its stub says a method)
    db.set_write_options(skip)
    return db


class LocalStore:
    """A RocksDB of the latest record per changelog key, each partition as of a changelog offset."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.path: Path = settings.data_dir / "state" / topic
        self.topic = topic
        self.partitions = settings.partitions
        self._db: Any = None
        self._unusable = False  # another process holds it: this worker goes without
        self._lock = threading.Lock()
        self._watermarks: Consumer | None = None
        # The marks as the open store holds them: a read of the store's memtable sorts it (below).
        self._marks: dict[int, bytes] = {}
        # The store's writes, in the order they are asked for: what a load read, then each state write.
        self._serial = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-state")

    # --- opening --------------------------------------------------------------------------------

    def _open(self) -> Any:
        if self._db is not None:
            return self._db
        if self._unusable:
            raise StoreError(f"{self.path} is in use by another process")
        header = orjson.dumps({"topic": self.topic, "partitions": self.partitions, "format": FORMAT})
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            db = _rdict(self.path)
        except Exception as exc:
            if "lock" in str(exc).lower():
                # Another process has it open (two workers on one data dir): not ours to empty.
                self._unusable = True
                log.warning("the local state in %s is in use by another process (%s): this worker reads the whole "
                            "changelog and keeps no local state", self.path, exc)
                raise StoreError(f"{self.path} is in use by another process") from exc
            log.warning("the local state in %s cannot be opened (%s): it is emptied, and the partitions are read "
                        "from the whole changelog", self.path, exc)
            db = self._wipe_and_open()
        else:
            try:
                found = db.get(_HEADER)
            except Exception as exc:
                db.close()
                log.warning("the local state in %s cannot be read (%s): it is emptied, and the partitions are "
                            "read from the whole changelog", self.path, exc)
                db = self._wipe_and_open()
            else:
                if found is not None and found != header:
                    db.close()
                    log.warning("the local state in %s is of another deployment (%s, this one is %s): it is "
                                "emptied, and the partitions are read from the whole changelog", self.path,
                                bytes(found).decode("utf-8", "replace"), header.decode())
                    db = self._wipe_and_open()
        db[_HEADER] = header
        marks = (db.get(tag(p) + _MARK) for p in range(self.partitions))
        self._marks = {p: bytes(mark) for p, mark in enumerate(marks) if mark is not None}
        self._db = db
        return db

    def _wipe_and_open(self) -> Any:
        self._marks = {}
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        return _rdict(self.path)

    def broken(self, exc: BaseException) -> None:
        """Give up the store after an error: log it and start it empty."""
        if self._unusable:
            return
        log.warning("the local state in %s cannot be used (%s): it is emptied, and the partitions are read from "
                    "the whole changelog at the next load", self.path, exc)
        with self._lock:
            self._close_db()
            try:
                self._db = self._wipe_and_open()
            except Exception as again:
                log.warning("the local state in %s cannot be made anew (%s): this worker keeps none", self.path, again)
                self._unusable = True

    def close(self) -> None:
        """Finish the writes asked for, then close the store (it opens again when next used)."""
        self._serial.shutdown(wait=True)
        self._serial = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-state")
        self._close_db()

    def _close_db(self) -> None:
        if self._watermarks is not None:
            watermarks, self._watermarks = self._watermarks, None
            watermarks.close()
        if self._db is not None:
            db, self._db = self._db, None
            try:
                db.close()
            except Exception as exc:
                log.debug("closing the local state: %s", exc)

    # --- recovery -------------------------------------------------------------------------------

    def held(self) -> set[int]:
        """The partitions this store has a copy of (usable or not: `start` says), none if it cannot be read."""
        try:
            self._open()
        except Exception:
            return set()
        return set(self._marks)

    def start(self, p: int, low: int, high: int) -> int | None:
        """Return the changelog offset from which partition `p`'s tail is to be read, or None (with a
        log line saying why) when the local copy cannot be used: the whole changelog is read."""
        try:
            self._open()
            found = self._marks.get(p)
            if found is None:
                log.info("%s/%d: no local state: reading the whole changelog", self.topic, p)
                return None
            doc = orjson.loads(found)
            offset, at_ms = int(doc["offset"]), int(doc["at_ms"])
        except StoreError:
            return None
        except Exception as exc:
            log.warning("%s/%d: the local state's mark cannot be read (%s): reading the whole changelog",
                        self.topic, p, exc)
            return None
        if not low <= offset <= high:
            log.warning("%s/%d: the local state is stale: it covers the changelog up to offset %d, which holds "
                        "offsets %d to %d: reading the whole changelog", self.topic, p, offset, low, high)
            return None
        age_ms = int(time.time() * 1000) - at_ms
        if age_ms > DELETE_RETENTION_MS and high > offset + 1:
            log.warning("%s/%d: the local state is stale: it is %.1f h old, and a deletion written since may be "
                        "compacted away: reading the whole changelog", self.topic, p, age_ms / 3600000)
            return None
        return offset

    def records(self, p: int) -> tuple[int, Iterator[Record]]:
        """Return partition `p`'s records as a compacted changelog would give them: in the order of
        their state writes, each write's clock record last: (how many, the records). Raises
        StoreError, having read them all first."""
        prefix, mark = tag(p), tag(p) + _MARK
        # Per header block, its records' (key, packed): plain tuples of bytes, which the garbage
        # collector stops tracking (a million Record objects held here made it walk them again and
        # again); the records of one state write share their block, decoded once.
        blocks: dict[bytes, list[tuple[bytes, bytes]]] = {}
        clocks: list[tuple[bytes, bytes]] = []
        try:
            for key, packed in self._open().items(from_key=prefix):
                if not key.startswith(prefix):
                    break
                if key == mark:
                    continue
                if key.startswith(CLOCK_PREFIX, 2):
                    clocks.append((key[2:], packed))
                    continue
                block = packed[:2 + int.from_bytes(packed[:2], "big")]
                found = blocks.get(block)
                if found is None:
                    found = blocks[block] = []
                found.append((key[2:], packed))
            # Per write number, its blocks' headers and records; the clocks after them.
            writes: dict[int, list[tuple[Headers, list[tuple[bytes, bytes]]]]] = {}
            for block, found in blocks.items():
                headers = _headers(block[2:])
                writes.setdefault(write_of(headers), []).append((headers, found))
            for key, packed in clocks:
                headers = headers_of(packed)
                writes.setdefault(write_of(headers), []).append((headers, [(key, packed)]))
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"partition {p} cannot be read: {exc}") from exc
        count = len(clocks) + sum(len(found) for found in blocks.values())
        del blocks
        return count, (Record(p, key, packed, headers) for number in sorted(writes)
                       for headers, found in writes.pop(number) for key, packed in found)

    def refresh(self, latest: dict[bytes, bytes | None], tails: dict[int, set[bytes]], wholes: dict[int, set[bytes]],
                ends: dict[int, int]) -> None:
        """Bring partitions up to what recovery read (`latest`: per key its packed record, None when
        deleted), as of changelog offsets `ends`: in `tails` the keys a tail changed; `wholes`,
        partitions read whole, made anew from their keys. Returns at once: the store's writes are
        done in order behind it (a partition read whole takes about 5 s a million records here)."""
        self._serial.submit(self._refresh, latest, tails, wholes, ends)

    def _refresh(self, latest: dict[bytes, bytes | None], tails: dict[int, set[bytes]],
                 wholes: dict[int, set[bytes]], ends: dict[int, int]) -> None:
        now_ms = int(time.time() * 1000)
        try:
            with self._lock:
                db = self._open()
                marks: dict[int, bytes] = {}
                for p, keys in [*tails.items(), *wholes.items()]:
                    # One batch a partition: each is atomic, with its mark.
                    batch = WriteBatch(raw_mode=True)
                    if p in wholes:
                        batch.delete_range(tag(p), tag(p + 1))
                    self._batch(batch, p, ((key, latest.get(key)) for key in keys))
                    marks[p] = orjson.dumps({"offset": ends[p], "at_ms": now_ms})
                    batch.put(tag(p) + _MARK, marks[p])
                    db.write(batch)
                self._flushed(db, marks, ())
        except Exception as exc:
            self.broken(exc)

    @staticmethod
    def _batch(batch: Any, p: int, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        prefix = tag(p)
        for key, packed in records:
            if packed is None:
                batch.delete(prefix + key)
            else:
                batch.put(prefix + key, packed)

    # --- state writes ---------------------------------------------------------------------------

    def put(self, written: list[Run]) -> None:
        """Take one state write the broker acknowledged with its seal: its records (runs of a
        partition's keys and values with their headers), in the partitions the store holds, and
        their marks moved to the changelog's end asked now. A partition whose end cannot be asked
        loses its mark (read whole next time). The runs are emptied as they are stored."""
        if self._unusable or not written:
            return
        self._serial.submit(self._put, written).result()

    def _put(self, written: list[Run]) -> None:
        try:
            with self._lock:
                db = self._open()
                held = {p for p, _, _, _ in written} & self._marks.keys()
                if not held:
                    written.clear()
                    return
                ends = self._ends(held)
                now_ms = int(time.time() * 1000)
                marks = {p: orjson.dumps({"offset": ends[p], "at_ms": now_ms}) for p in held if p in ends}
                # Batches of about _BATCH records, the marks in the last: a write lands in a few
                # batches, so what the store holds past its marks until they move is records the
                # changelog holds from the marks on (a restart reads them again from its tail).
                batch = WriteBatch(raw_mode=True)
                # The records of a run share their headers: each run's are packed once.
                heads: dict[object, bytes] = {}
                written.reverse()
                while written:
                    p, headers, keys, values = written.pop()  # the run is let go as it is stored
                    if p not in held:
                        continue
                    shared = tuple(headers) if headers else ()
                    head = heads.get(shared)
                    if head is None:
                        head = heads[shared] = _head(headers)
                    for at in range(0, len(keys), _BATCH):
                        _fill(batch, tag(p), head, keys[at:at + _BATCH], values[at:at + _BATCH])
                        if batch.len() >= _BATCH:
                            db.write(batch)
                            batch = WriteBatch(raw_mode=True)
                    del keys[:], values[:]
                for p in held:
                    if p in marks:
                        batch.put(tag(p) + _MARK, marks[p])
                    else:
                        batch.delete(tag(p) + _MARK)
                db.write(batch)
                self._flushed(db, marks, held - marks.keys())
        except Exception as exc:
            self.broken(exc)

    def _flushed(self, db: Any, marks: dict[int, bytes], dropped: Iterable[int]) -> None:
        """Note the marks written (`marks`) and deleted (`dropped`), and have RocksDB flush the writes
        to a table file in its own threads (they skip the write-ahead log)."""
        self._marks.update(marks)
        for p in dropped:
            self._marks.pop(p, None)
        db.flush(wait=False)

    def forget(self, partitions: set[int]) -> None:
        """Drop the marks of `partitions` (a state write of theirs failed): read whole next time."""
        if self._unusable or not partitions:
            return
        self._serial.submit(self._forget, partitions)

    def _forget(self, partitions: set[int]) -> None:
        try:
            with self._lock:
                batch = WriteBatch(raw_mode=True)
                for p in partitions:
                    batch.delete(tag(p) + _MARK)
                db = self._open()
                db.write(batch)
                self._flushed(db, {}, partitions)
        except Exception as exc:
            self.broken(exc)

    def _ends(self, partitions: set[int]) -> dict[int, int]:
        ends: dict[int, int] = {}
        for p in partitions:
            try:
                if self._watermarks is None:
                    conf = client_config(self.settings)
                    conf["group.id"] = f"{self.settings.topic_prefix}{self.settings.app_id}-local-state"
                    self._watermarks = Consumer(conf)
                ends[p] = self._watermarks.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10.0)[1]
            except Exception as exc:
                log.warning("the end of %s/%d is unknown after a state write (%s): its local state is not used at "
                            "the next start", self.topic, p, exc)
        return ends
