"""The JSON Schemas of every topic: valid, shipped in the package, true to the contract and to the worker."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import jsonschema
import orjson
import pytest
import redis as redis_lib

from rules.events import ERRORS, INPUT_TOPICS
from rules.vocabulary import KINDS
from sinks.tasks import schema_id
from streams.settings import Settings
from streams.topics import OUTPUT_TOPICS
from tests.conftest import WorkerProc, consume_all, produce, wait_for
from tests.streams import scripted_tasks as st

def schema(topic: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(files("streams").joinpath("schemas", f"{topic}.json").read_text(encoding="utf-8"))
    return doc


def validator(topic: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(topic), format_checker=jsonschema.FormatChecker())


def errors(topic: str, doc: Any) -> list[str]:
    return [e.message for e in validator(topic).iter_errors(doc)]


@pytest.mark.parametrize("topic", [*INPUT_TOPICS, *OUTPUT_TOPICS])
def test_every_topic_has_a_valid_draft_2020_12_schema_whose_examples_hold(topic: str) -> None:
    doc = schema(topic)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$id"] == schema_id(topic)
    assert doc["examples"]
    for example in doc["examples"]:
        assert errors(topic, example) == [], example


# The contract's own examples and bounds (CONTRACT §1): each must be accepted or refused as it says.
GOOD: list[tuple[str, dict[str, Any]]] = [
    ("usage.events", {"event_id": "e1", "msisdn": "+8613800000001", "ts": "2026-10-03T09:15:00+08:00",
                      "type": "sms", "direction": "out", "charge": 0.1}),
    ("billing.events", {"event_id": "e2", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00",
                        "type": "adjustment", "amount": -12.5}),
    ("billing.events", {"event_id": "e3", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00",
                        "type": "topup", "amount": 50, "balance": 58.3}),
    ("subscriber.profiles", {"msisdn": "13800000001", "region": "zunyi", "brand": "easyown", "contract": None,
                             "photo": None}),
    ("lifecycle.events", {"event_id": "e4", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00",
                          "type": "contract_signed", "contract": {"starts_on": "2026-10-01", "ends_on": "2027-09-30",
                                                                  "committed": 1200, "spent": 0}}),
]
BAD: list[tuple[str, dict[str, Any]]] = [
    ("usage.events", {"event_id": "e1", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00", "type": "voice",
                      "direction": "out", "minutes": 3, "charge": -1}),  # negative charge
    ("usage.events", {"event_id": "e1", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00", "type": "sms",
                      "direction": "out", "minutes": 3, "charge": 0.1}),  # minutes on an sms
    ("usage.events", {"event_id": "e1", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00", "type": "voice",
                      "direction": "out", "minutes": 1440, "charge": 0.1}),  # a day's minutes
    ("usage.events", {"event_id": "e1", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00", "type": "data",
                      "mb": 5, "charge": "0.1"}),  # a number as a string
    ("usage.events", {"event_id": "e1", "msisdn": "13800000001", "ts": "2026-10-03 09:15", "type": "data",
                      "mb": 5, "charge": 0.1}),  # no offset
    ("billing.events", {"event_id": "e2", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00", "type": "fee",
                        "amount": 1e9}),  # money bound
    ("billing.events", {"event_id": "e2", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00",
                        "type": "balance"}),  # balance without balance
    ("subscriber.profiles", {"msisdn": "13800000001", "region": "zunyi"}),  # no brand
    ("lifecycle.events", {"event_id": "e4", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00",
                          "type": "vas_trial_ending"}),  # no service, no ends_on
    ("retention.outcomes", {"task_id": "t", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00",
                            "channel": "email", "status": "reached"}),
]


@pytest.mark.parametrize("topic,doc", GOOD)
def test_contract_inputs_are_accepted(topic: str, doc: dict[str, Any]) -> None:
    assert errors(topic, doc) == []


@pytest.mark.parametrize("topic,doc", BAD)
def test_what_the_contract_calls_bad_input_is_refused(topic: str, doc: dict[str, Any]) -> None:
    assert errors(topic, doc)


def test_the_closed_vocabularies_match_the_code() -> None:
    for channel in ("callcentre", "sms"):
        assert set(KINDS) <= set(schema(f"retention.tasks.{channel}")["properties"]["kind"]["enum"])
    assert set(ERRORS) == set(schema("churn.deadletter")["properties"]["error"]["enum"])


# CONTRACT §2, written out: a change there must be a deliberate change here.
LIGHT_FIELDS = {"msisdn", "light", "previous", "at", "arpu", "mou", "reasons", "region", "brand", "rule_set"}
TASK_FIELDS = {"task_id", "msisdn", "channel", "kind", "priority", "light", "previous_light", "reasons", "offer",
               "region", "brand", "segment", "created_at", "due_by", "rule_set"}
SMS_FIELDS = {"send_after", "template", "vars"}
SCORED_FIELDS = {"risk", "risk_reasons"}


def test_the_contract_fields_are_in_the_output_schemas() -> None:
    assert set(schema("churn.lights")["required"]) == LIGHT_FIELDS
    callcentre, sms = schema("retention.tasks.callcentre"), schema("retention.tasks.sms")
    assert set(callcentre["required"]) == TASK_FIELDS
    assert set(sms["required"]) == TASK_FIELDS | SMS_FIELDS
    assert set(callcentre["properties"]) == TASK_FIELDS | SCORED_FIELDS
    assert set(sms["properties"]) == TASK_FIELDS | SMS_FIELDS | SCORED_FIELDS


def test_the_worker_publishes_what_the_schemas_say(worker: WorkerProc, settings: Settings,
                                                    redis_client: redis_lib.Redis) -> None:
    part1, part2 = st.history(settings.partitions)
    records = [(topic, value["msisdn"].encode(), orjson.dumps(value)) for topic, value in part1 + part2]
    produce(settings, records)
    worker.start()
    wait_for(lambda: worker.metric("churnlight_events_total") >= len(records), timeout_s=120, what="all events")
    published = 0
    for topic in ("churn.lights", "retention.tasks.callcentre", "retention.tasks.sms"):
        messages = consume_all(settings, topic)
        assert messages, topic
        for msg in messages:
            doc = orjson.loads(msg.value())
            assert errors(topic, doc) == [], (topic, doc)
            if topic.startswith("retention.tasks."):
                headers = dict(msg.headers() or [])
                assert headers["ce_dataschema"].decode() == schema(topic)["$id"]
            published += 1
    assert published >= len(st.EXPECTED_ISSUED)
