"""The worker's local state (streams.store): a restart reads only the changelog's tail, a corrupt
store is survived, and partitions that stay with a worker in a rebalance are not read again."""

from __future__ import annotations

import os
import re
from pathlib import Path

import orjson

from streams.embedded import free_port
from streams.settings import Settings
from streams.topics import changelog_topic
from tests.conftest import WorkerProc, consume_all, produce, wait_for
from tests.streams import scripted

LOADED = re.compile(r"loaded (\d+) subscribers of partitions \[([\d, ]*)\] in [\d.]+ s(.*)")


def _loads(log: Path) -> list[str]:
    """The recovery lines of a worker's log, oldest first (what follows 'in N s')."""
    return [m.group(3) for m in LOADED.finditer(log.read_text(errors="replace"))]


def _partitions(how: str, what: str) -> set[int]:
    found = re.search(re.escape(what) + r": \[([\d, ]*)\]", how)
    return {int(p) for p in found.group(1).split(",")} if found and found.group(1) else set()


def _records(how: str, what: str) -> int:
    found = re.search(re.escape(what) + r": \[[\d, ]*\] \((\d+) records\)", how)
    assert found, how
    return int(found.group(1))


def _processed(worker: WorkerProc, n: int) -> None:
    wait_for(lambda: worker.metric("churnlight_events_total") >= n, timeout_s=90, what="every event processed")


def _windows_are_right(worker: WorkerProc) -> None:
    for sub in scripted.SUBS:
        status, body = worker.get(f"/subscribers/{sub.msisdn}")
        assert status == 200, body
        assert (body["arpu"], body["mou"]) == scripted.final_window(sub), sub.msisdn


def test_a_restart_on_the_same_disk_reads_only_the_changelogs_tail(settings: Settings, tmp_path: Path) -> None:
    items = scripted.history(settings.partitions)
    produce(settings, [(t, v["msisdn"].encode(), orjson.dumps(v)) for t, v in items])
    log = tmp_path / "worker.log"
    worker = WorkerProc(settings, log).start()
    try:
        _processed(worker, len(items))
        worker.stop()
        changelog = len(consume_all(settings, changelog_topic(settings), idle_s=1.0, full_name=True))
        worker = WorkerProc(settings, log).start()
        _windows_are_right(worker)
    finally:
        worker.stop()
    first, again = _loads(log)
    everything = set(range(settings.partitions))
    assert _partitions(first, "from the whole changelog") == everything
    assert _partitions(again, "from the local store and the changelog's tail") == everything
    assert "from the whole changelog" not in again
    assert changelog > 2 * len(scripted.SUBS)
    assert _records(again, "from the local store and the changelog's tail") < changelog / 4


def test_a_corrupt_local_store_is_survived_with_the_data_intact(settings: Settings, tmp_path: Path) -> None:
    items = scripted.history(settings.partitions)
    produce(settings, [(t, v["msisdn"].encode(), orjson.dumps(v)) for t, v in items])
    log = tmp_path / "worker.log"
    worker = WorkerProc(settings, log).start()
    try:
        _processed(worker, len(items))
        worker.stop()
        # Every file of the store overwritten with noise, as a bad disk leaves it.
        store = settings.data_dir / "state" / changelog_topic(settings)
        files = [f for f in store.rglob("*") if f.is_file()]
        assert files
        for f in files:
            f.write_bytes(os.urandom(max(f.stat().st_size, 64)))
        worker = WorkerProc(settings, log).start()
        _windows_are_right(worker)
        summary = worker.get("/lights/summary")[1]["totals"]
        assert summary == {"green": 4, "yellow": 3, "red": 2, "black": 1}
    finally:
        worker.stop()
    text = log.read_text(errors="replace")
    assert "cannot be opened" in text or "cannot be read" in text
    again = _loads(log)[-1]
    assert _partitions(again, "from the whole changelog") == set(range(settings.partitions))


def test_partitions_a_worker_keeps_when_another_joins_are_not_read_again(settings: Settings, tmp_path: Path) -> None:
    items = scripted.history(settings.partitions)
    produce(settings, [(t, v["msisdn"].encode(), orjson.dumps(v)) for t, v in items])
    log = tmp_path / "w1.log"
    first = WorkerProc(settings.model_copy(update={"data_dir": tmp_path / "w1"}), log)
    second = WorkerProc(settings.model_copy(update={"data_dir": tmp_path / "w2", "web_port": free_port()}),
                        tmp_path / "w2.log")
    try:
        first.start()
        _processed(first, len(items))
        loads = len(_loads(log))
        second.start()
        owned = lambda: (set(first.get("/health")[1]["partitions"]), set(second.get("/health")[1]["partitions"]))  # noqa: E731
        wait_for(lambda: all(owned()) and set.union(*owned()) == set(range(settings.partitions))
                 and not set.intersection(*owned()), timeout_s=90, what="the partitions split between the workers")
        kept = owned()[0]
        for sub in scripted.SUBS:
            status, body = first.get(f"/subscribers/{sub.msisdn}")
            assert status == 200 and (body["arpu"], body["mou"]) == scripted.final_window(sub), body
    finally:
        first.stop()
        second.stop()
    after = _loads(log)[loads:]
    assert after, "the first worker never loaded again"
    last = after[-1]
    assert _partitions(last, "kept in memory") == kept
    for how in after:
        # Never read again, from the changelog or the local store, after the second joined.
        assert not kept & (_partitions(how, "from the whole changelog")
                           | _partitions(how, "from the local store and the changelog's tail")), how
