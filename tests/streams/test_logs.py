"""Logs an operator can read: one format (JSON lines on request), dead-letter warnings rate-limited."""

from __future__ import annotations

import json
import logging

import pytest

from streams.logs import JsonFormatter, RateLimited
from streams.settings import Settings
from tests.conftest import WorkerProc, consume, produce


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_minute_with_the_count_left_out(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimited(logging.getLogger("test.limited"), interval_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        for i in range(100):
            limited.warning("bad_value", "dead-lettered usage.events/0/%d", i)
            clock.now += 0.5  # 100 within 50 s
        limited.warning("invalid_json", "dead-lettered usage.events/1/%d", 7)
        clock.now += 11
        limited.warning("bad_value", "dead-lettered usage.events/0/%d", 100)
        limited.warning("bad_value", "dead-lettered usage.events/0/%d", 101)
    assert [r.getMessage() for r in caplog.records] == [
        "dead-lettered usage.events/0/0",
        "dead-lettered usage.events/1/7",
        "dead-lettered usage.events/0/100 (and 99 more bad_value since the last such line)",
    ]


def test_json_formatter_writes_one_object_a_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("streams.x", logging.ERROR, __file__, 1, "failed %s", ("138****0001",), sys.exc_info())
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "error" and doc["logger"] == "streams.x" and doc["msg"] == "failed 138****0001"
    assert doc["ts"].endswith("+00:00") and "ValueError: boom" in doc["exc"]
    assert "\n" not in JsonFormatter().format(record)


def test_the_worker_logs_json_lines_only_and_one_dead_letter_line_per_reason(settings: Settings) -> None:
    json_settings = settings.model_copy(update={"log_format": "json"})
    worker = WorkerProc(json_settings, settings.data_dir.parent / "worker.log")
    try:
        worker.start()
        bad = [("usage.events", b"13800000001", b"{not json") for _ in range(40)]
        bad += [("usage.events", b"13800000002", b'{"event_id": "x"}') for _ in range(5)]
        produce(settings, bad)
        consume(settings, "churn.deadletter", 45, timeout_s=60)
    finally:
        worker.stop()
    lines = worker.log_path.read_text().splitlines()
    docs = [json.loads(line) for line in lines]  # every line is a JSON object
    assert {"ts", "level", "logger", "msg"} <= set(docs[0])
    loggers = {d["logger"] for d in docs}
    assert any(name.startswith("faust.") for name in loggers) and "streams.worker" in loggers
    dead = [d["msg"] for d in docs if d["msg"].startswith("dead-lettered")]
    reasons = sorted(msg.split(": ")[1].split(" ")[0] for msg in dead)
    assert len(dead) == 2, dead
    assert reasons[0] != reasons[1]
    assert not any("%3|" in line for line in lines)
