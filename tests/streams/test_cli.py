"""The command line against the embedded stack: consent, replay, tail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import redis as redis_lib

from streams.settings import Settings
from tests.conftest import env_of, produce


def _cli(settings: Settings, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env_of(settings),
                          capture_output=True, timeout=120, input=stdin)


def test_consent_add_list_remove_from_arguments_and_file(settings: Settings, redis_client: redis_lib.Redis,
                                                         tmp_path: Path) -> None:
    listing = tmp_path / "dnc.txt"
    listing.write_text("# numbers from the complaints desk\n13800000002\n13800000003\n")
    assert _cli(settings, "consent", "add", "dnc", "13800000001", "--file", str(listing)).returncode == 0
    assert redis_client.smembers("churnlight:dnc") == {b"13800000001", b"13800000002", b"13800000003"}
    assert _cli(settings, "consent", "list", "dnc").stdout.decode().split() == ["13800000001", "13800000002", "13800000003"]
    assert _cli(settings, "consent", "remove", "dnc", "13800000002").returncode == 0
    assert redis_client.smembers("churnlight:dnc") == {b"13800000001", b"13800000003"}
    bad = _cli(settings, "consent", "add", "sms-optout", "13800000001", "hello")
    assert bad.returncode == 2 and b"hello" in bad.stderr
    assert not redis_client.exists("churnlight:optout:sms")  # nothing written when any value is bad


def test_replay_sends_every_line_and_reports_unreadable_ones(settings: Settings, tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    history.write_text("\n".join([
        orjson.dumps({"topic": "usage.events", "value": {"event_id": "e1", "msisdn": "13800000001"}}).decode(),
        orjson.dumps({"topic": "subscriber.profiles", "key": "13800000001", "value": None}).decode(),
        '{"topic": "nowhere", "value": {}}',
        "not json at all",
    ]) + "\n")
    done = _cli(settings, "replay", str(history))
    assert done.returncode == 1  # it says it could not send everything
    err = done.stderr.decode()
    assert "line 3 not sent" in err and "line 4 not sent" in err
    assert settings.topic("usage.events") in done.stdout.decode()


def test_tail_prints_tasks_readably_with_masked_numbers_and_as_json(settings: Settings) -> None:
    assert _cli(settings, "replay", "/dev/null").returncode == 0  # creates the topics
    task = {"task_id": "t1", "msisdn": "13800000001", "channel": "sms", "kind": "yellow_light",
            "priority": "normal", "light": "yellow", "previous_light": "green", "reasons": [], "offer": None,
            "region": "zunyi", "brand": "gotone", "segment": None, "created_at": "2026-08-17T00:00:00+08:00",
            "due_by": "2026-08-17T00:00:00+08:00", "send_after": "2026-08-17T08:00:00+08:00",
            "rule_set": "cmcc-2010", "template": "yellow_light.v1", "vars": {}}
    produce(settings, [("retention.tasks.sms", b"13800000001", orjson.dumps(task))])
    readable = _cli(settings, "tail", "--from-beginning", "--max", "1").stdout.decode()
    assert "yellow_light" in readable and "138****0001" in readable and "13800000001" not in readable
    as_json = _cli(settings, "tail", "--from-beginning", "--max", "1", "--json").stdout.decode()
    assert orjson.loads(as_json) == task
