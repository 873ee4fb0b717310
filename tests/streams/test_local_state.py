"""The worker's local state (streams.runtime.local): a restart on the same disk reads only the changelog's
tail; a corrupt or stale local copy falls back to the changelog, with the data intact and a log line."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import orjson
import pytest
from rocksdict import Rdict

from streams.runtime.changelog import Headers
from streams.runtime.local import LocalStore, headers_of, options, pack, value_of
from streams.settings import Settings
from streams.topics import changelog_topic, ensure_topics
from tests.conftest import WorkerProc, consume_all, produce, wait_for
from tests.streams import scripted

READ = re.compile(r"read partitions \[[\d, ]*\] of \S+ in [\d.]+ s: (.*)")


def _reads(log: Path) -> list[str]:
    """What each recovery of a worker's log read, oldest first."""
    return READ.findall(log.read_text(errors="replace"))


def _partitions(how: str, what: str) -> set[int]:
    """The partitions `how` (one or more reads' descriptions) says were read `what`."""
    return {int(p) for found in re.findall(re.escape(what) + r": \[([\d, ]*)\]", how) for p in found.split(",") if p}


def _local_records(how: str) -> tuple[int, int]:
    found = re.search(r"\((\d+) local records, (\d+) tail records\)", how)
    assert found, how
    return int(found.group(1)), int(found.group(2))


def _run_once(settings: Settings, log: Path, items: list[tuple[str, dict[str, object]]] | None = None) -> None:
    """Process `items` (the scripted history by default) with one worker on `settings`' data dir, then stop it."""
    items = scripted.history(settings.partitions) if items is None else items
    produce(settings, [(t, str(v["msisdn"]).encode(), orjson.dumps(v)) for t, v in items])
    worker = WorkerProc(settings, log).start()
    try:
        wait_for(lambda: worker.metric("churnlight_events_total") >= len(items), timeout_s=90,
                 what="every event processed")
    finally:
        worker.stop()


def _restart_intact(settings: Settings, log: Path) -> None:
    """Start the worker again on its data dir; every subscriber's state is there."""
    worker = WorkerProc(settings, log).start()
    try:
        _intact(worker)
    finally:
        worker.stop()


def _intact(worker: WorkerProc) -> None:
    for sub in scripted.SUBS:
        status, body = worker.get(f"/subscribers/{sub.msisdn}")
        assert status == 200, body
        assert (body["arpu"], body["mou"]) == scripted.final_window(sub), sub.msisdn
    assert worker.get("/lights/summary")[1]["totals"] == {"green": 4, "yellow": 3, "red": 2, "black": 1}


def test_a_restart_on_the_same_disk_reads_only_the_changelogs_tail(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    _run_once(settings, log)
    since = len(log.read_text(errors="replace"))
    _restart_intact(settings, log)
    first, again = _reads(log)[:2]
    everything = set(range(settings.partitions))
    assert _partitions(first, "from the whole changelog") == everything
    assert _partitions(again, "from the local store and the changelog's tail") == everything
    assert "from the whole changelog" not in again
    stored, tail = _local_records(again)
    assert stored >= len(scripted.SUBS) + settings.partitions  # every subscriber and clock, from the disk
    # The changelog's end as a broker reports it may lie one record (the seal) short: at most that is read.
    assert tail <= settings.partitions
    # Read and indexed while the worker joined its group (a thread of its own): the assignment read
    # nothing more, and kept what the preload had loaded.
    restart = log.read_text(errors="replace")[since:]
    assert re.search(r"preloaded \d+ subscribers of partitions \[0, 1, 2, 3\] from the local store", restart), restart
    assert len(_reads(log)) == 2
    assert "kept in memory [0, 1, 2, 3], read from the changelog []" in restart


def test_a_restart_after_sigkill_reads_the_local_store_and_a_tail_with_the_data_intact(
        settings: Settings, tmp_path: Path) -> None:
    items = scripted.history(settings.partitions)
    produce(settings, [(t, str(v["msisdn"]).encode(), orjson.dumps(v)) for t, v in items])
    log = tmp_path / "worker.log"
    worker = WorkerProc(settings, log).start()
    try:
        wait_for(lambda: worker.metric("churnlight_events_total") >= len(items), timeout_s=90,
                 what="every event processed")
    finally:
        worker.kill()  # no close: what the store holds is what its writes left on disk
    _restart_intact(settings, log)
    again = _reads(log)[-1]
    # The store's last writes may be lost with the process (they skip RocksDB's log): read from the tail.
    assert _partitions(again, "from the local store and the changelog's tail") == set(range(settings.partitions))
    assert "from the whole changelog" not in again


def test_a_tail_written_by_another_worker_is_folded_onto_the_local_copy(settings: Settings, tmp_path: Path) -> None:
    items = scripted.history(settings.partitions)
    half = len(items) // 2
    log = tmp_path / "worker.log"
    _run_once(settings, log, items[:half])
    # The rest goes through a worker on another disk: the changelog moves on past the first one's copy.
    other = settings.model_copy(update={"data_dir": tmp_path / "other"})
    _run_once(other, tmp_path / "other.log", items[half:])
    _restart_intact(settings, log)
    again = _reads(log)[-1]
    assert _partitions(again, "from the local store and the changelog's tail") == set(range(settings.partitions))
    assert "from the whole changelog" not in " ".join(_reads(log)[2:])
    stored, tail = _local_records(again)
    assert stored > 0 and tail > settings.partitions


def test_a_corrupt_local_store_falls_back_to_the_changelog_with_the_data_intact(settings: Settings,
                                                                                tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    _run_once(settings, log)
    # Every file of the store overwritten with noise, as a bad disk leaves it.
    store = settings.data_dir / "state" / changelog_topic(settings)
    files = [f for f in store.rglob("*") if f.is_file()]
    assert files
    for f in files:
        f.write_bytes(os.urandom(max(f.stat().st_size, 64)))
    _restart_intact(settings, log)
    text = log.read_text(errors="replace")
    assert re.search(r"the local state in \S+ cannot be (opened|read) \(.+\): it is emptied", text), text[-3000:]
    assert _partitions(_reads(log)[-1], "from the whole changelog") == set(range(settings.partitions))


def test_a_mark_the_changelog_does_not_span_falls_back_to_the_changelog_for_that_partition(
        settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    _run_once(settings, log)
    # Partition 1's copy claims to cover the changelog further than it goes (a changelog written anew,
    # a store copied from elsewhere).
    db = Rdict(str(settings.data_dir / "state" / changelog_topic(settings)), options())
    db[(1).to_bytes(2, "big") + b"\x00"] = orjson.dumps({"offset": 10**9, "at_ms": 0})
    db.close()
    _restart_intact(settings, log)
    text = log.read_text(errors="replace")
    assert re.search(r"/1: the local state is stale: it covers the changelog up to offset 1000000000", text)
    again = " ".join(_reads(log)[1:])  # the restart's: its preload's and its assignment's
    assert _partitions(again, "from the whole changelog") == {1}
    assert _partitions(again, "from the local store and the changelog's tail") == set(range(settings.partitions)) - {1}


def test_a_store_of_another_deployment_is_emptied_and_not_read(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    four = Settings(kafka="127.0.0.1:9", data_dir=tmp_path, partitions=4)
    store = LocalStore(four, "a-state-changelog")
    store.refresh({b"13900000001": pack(b"state", [("w", b"3")])}, {}, {0: {b"13900000001"}}, {0: 7})
    store.close()
    again = LocalStore(four, "a-state-changelog")
    assert again.start(0, 0, 9) == 7
    assert [(r.key, value_of(r.packed or b""), r.headers) for r in again.records(0)[1]] == [
        (b"13900000001", b"state", [("w", b"3")])]
    again.close()
    caplog.set_level(logging.INFO, "streams.runtime.local")
    eight = LocalStore(four.model_copy(update={"partitions": 8}), "a-state-changelog")
    assert eight.start(0, 0, 9) is None
    assert "is of another deployment" in caplog.text and "no local state" in caplog.text
    assert eight.records(0)[0] == 0
    eight.close()


def test_a_mark_older_than_a_day_is_used_only_when_nothing_was_written_after_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tombstone written after the mark may be compacted away a day later (delete.retention.ms):
    an old copy with records after its mark could keep a subscriber the changelog deleted."""
    import streams.runtime.local as local

    settings = Settings(kafka="127.0.0.1:9", data_dir=tmp_path, partitions=4)
    store = LocalStore(settings, "a-state-changelog")
    store.refresh({b"13900000001": pack(b"state", [("w", b"3")])}, {}, {0: {b"13900000001"}}, {0: 7})
    store.close()
    store = LocalStore(settings, "a-state-changelog")
    assert store.start(0, 0, 9) == 7  # young: the tail from 7 is read, deletions included
    now = local.time.time()
    monkeypatch.setattr(local.time, "time", lambda: now + 25 * 3600)
    caplog.set_level(logging.INFO, "streams.runtime.local")
    assert store.start(0, 0, 8) == 7  # old, but nothing after the mark: no deletion to miss
    assert "stale" not in caplog.text
    assert store.start(0, 0, 9) is None
    assert re.search(r"/0: the local state is stale: it is 25\.0 h old", caplog.text)
    store.close()


def test_a_state_write_keeps_each_record_with_its_own_headers_and_deletes_tombstoned_keys(
        settings: Settings) -> None:
    ensure_topics(settings)
    topic = changelog_topic(settings)
    store = LocalStore(settings, topic)
    a, b, c, d = (b"1390000000%d" % i for i in range(4))
    store.refresh({a: pack(b"old-a", [("w", b"1")]), b: pack(b"old-b", [("w", b"1")])}, {}, {0: {a, b}, 1: set()},
                  {0: 0, 1: 0})
    plain: Headers = [("w", b"2"), ("o", b'{"usage.events":7}')]
    own: Headers = [("w", b"2"), ("k", b'{"usage.events":9}')]
    store.put([(0, plain, [a, b], [b"new-a", None]), (0, own, [c], [b"new-c"]), (1, plain, [d], [b"new-d"])])
    store.close()
    again = LocalStore(settings, topic)
    high = 10**6
    assert again.start(0, 0, high) is not None and again.start(1, 0, high) is not None
    assert {r.key: (r.value, r.headers) for r in again.records(0)[1]} == {a: (b"new-a", plain), c: (b"new-c", own)}
    assert [(r.key, r.value, r.headers) for r in again.records(1)[1]] == [(d, b"new-d", plain)]
    again.close()


def test_a_packed_record_keeps_every_header() -> None:
    headers: Headers = [("w", b"12"), ("of", "usage.events/3:17"), ("x", None), ("", b"")]
    packed = pack(b"\x00value", headers)
    assert value_of(packed) == b"\x00value"
    assert headers_of(packed) == [("w", b"12"), ("of", b"usage.events/3:17"), ("x", None), ("", b"")]
    assert headers_of(pack(b"v", None)) == [] and value_of(pack(b"", [])) == b""
