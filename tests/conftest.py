"""Shared fixtures: one embedded broker and Redis per session; tests isolate by prefix and Redis db."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib
from confluent_kafka import Producer
from pydantic import SecretStr

from streams.embedded import EmbeddedStack, free_port
from streams.settings import Settings
from streams.tools.harness import WorkerProcess
from streams.tools.harness import worker_env as env_of  # the environment of a `churnlight` subprocess
from streams.tools.scrape import sample_sum as sample_sum  # tests import it from here
from streams.tools.topic_reader import read_topic
from streams.topics import changelog_topic

_redis_dbs = itertools.count(1)
# The workers' /subscribers needs it (CONTRACT §4); WorkerProc.get sends it.
API_TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(tmp_path_factory.mktemp("embedded")) as s:
        yield s


@pytest.fixture
def settings(stack: EmbeddedStack, tmp_path: Path) -> Settings:
    """Settings of an isolated tenant: its own topic prefix, Redis db and data dir."""
    assert stack.kafka and stack.redis
    db = next(_redis_dbs) % 16 or 1
    return Settings(
        kafka=stack.kafka,
        redis=SecretStr(stack.redis.rsplit("/", 1)[0] + f"/{db}"),
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        partitions=4,
        web_port=free_port(),
        web_host="127.0.0.1",
        data_dir=tmp_path / "data",
        api_token=SecretStr(API_TOKEN),
    )


class WorkerProc(WorkerProcess):
    """The tests' `churnlight worker`: started healthy within 90 s, asked with the API token."""

    def start(self, timeout_s: float = 90.0) -> WorkerProc:
        super().start(timeout_s)
        return self

    def get(self, path: str, *, token: str | None = API_TOKEN) -> tuple[int, Any]:
        """GET `path` of this worker, with the API token unless `token` is None; JSON decoded."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        got = self.request(path, headers)
        if got is None:
            raise AssertionError(f"{self.url}{path}: no answer")
        status, body, content_type = got
        if content_type == "application/json" or status >= 400:
            try:
                return status, orjson.loads(body)
            except orjson.JSONDecodeError:
                pass
        return status, body.decode()


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProc]:
    """A `churnlight worker` subprocess, not yet started."""
    w = WorkerProc(settings, tmp_path / "worker.log")
    yield w
    w.stop()


def produce(settings: Settings, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    """Produce (topic base name, key, value) records with murmur2 partitioning and wait for acks."""
    p = Producer({"bootstrap.servers": settings.kafka, "partitioner": "murmur2_random", "linger.ms": 5})
    errors: list[str] = []
    for topic, key, value in records:
        p.produce(settings.topic(topic), key=key, value=value,
                  on_delivery=lambda err, msg: errors.append(str(err)) if err else None)
    assert p.flush(30) == 0
    assert not errors, errors


def produce_json(settings: Settings, topic: str, value: dict[str, Any], key: str | None = None) -> None:
    produce(settings, [(topic, (key or value["msisdn"]).encode(), orjson.dumps(value))])


def consume(settings: Settings, topic: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    """Read `count` messages of `topic` (base name) from the beginning, or fail after `timeout_s`."""
    out = read_topic(settings, settings.topic(topic), count=count, timeout_s=timeout_s)
    assert len(out) >= count, f"got {len(out)} of {count} messages on {topic} within {timeout_s} s"
    return out


def wait_for(predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A Redis of the test's own, which it may stop and restart (an outage)."""
    with EmbeddedStack(tmp_path / "own", kafka=False) as stack:
        yield stack


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis_lib.Redis]:
    assert settings.redis is not None
    client = redis_lib.Redis.from_url(settings.redis.get_secret_value())
    client.flushdb()
    yield client
    client.flushdb()


def consume_all(settings: Settings, topic: str, idle_s: float = 3.0, timeout_s: float = 60.0,
                full_name: bool = False) -> list[Any]:
    """Read `topic` (base name) from the beginning to its end, with nothing new for `idle_s`."""
    return read_topic(settings, topic if full_name else settings.topic(topic), idle_s=idle_s, timeout_s=timeout_s)


def changelog_snapshot(settings: Settings) -> dict[tuple[int, bytes], bytes | None]:
    """Return the worker's state changelog as it stands: the last value of each key per partition."""
    return {(msg.partition(), msg.key()): msg.value()
            for msg in consume_all(settings, changelog_topic(settings), idle_s=1.0, full_name=True)}


def restore_changelog(settings: Settings, snapshot: dict[tuple[int, bytes], bytes | None]) -> None:
    """Put the changelog back to `snapshot`: its values again, tombstones for keys written since."""
    import asyncio

    from streams.runtime.changelog import ChangelogWriter

    writer = ChangelogWriter(settings, changelog_topic(settings))  # seals its partitions on flush
    for key in changelog_snapshot(settings).keys() | snapshot.keys():
        writer.write(key[0], key[1], snapshot.get(key))
    asyncio.run(writer.flush())
