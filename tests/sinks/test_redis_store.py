"""Tests for sinks.redis_store: the policy store against a real Redis (the session's embedded one)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
import redis as redis_lib

from rules.policy import Decision, in_holdout
from rules.task_message import Task, task_id
from rules.vocabulary import Channel, Kind
from sinks.redis_store import (
    CLAIM_TTL_S,
    FEED,
    Lookup,
    PolicyStore,
    Recorded,
    contact_key,
    decision_key,
    parse_contact_ms,
    task_key,
)
from sinks.retry import Stopped
from streams.embedded import free_port
from streams.settings import Settings

TZ = ZoneInfo("Asia/Shanghai")
SALT = "churnlight"
DAY_S = 24 * 3600


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    """Return epoch ms of a Shanghai wall time."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=TZ).timestamp()) * 1000


def outside_holdout(start: int) -> str:
    n = start
    while in_holdout(str(n), SALT, 500):
        n += 1
    return str(n)


MSISDN = outside_holdout(13800000001)
NOON = at(2026, 10, 3, 12)
CHANNEL: dict[Kind, Channel] = {
    "red_light": "callcentre",
    "yellow_light": "sms",
    "black_light": "callcentre",
    "contract_expiry": "callcentre",
    "balance_low": "sms",
    "birthday": "sms",
    "vas_trial": "sms",
    "port_out": "callcentre",
}


def make_task(kind: Kind = "red_light", *, msisdn: str = MSISDN, created_at_ms: int = NOON, period: str = "2026-10-03") -> Task:
    channel = CHANNEL[kind]
    sms = channel == "sms"
    light_task = kind.endswith("_light")
    return Task(
        task_id=task_id(msisdn, kind, period),
        msisdn=msisdn,
        channel=channel,
        kind=kind,
        priority="high" if kind == "red_light" else "normal",
        light=("red" if kind == "red_light" else "yellow" if kind == "yellow_light" else "black") if light_task else None,
        previous_light="green" if light_task else None,
        reasons=(),
        offer=None,
        region="zunyi",
        brand="gotone",
        segment="high",
        created_at_ms=created_at_ms,
        due_by_ms=created_at_ms + DAY_S * 1000,
        send_after_ms=None,
        rule_set="cmcc-2010",
        template=f"{kind}.v1" if sms else None,
        vars=() if sms else None,
    )


@pytest.fixture
async def store(settings: Settings, redis_client: redis_lib.Redis) -> AsyncIterator[PolicyStore]:
    assert settings.redis is not None
    s = PolicyStore.from_url(settings.redis.get_secret_value(), tz=TZ)
    yield s
    await s.aclose()


# -- lookup ------------------------------------------------------------------------------------


async def test_lookup_reads_consent_sets_and_contact(store: PolicyStore, redis_client: redis_lib.Redis) -> None:
    assert await store.lookup(MSISDN, "sms") == Lookup(False, False, None)
    redis_client.sadd("churnlight:optout:sms", MSISDN)
    redis_client.hset(contact_key(MSISDN), mapping={"sms": "2026-10-01T09:15:00+08:00", "callcentre": "junk"})
    assert await store.lookup(MSISDN, "sms") == Lookup(True, False, at(2026, 10, 1, 9, 15))
    redis_client.sadd("churnlight:dnc", MSISDN)
    # An unreadable contact time is no contact (and logged), not a guess.
    assert await store.lookup(MSISDN, "callcentre") == Lookup(True, True, None)
    # Other subscribers are untouched.
    assert await store.lookup("13900000009", "sms") == Lookup(False, False, None)


async def test_lookup_with_task_id_reads_claim_and_decision(store: PolicyStore) -> None:
    task = make_task()
    look = await store.lookup(MSISDN, "callcentre", task_id=task.task_id)
    assert (look.published, look.decided) == (None, None)
    await store.claim(task.task_id)
    assert (await store.lookup(MSISDN, "callcentre", task_id=task.task_id)).published == "pending"
    await store.mark_sent(task.task_id)
    await store.record_decision(Decision(task, "issued", None))
    look = await store.lookup(MSISDN, "callcentre", task_id=task.task_id)
    assert (look.published, look.decided) == ("sent", Recorded("issued", None))
    other = make_task("yellow_light")
    await store.record_decision(Decision(other, "suppressed", "opt_out"))
    look = await store.lookup(MSISDN, "sms", task_id=other.task_id)
    assert (look.published, look.decided) == (None, Recorded("suppressed", "opt_out"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-10-03T09:15:00+08:00", at(2026, 10, 3, 9, 15)),
        ("2026-10-03T01:15:00Z", at(2026, 10, 3, 9, 15)),
        ("2026-10-03T01:15:00z", at(2026, 10, 3, 9, 15)),
        ("2026-10-03 09:15:00+0800", at(2026, 10, 3, 9, 15)),
        ("2026-10-03T09:15:00.250+08:00", at(2026, 10, 3, 9, 15) + 250),
        ("2026-10-03T09:15:00", at(2026, 10, 3, 9, 15)),  # no offset: operator-local
        ("2026-10-03", at(2026, 10, 3)),
        (b" 2026-10-03T09:15:00+08:00 ", at(2026, 10, 3, 9, 15)),
        (str(at(2026, 10, 3, 9, 15)), at(2026, 10, 3, 9, 15)),  # epoch ms
        (str(at(2026, 10, 3, 9, 15) // 1000), at(2026, 10, 3, 9, 15)),  # epoch s
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_contact_ms_is_lenient(raw: str | bytes | None, expected: int | None) -> None:
    assert parse_contact_ms(raw, TZ) == expected


# -- contact history ---------------------------------------------------------------------------


async def test_contact_history_never_moves_back(store: PolicyStore, redis_client: redis_lib.Redis) -> None:
    key = contact_key(MSISDN)
    assert await store.record_contact(MSISDN, "sms", at(2026, 10, 3, 12)) is True
    assert redis_client.hget(key, "sms") == b"2026-10-03T12:00:00+08:00"
    # A replay of an older task leaves the later contact alone; an equal one changes nothing.
    assert await store.record_contact(MSISDN, "sms", at(2026, 10, 1, 12)) is False
    assert await store.record_contact(MSISDN, "sms", at(2026, 10, 3, 12)) is False
    assert redis_client.hget(key, "sms") == b"2026-10-03T12:00:00+08:00"
    assert await store.record_contact(MSISDN, "sms", at(2026, 10, 5, 8)) is True
    assert redis_client.hget(key, "sms") == b"2026-10-05T08:00:00+08:00"
    # Channels are independent fields of one hash.
    assert await store.record_contact(MSISDN, "callcentre", at(2026, 9, 1)) is True
    assert redis_client.hgetall(key) == {b"sms": b"2026-10-05T08:00:00+08:00", b"callcentre": b"2026-09-01T00:00:00+08:00"}


async def test_contact_written_by_another_system_is_compared_leniently(
    store: PolicyStore, redis_client: redis_lib.Redis
) -> None:
    key = contact_key(MSISDN)
    redis_client.hset(key, mapping={"sms": "2026-10-04T00:00:00Z", "callcentre": "not a time", "email": "x"})
    # 2026-10-04T00:00Z is 08:00 local: later than 07:00 local, earlier than 09:00 local.
    assert await store.record_contact(MSISDN, "sms", at(2026, 10, 4, 7)) is False
    assert redis_client.hget(key, "sms") == b"2026-10-04T00:00:00Z"
    assert await store.record_contact(MSISDN, "sms", at(2026, 10, 4, 9)) is True
    assert redis_client.hget(key, "sms") == b"2026-10-04T09:00:00+08:00"
    # An unreadable value is replaced by a readable one; fields of other systems stay.
    assert await store.record_contact(MSISDN, "callcentre", at(2026, 10, 4, 9)) is True
    assert redis_client.hget(key, "callcentre") == b"2026-10-04T09:00:00+08:00"
    assert redis_client.hget(key, "email") == b"x"


# -- claims ------------------------------------------------------------------------------------


async def test_claim_states_and_ttl(store: PolicyStore, redis_client: redis_lib.Redis) -> None:
    tid = make_task().task_id
    assert await store.claim(tid) == "new"
    assert redis_client.get(task_key(tid)) == b"pending"
    ttl = redis_client.ttl(task_key(tid))
    assert CLAIM_TTL_S - 60 < ttl <= CLAIM_TTL_S
    assert await store.claim(tid) == "pending"  # a previous attempt may have crashed: send again
    redis_client.expire(task_key(tid), 1000)
    await store.mark_sent(tid)
    assert redis_client.get(task_key(tid)) == b"sent"
    assert 0 < redis_client.ttl(task_key(tid)) <= 1000  # the claim's expiry is kept
    assert await store.claim(tid) == "sent"
    assert await store.claim(tid) == "sent"


async def test_mark_sent_without_claim_still_expires(store: PolicyStore, redis_client: redis_lib.Redis) -> None:
    tid = make_task().task_id
    await store.mark_sent(tid)
    assert redis_client.get(task_key(tid)) == b"sent"
    assert CLAIM_TTL_S - 60 < redis_client.ttl(task_key(tid)) <= CLAIM_TTL_S


# -- feed --------------------------------------------------------------------------------------


def feed(redis_client: redis_lib.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in redis_client.xrange(FEED)]


async def test_record_decision_adds_one_feed_entry_per_task(store: PolicyStore, redis_client: redis_lib.Redis) -> None:
    issued = make_task("red_light")
    suppressed = make_task("yellow_light")
    assert await store.record_decision(Decision(issued, "issued", None)) is True
    assert await store.record_decision(Decision(suppressed, "suppressed", "opt_out")) is True
    # A replay, even one that now decides differently, adds nothing.
    assert await store.record_decision(Decision(issued, "issued", None)) is False
    assert await store.record_decision(Decision(issued, "suppressed", "cooldown")) is False
    assert await store.record_decision(Decision(suppressed, "suppressed", "opt_out")) is False
    entries = feed(redis_client)
    assert len(entries) == 2
    assert {k: v for k, v in entries[0].items() if k != "task"} == {
        "task_id": issued.task_id, "msisdn": MSISDN, "region": "zunyi", "channel": "callcentre",
        "kind": "red_light", "priority": "high", "light": "red", "status": "issued", "reason": "",
    }
    assert orjson.loads(entries[0]["task"]) == issued.to_message(TZ)
    assert (entries[1]["status"], entries[1]["reason"], entries[1]["channel"]) == ("suppressed", "opt_out", "sms")
    assert orjson.loads(entries[1]["task"]) == suppressed.to_message(TZ)
    assert list(entries[0]) == ["task_id", "msisdn", "region", "channel", "kind", "priority", "light",
                                "status", "reason", "task"]
    assert 0 < redis_client.ttl(decision_key(issued.task_id)) <= CLAIM_TTL_S


async def test_non_light_task_has_empty_light_in_feed(store: PolicyStore, redis_client: redis_lib.Redis) -> None:
    await store.record_decision(Decision(make_task("balance_low"), "issued", None), b'{"as":"published"}')
    [entry] = feed(redis_client)
    assert (entry["light"], entry["kind"], entry["task"]) == ("", "balance_low", '{"as":"published"}')


async def test_feed_is_bounded(settings: Settings, redis_client: redis_lib.Redis) -> None:
    assert settings.redis is not None
    store = PolicyStore.from_url(settings.redis.get_secret_value(), tz=TZ, feed_maxlen=50)
    try:
        for n in range(600):
            task = make_task("balance_low", period=f"p{n}")
            assert await store.record_decision(Decision(task, "issued", None))
    finally:
        await store.aclose()
    # MAXLEN ~ trims whole stream nodes (stream-node-max-entries, 100 by default): never below
    # the bound, and never a node's worth above it.
    assert 50 <= redis_client.xlen(FEED) <= 50 + 100


# -- outage ------------------------------------------------------------------------------------


async def test_calls_wait_out_an_outage_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sinks")
    port = free_port()  # nothing listens there
    store = PolicyStore.from_url(f"redis://:s3cret-pw@127.0.0.1:{port}/0", tz=TZ)
    try:
        call = asyncio.create_task(store.lookup(MSISDN, "sms"))
        for _ in range(200):
            if store.degraded:
                break
            await asyncio.sleep(0.05)
        assert store.degraded
        await asyncio.sleep(0.5)  # a few more failed attempts
        assert not call.done()
        store.stop()
        with pytest.raises(Stopped):
            await call
    finally:
        await store.aclose()
    warnings = [r for r in caplog.records if r.name.startswith("sinks") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
    assert f"127.0.0.1:{port}/0" in warnings[0].getMessage()
    assert "s3cret-pw" not in caplog.text and "s3cret-pw" not in repr(store)
    assert MSISDN not in caplog.text and "138****" in caplog.text
