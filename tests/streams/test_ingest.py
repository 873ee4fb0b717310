"""Ingest on the embedded broker: valid events are applied and counted, bad ones dead-lettered."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from rules.events import BILLING, LIFECYCLE, OUTCOMES, PROFILES, USAGE
from streams.settings import Settings
from tests.conftest import WorkerProc, consume, env_of, produce, wait_for

MSISDN = "13800000001"
TS = "2026-10-03T09:15:00+08:00"

VALID = [
    (USAGE, {"event_id": "u1", "msisdn": MSISDN, "ts": TS, "type": "voice", "direction": "out", "minutes": 3.5, "charge": 0.7}),
    (BILLING, {"event_id": "b1", "msisdn": MSISDN, "ts": TS, "type": "fee", "amount": 58.0}),
    (PROFILES, {"msisdn": MSISDN, "region": "zunyi", "brand": "gotone", "segment": "high",
                "activated_on": "2019-04-01", "birthday": "10-05", "prepaid": False, "contract": None,
                "photo": {"month": "2026-09", "arpu": 158.0, "mou": 320}, "updated_at": TS}),
    (LIFECYCLE, {"event_id": "l1", "msisdn": MSISDN, "ts": TS, "type": "complaint"}),
    (OUTCOMES, {"task_id": "abc", "msisdn": MSISDN, "ts": TS, "channel": "sms", "status": "delivered"}),
]

GOOD_USAGE = dict(VALID[0][1])


def _usage(**change: object) -> bytes:
    doc = {**GOOD_USAGE, **change}
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


# One case per kind of bad input of CONTRACT §1, with the error code it must carry.
BAD = [
    ("invalid_json", USAGE, MSISDN.encode(), b"{not json"),
    ("not_object", USAGE, MSISDN.encode(), b"[1, 2]"),
    ("missing_field", USAGE, MSISDN.encode(), _usage(event_id=None)),
    ("wrong_type", USAGE, MSISDN.encode(), _usage(charge="0.7")),
    ("bad_value", USAGE, MSISDN.encode(), _usage(charge=-1)),
    ("bad_unit", USAGE, MSISDN.encode(), _usage(type="sms", minutes=2)),
    ("key_mismatch", USAGE, b"13900000002", _usage()),
    ("bad_time", USAGE, MSISDN.encode(), _usage(ts="yesterday")),
    ("bad_time", BILLING, MSISDN.encode(), orjson.dumps({"event_id": "b9", "msisdn": MSISDN, "ts": "2026-10-03T09:15:00", "type": "fee", "amount": 1})),
    ("too_large", USAGE, MSISDN.encode(), _usage(pad="x" * 70_000)),
    ("bad_value", LIFECYCLE, MSISDN.encode(), orjson.dumps({"event_id": "l9", "msisdn": MSISDN, "ts": TS, "type": "exploded"})),
]


def test_one_valid_event_of_each_topic_is_applied_and_counted(worker: WorkerProc, settings: Settings) -> None:
    worker.start()
    produce(settings, [(topic, MSISDN.encode(), orjson.dumps(value)) for topic, value in VALID])
    for topic, _ in VALID:
        wait_for(lambda t=topic: worker.metric("churnlight_events_total", topic=t, outcome="applied") == 1,
                 what=f"{topic} applied")
    assert worker.metric("churnlight_events_total", outcome="rejected") == 0
    assert worker.metric("churnlight_deadletter_total") == 0


def test_a_profile_deletion_is_applied_and_not_dead_lettered(worker: WorkerProc, settings: Settings) -> None:
    worker.start()
    produce(settings, [(topic, MSISDN.encode(), orjson.dumps(value)) for topic, value in VALID])
    wait_for(lambda: worker.metric("churnlight_events_total", topic=PROFILES, outcome="applied") == 1,
             what="the profile applied")
    assert worker.get(f"/subscribers/{MSISDN}")[1]["region"] is not None
    produce(settings, [(PROFILES, MSISDN.encode(), None)])  # CONTRACT §1: a null value deletes the profile
    wait_for(lambda: worker.metric("churnlight_events_total", topic=PROFILES, outcome="applied") == 2,
             what="the deletion applied")
    assert worker.metric("churnlight_deadletter_total") == 0
    assert worker.get(f"/subscribers/{MSISDN}")[1]["region"] is None


def test_bad_input_lands_on_deadletter_with_reason_and_worker_keeps_consuming(
    worker: WorkerProc, settings: Settings
) -> None:
    worker.start()
    produce(settings, [(topic, key, value) for _, topic, key, value in BAD])
    # A valid event after all the bad ones is still applied: nothing stopped the worker.
    produce(settings, [(USAGE, MSISDN.encode(), _usage(event_id="after-bad"))])

    dead = consume(settings, "churn.deadletter", len(BAD))
    by_value = {msg.value(): msg for msg in dead}
    for error, topic, key, value in BAD:
        msg = by_value[value]  # unchanged bytes
        headers = dict(msg.headers())
        assert headers["error"].decode() == error, (error, value[:80])
        src_topic, partition, offset = headers["source"].decode().rsplit("/", 2)
        assert src_topic == settings.topic(topic) and int(partition) >= 0 and int(offset) >= 0
        assert msg.key() == key
    wait_for(lambda: worker.metric("churnlight_events_total", topic=USAGE, outcome="applied") == 1,
             what="valid event after the bad ones")
    assert worker.metric("churnlight_events_total", outcome="rejected") == len(BAD)
    assert worker.metric("churnlight_deadletter_total", topic=USAGE, error="bad_unit") == 1
    assert worker.proc is not None and worker.proc.poll() is None
    assert "13800000001" not in worker.log_path.read_text()  # msisdns never in logs unmasked


def test_event_more_than_a_day_ahead_of_watermark_and_wall_clock_is_rejected(worker: WorkerProc, settings: Settings) -> None:
    worker.start()
    produce(settings, [(USAGE, MSISDN.encode(), _usage(event_id="w1"))])
    wait_for(lambda: worker.metric("churnlight_events_total", outcome="applied") == 1, what="first event")
    future = _usage(event_id="w2", ts="2099-10-05T09:15:00+08:00")
    produce(settings, [(USAGE, MSISDN.encode(), future)])
    dead = consume(settings, "churn.deadletter", 1)
    assert dict(dead[0].headers())["error"] == b"too_far_ahead"


def test_worker_refuses_to_start_when_inputs_are_not_copartitioned(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka})
    futures = admin.create_topics([
        NewTopic(settings.topic(USAGE), 4, 1, config={"cleanup.policy": "delete"}),
        NewTopic(settings.topic(BILLING), 2, 1, config={"cleanup.policy": "delete"}),
    ])
    for fut in futures.values():
        fut.result()
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env_of(settings),
                          capture_output=True, timeout=60)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "not co-partitioned" in err
    assert f"{settings.topic(USAGE)}=4" in err and f"{settings.topic(BILLING)}=2" in err


@pytest.mark.parametrize(("var", "value", "says"), [
    ("CHURNLIGHT_PARTITIONS", "zero", "CHURNLIGHT_PARTITIONS"),
    ("CHURNLIGHT_TZ", "Mars/Olympus", "IANA time zone"),
    ("CHURNLIGHT_KAFKA", "no-port-here", "host:port"),
    ("CHURNLIGHT_KAFKA_SECURITY", "tls", "CHURNLIGHT_KAFKA_SECURITY"),
])
def test_invalid_setting_stops_startup_naming_the_variable(settings: Settings, var: str, value: str, says: str) -> None:
    env = env_of(settings)
    env[var] = value
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert says in proc.stderr.decode() and var in proc.stderr.decode()
