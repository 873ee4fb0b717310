"""Rebalances move only what moves: a worker keeps the state of the partitions it keeps, unread."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import redis as redis_lib

from streams.embedded import free_port
from streams.settings import Settings
from tests.conftest import WorkerProc, consume_all, produce, wait_for
from tests.streams import scripted_tasks as st

TASK_TOPICS = ("retention.tasks.callcentre", "retention.tasks.sms")
LOADED = re.compile(r"loaded \d+ subscribers of partitions \[([\d, ]*)\] in [\d.]+ s"
                    r"(?:; kept in memory \[([\d, ]*)\], read from the changelog \[([\d, ]*)\])?")


STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO streams\.runtime\.claims: "
RELEASED = re.compile(STAMP + r"released partitions \[([\d, ]*)\]", re.M)
CLAIMED = re.compile(STAMP + r"claimed partitions \[([\d, ]*)\]", re.M)


def _stamped(pattern: re.Pattern[str], log: Path) -> list[tuple[datetime, set[int]]]:
    return [(datetime.strptime(at, "%Y-%m-%d %H:%M:%S,%f"), _parts(parts))
            for at, parts in pattern.findall(log.read_text(errors="replace"))]


def _parts(text: str) -> set[int]:
    return {int(p) for p in text.replace(" ", "").split(",") if p}


def _loads(log: Path) -> list[tuple[set[int], set[int], set[int]]]:
    """Each load the worker logged: (owned, kept in memory, read from the changelog)."""
    out = []
    for owned, kept, read in LOADED.findall(log.read_text(errors="replace")):
        out.append((_parts(owned), _parts(kept), _parts(read) if kept else _parts(owned)))
    return out


def _records(items: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, bytes | None, bytes | None]]:
    return [(topic, value["msisdn"].encode(), orjson.dumps(value)) for topic, value in items]


def _events(*workers: WorkerProc) -> float:
    return sum(w.metric("churnlight_events_total") for w in workers)


def test_a_joining_worker_takes_partitions_and_the_first_keeps_the_others_without_a_reload(
        settings: Settings, redis_client: redis_lib.Redis, tmp_path: Path) -> None:
    redis_client.sadd("churnlight:optout:sms", st.T8, st.T12)
    redis_client.sadd("churnlight:dnc", st.T9)
    redis_client.hset(f"churnlight:contact:{st.T11}", "sms", st.T11_LAST_SMS_CONTACT)
    part1, part2 = st.history(settings.partitions)
    everything = set(range(settings.partitions))
    log = tmp_path / "first.log"
    first = WorkerProc(settings.model_copy(update={"data_dir": tmp_path / "w1"}), log)
    second = WorkerProc(settings.model_copy(update={"data_dir": tmp_path / "w2", "web_port": free_port()}),
                        tmp_path / "second.log")
    produce(settings, _records(part1))
    try:
        first.start()
        wait_for(lambda: _events(first) >= len(part1), timeout_s=90, what="the first part processed")
        before = len(_loads(log))
        assert _loads(log)[-1][0] == everything

        second.start()

        def owned() -> tuple[set[int], set[int]]:
            return set(first.get("/health")[1]["partitions"]), set(second.get("/health")[1]["partitions"])
        wait_for(lambda: all(owned()) and set.union(*owned()) == everything and not set.intersection(*owned()),
                 timeout_s=90, what="the partitions split between the workers")
        kept = owned()[0]
        produce(settings, _records(part2))
        total = len(part1) + len(part2)
        wait_for(lambda: _events(first, second) >= total, timeout_s=90, what="the second part processed")
        wait_for(lambda: len(consume_all(settings, "churn.lights", idle_s=1.0)) > 0, what="light changes")
        # Every event counted once over both workers: none read twice, none lost.
        assert _events(first, second) == total
        joined = _loads(log)[before:]
        # Every load since the join kept the first worker's own partitions in memory, and the last
        # one kept exactly those it still owns; none of them was read from the changelog again.
        assert joined, "the first worker never took a new assignment"
        assert joined[-1][0] == kept and joined[-1][1] == kept, joined
        assert all(not (read & kept) for _, _, read in joined), joined
        # It read on through the rebalance, and the second worker claimed each partition it took
        # only once the first had released it: one worker at a time reads a partition.
        text = log.read_text(errors="replace")
        assert "the group is rebalancing: the reader reads partitions [0, 1, 2, 3] on" in text
        assert f"and reads partitions {sorted(kept)} on" in text, text[-2000:]
        released, claimed = _stamped(RELEASED, log), _stamped(CLAIMED, tmp_path / "second.log")
        assert claimed and claimed[0][1] == everything - kept, claimed
        for p in claimed[0][1]:
            assert any(p in parts and at <= claimed[0][0] for at, parts in released), (p, released, claimed)

        # The second worker leaves: the first keeps its own partitions and reads only the others.
        before = len(_loads(log))
        second.stop()
        wait_for(lambda: set(first.get("/health")[1]["partitions"]) == everything, timeout_s=90,
                 what="the first worker owning every partition again")
        left = _loads(log)[before:]
        assert left and left[-1][0] == everything, left
        assert all(not (read & kept) for _, _, read in left), left
        assert set().union(*(read for _, _, read in left)) == everything - kept, left

        # Exactly right: the contract's tasks each once, the suppressions, each light change once.
        tasks = [(topic, orjson.loads(m.value())) for topic in TASK_TOPICS for m in consume_all(settings, topic)]
        ids = Counter(d["task_id"] for _, d in tasks)
        assert all(n == 1 for n in ids.values()), ids.most_common(3)
        issued = {(t, d["msisdn"], d["kind"], (d["offer"] or {}).get("code"), d["created_at"], d.get("send_after"))
                  for t, d in tasks}
        assert issued == st.EXPECTED_ISSUED
        feed = [{k.decode(): v.decode() for k, v in f.items()} for _, f in redis_client.xrange("churnlight:feed")]
        assert {(e["msisdn"], e["kind"], e["reason"]) for e in feed if e["status"] == "suppressed"} \
            == st.EXPECTED_SUPPRESSED
        lights = Counter((m.key(), orjson.loads(m.value())["at"], orjson.loads(m.value())["light"])
                         for m in consume_all(settings, "churn.lights"))
        assert all(n == 1 for n in lights.values()), lights.most_common(3)
    finally:
        first.stop()
        second.stop()
