"""The worker's partitions' state on local disk (RocksDB), as of a changelog offset per partition.

Each state write the broker acknowledged is put into the store with, per partition it touched,
the changelog's end after it (the high watermark once the write's seal is in: a lower bound of
where the next write starts, however far a broker under-reports it). A restart on the same disk
reads the store and only the changelog's tail from that offset (streams.recovery); the store is
never ahead of the changelog, since it takes a write only after the changelog has it.

Layout: every key behind two bytes of its partition (a partition is one prefix scan); per
partition a mark `<p>\\x00` = JSON {"offset", "write"}; one header `\\xff\\xff` = the changelog
topic and its partition count, so a store of another deployment is never read as this one's.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import orjson
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from streams.settings import Settings
from streams.states import tag

log = logging.getLogger(__name__)

_HEADER = b"\xff\xff"
_MARK = b"\x00"  # after a partition's tag: no msisdn or clock key starts with a NUL byte


# The store's own memory: what it takes counts against the 0.5 KiB a subscriber may cost in RSS.
WRITE_BUFFER_BYTES = 16 << 20
BLOCK_CACHE_BYTES = 8 << 20


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
    opts.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
    opts.set_block_based_table_factory(table)
    return opts


class StoreError(RuntimeError):
    """The local store cannot be read or written."""


class LocalStore:
    """A RocksDB of the latest value per changelog key, per partition as of a changelog offset."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.path: Path = settings.data_dir / "state" / topic
        self.topic = topic
        self.partitions = settings.partitions
        self._db: Any = None

    def _open(self) -> Any:
        if self._db is not None:
            return self._db
        header = orjson.dumps({"topic": self.topic, "partitions": self.partitions, "format": 1})
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            db = Rdict(str(self.path), _options())
        except Exception as exc:
            if "lock" in str(exc).lower():
                # Another process has it open (two workers on one data dir): not ours to empty.
                raise StoreError(f"{self.path} is in use by another process: {exc}") from exc
            db = None
            opened: Exception | None = exc
        else:
            opened = None
        try:
            if db is None:
                raise opened or StoreError("not opened")
            found = db.get(_HEADER)
            if found is not None and found != header:
                db.close()
                log.warning("the local state in %s is of another deployment (%s): it is emptied", self.path,
                            found.decode("utf-8", "replace"))
                raise StoreError("another deployment's store")
        except Exception as exc:
            if not isinstance(exc, StoreError):
                log.warning("the local state in %s cannot be opened (%s): it is emptied, and the partitions "
                            "are read from the whole changelog", self.path, exc)
            self._wipe()
            db = Rdict(str(self.path), _options())
        db[_HEADER] = header
        self._db = db
        return db

    def _wipe(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:
                pass
            self._db = None
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)

    def mark(self, p: int) -> tuple[int, int] | None:
        """Return (changelog offset, state write) the store holds partition `p` as of, or None."""
        try:
            found = self._open().get(tag(p) + _MARK)
            if found is None:
                return None
            doc = orjson.loads(found)
            return int(doc["offset"]), int(doc["write"])
        except Exception as exc:
            raise StoreError(f"the mark of partition {p} cannot be read: {exc}") from exc

    def read(self, p: int) -> dict[bytes, bytes]:
        """Return every key and value of partition `p` (its mark left out)."""
        prefix = tag(p)
        out: dict[bytes, bytes] = {}
        try:
            it = self._open().iter()
            it.seek(prefix)
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    break
                if key != prefix + _MARK:
                    out[key[2:]] = it.value()
                it.next()
            it.status()
        except Exception as exc:
            raise StoreError(f"partition {p} cannot be read: {exc}") from exc
        return out

    def put(self, records: list[tuple[int, bytes, bytes | None]], marks: dict[int, tuple[int, int]],
            stale: set[int]) -> None:
        """Take one acknowledged state write: its records, the new marks of the partitions it
        touched, and forget the marks of partitions `stale` (whose changelog end is unknown)."""
        batch = WriteBatch(raw_mode=True)
        for p, key, value in records:
            if value is None:
                batch.delete(tag(p) + key)
            else:
                batch.put(tag(p) + key, value)
        for p, (offset, write) in marks.items():
            batch.put(tag(p) + _MARK, orjson.dumps({"offset": offset, "write": write}))
        for p in stale:
            batch.delete(tag(p) + _MARK)
        self._open().write(batch)

    def replace(self, p: int, data: dict[bytes, bytes], offset: int, write: int) -> None:
        """Make partition `p` hold exactly `data` as of changelog `offset` (after a full read)."""
        db = self._open()
        prefix = tag(p)
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(prefix, tag(p + 1))
        for key, value in data.items():
            batch.put(prefix + key, value)
        batch.put(prefix + _MARK, orjson.dumps({"offset": offset, "write": write}))
        db.write(batch)

    def forget(self, partitions: set[int]) -> None:
        """Drop the marks of `partitions`: their next load reads the whole changelog."""
        if not partitions:
            return
        try:
            batch = WriteBatch(raw_mode=True)
            for p in partitions:
                batch.delete(tag(p) + _MARK)
            self._open().write(batch)
        except Exception as exc:
            log.warning("the local state in %s cannot forget partitions %s (%s): it is emptied", self.path,
                        sorted(partitions), exc)
            self._wipe()

    def broken(self, exc: BaseException) -> None:
        """Give up the store after an error: log it and start it empty."""
        if "in use by another process" in str(exc):
            log.warning("the local state is not used: %s", exc)
            return
        log.warning("the local state in %s cannot be read (%s): it is emptied, and the partitions are read "
                    "from the whole changelog", self.path, exc)
        self._wipe()

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None
