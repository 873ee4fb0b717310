"""Shared fixtures: one embedded broker and Redis per session; tests isolate by prefix and Redis db."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib
import urllib.request
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pydantic import SecretStr

from streams.embedded import EmbeddedStack, free_port, stop_process
from streams.settings import Settings
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


def env_of(settings: Settings) -> dict[str, str]:
    return settings.worker_env()


@dataclass
class WorkerProc:
    settings: Settings
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    logs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self, timeout_s: float = 90.0) -> WorkerProc:
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], env=env_of(self.settings),
            stdout=logf, stderr=subprocess.STDOUT,
        )
        self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy after {timeout_s} s:\n{self.tail()}")

    def get(self, path: str, *, token: str | None = API_TOKEN) -> tuple[int, Any]:
        """GET `path` of this worker, with the API token unless `token` is None."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=headers), timeout=5) as resp:
                body = resp.read()
                return resp.status, orjson.loads(body) if resp.headers.get_content_type() == "application/json" else body.decode()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, orjson.loads(body)
            except orjson.JSONDecodeError:
                return exc.code, body.decode()

    def metric(self, name: str, **labels: str) -> float:
        """Return the sum of the samples of `name` whose labels include `labels`."""
        _, text = self.get("/metrics")
        return sample_sum(text, name, labels)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, 20)

    def tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join([line for line in text.splitlines() if "rdkafka" not in line][-lines:])


def sample_sum(text: str, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


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
    c = Consumer({
        "bootstrap.servers": settings.kafka, "group.id": f"test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    _assign_all(c, settings.topic(topic))
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(msg)
    finally:
        c.close()
    assert len(out) >= count, f"got {len(out)} of {count} messages on {topic} within {timeout_s} s"
    return out


def _assign_all(consumer: Consumer, topic: str) -> None:
    # Assign every partition from the beginning: no consumer-group join, which on Tansu waits
    # for the client's timeouts.
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])


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
    """Read `topic` (base name) from the beginning until nothing new arrives for `idle_s`."""
    c = Consumer({
        "bootstrap.servers": settings.kafka, "group.id": f"test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    _assign_all(c, topic if full_name else settings.topic(topic))
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            msg = c.poll(0.3)
            if msg is None or msg.error():
                continue
            out.append(msg)
            last = time.monotonic()
    finally:
        c.close()
    return out


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
