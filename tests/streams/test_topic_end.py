"""Reading topic partitions from a start offset to their end (streams.runtime.topic_end), on the embedded broker."""

from __future__ import annotations

from confluent_kafka import Producer

from streams.runtime.topic_end import read_to_end
from streams.settings import Settings
from streams.topics import ensure_topics

LIGHTS = "churn.lights"


def _produce(settings: Settings, topic: str, partition: int, count: int) -> None:
    """Produce `count` records to one partition, in one record batch (linger), with a header each."""
    p = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 200})
    for i in range(count):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{partition}-{i}".encode(), partition=partition,
                  headers=[("n", str(i).encode())])
    assert p.flush(30) == 0


def test_reads_each_partition_from_its_start_to_its_end_in_order(settings: Settings) -> None:
    ensure_topics(settings)
    topic = settings.topic(LIGHTS)
    _produce(settings, topic, 0, 10)
    _produce(settings, topic, 1, 3)
    begun: dict[tuple[str, int], int] = {}
    # Partition 0 from offset 8: inside its last record batch, past the end Tansu reports for it.
    got = list(read_to_end(settings, {topic: None}, group_id="test-topic-end", starts={(topic, 0): 8},
                           begun=begun))
    assert [(r.partition, r.offset, r.key, r.value) for r in got if r.partition == 0] == [
        (0, 8, b"k8", b"v0-8"), (0, 9, b"k9", b"v0-9")]
    assert [r.offset for r in got if r.partition == 1] == [0, 1, 2]
    assert [r.headers for r in got if r.partition == 1] == [[("n", b"0")], [("n", b"1")], [("n", b"2")]]
    assert begun == {(topic, 0): 8, (topic, 1): 0, (topic, 2): 0, (topic, 3): 0}
    # Only the partitions asked for.
    assert [r.offset for r in read_to_end(settings, {topic: [1]}, group_id="test-topic-end")] == [0, 1, 2]


def test_a_missing_topic_has_no_records_and_a_cancelled_read_stops(settings: Settings) -> None:
    ensure_topics(settings)
    topic = settings.topic(LIGHTS)
    _produce(settings, topic, 2, 5)
    assert list(read_to_end(settings, {settings.topic("no.such.topic"): None}, group_id="test-topic-end")) == []
    assert list(read_to_end(settings, {topic: None}, group_id="test-topic-end", cancelled=lambda: True)) == []
    assert len(list(read_to_end(settings, {topic: None}, group_id="test-topic-end"))) == 5
