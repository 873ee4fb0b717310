"""Two workers in one group: each owns some partitions, and either answers for any subscriber."""

from __future__ import annotations

from pathlib import Path

import orjson

from streams.embedded import free_port
from streams.settings import Settings
from tests.conftest import WorkerProc, produce, wait_for
from tests.streams import scripted


def test_any_worker_answers_for_any_subscriber_and_they_split_the_partitions(
    settings: Settings, tmp_path: Path
) -> None:
    items = scripted.history(settings.partitions)
    produce(settings, [(t, v["msisdn"].encode(), orjson.dumps(v)) for t, v in items])
    first = WorkerProc(settings.model_copy(update={"data_dir": tmp_path / "w1"}), tmp_path / "w1.log")
    second = WorkerProc(settings.model_copy(update={"data_dir": tmp_path / "w2", "web_port": free_port()}),
                        tmp_path / "w2.log")
    try:
        first.start()
        second.start()
        owned = lambda: (set(first.get("/health")[1]["partitions"]), set(second.get("/health")[1]["partitions"]))  # noqa: E731
        wait_for(lambda: all(owned()) and set.union(*owned()) == set(range(settings.partitions))
                 and not set.intersection(*owned()), timeout_s=90, what="the partitions split between the workers")
        wait_for(lambda: first.metric("churnlight_events_total") + second.metric("churnlight_events_total")
                 >= len(items), timeout_s=90, what="every event processed")
        for sub in scripted.SUBS:
            answers = [w.get(f"/subscribers/{sub.msisdn}") for w in (first, second)]
            assert all(status == 200 for status, _ in answers), answers
            assert answers[0][1] == answers[1][1]
            assert (answers[0][1]["arpu"], answers[0][1]["mou"]) == scripted.final_window(sub)
        # Each worker's summary counts only its own partitions; together they are the whole base.
        totals: dict[str, int] = {}
        for w in (first, second):
            for light, n in w.get("/lights/summary")[1]["totals"].items():
                totals[light] = totals.get(light, 0) + n
        assert totals == {"green": 4, "yellow": 3, "red": 2, "black": 1}
        assert first.get("/subscribers/13999999999")[0] == 404
    finally:
        first.stop()
        second.stop()
