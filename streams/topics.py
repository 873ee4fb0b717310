"""Topic names and their creation (CONTRACT §1-2), and the Kafka client configuration."""

from __future__ import annotations

import logging
from typing import Any, Final

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from rules.events import INPUT_TOPICS
from streams.preflight import RDKAFKA_LOG
from streams.settings import Settings

log = logging.getLogger(__name__)

LIGHTS: Final = "churn.lights"
TASKS_CALLCENTRE: Final = "retention.tasks.callcentre"
TASKS_SMS: Final = "retention.tasks.sms"
DEADLETTER: Final = "churn.deadletter"
# Internal: the topic Faust's group assigns; its partition p goes with partition p of every input
# (co-partitioned), so its assignment says which partitions a worker owns. Nothing is written to it.
TICKS: Final = "churnlight.ticks"
OUTPUT_TOPICS: Final = (LIGHTS, TASKS_CALLCENTRE, TASKS_SMS, DEADLETTER)
TASK_TOPIC: Final = {"callcentre": TASKS_CALLCENTRE, "sms": TASKS_SMS}

WEEK_MS: Final = 7 * 24 * 3600 * 1000

# Explicit configs: Tansu applies no broker defaults of its own, and a real cluster's defaults vary.
TOPIC_CONFIGS: Final[dict[str, dict[str, str]]] = {
    "usage.events": {"cleanup.policy": "delete", "retention.ms": str(35 * 24 * 3600 * 1000)},
    "billing.events": {"cleanup.policy": "delete", "retention.ms": str(35 * 24 * 3600 * 1000)},
    "subscriber.profiles": {"cleanup.policy": "compact"},
    "lifecycle.events": {"cleanup.policy": "delete", "retention.ms": str(35 * 24 * 3600 * 1000)},
    "retention.outcomes": {"cleanup.policy": "delete", "retention.ms": str(35 * 24 * 3600 * 1000)},
    LIGHTS: {"cleanup.policy": "delete", "retention.ms": str(4 * WEEK_MS)},
    TASKS_CALLCENTRE: {"cleanup.policy": "delete", "retention.ms": str(4 * WEEK_MS)},
    TASKS_SMS: {"cleanup.policy": "delete", "retention.ms": str(4 * WEEK_MS)},
    DEADLETTER: {"cleanup.policy": "delete", "retention.ms": str(4 * WEEK_MS)},
    TICKS: {"cleanup.policy": "delete", "retention.ms": str(3600 * 1000)},
}


def changelog_topic(settings: Settings) -> str:
    """Return the state changelog's name (internal, compacted, co-partitioned with the inputs)."""
    return f"{settings.topic_prefix}{settings.app_id}-state-changelog"


CHANGELOG_CONFIG: Final = {"cleanup.policy": "compact"}


class StartupError(RuntimeError):
    """The worker refuses to start; the message says why and what to do."""


def client_config(settings: Settings) -> dict[str, Any]:
    """Return the confluent-kafka base configuration for `settings`."""
    # librdkafka's own log (every failed connection attempt at error level) goes to the debug log.
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka, "logger": RDKAFKA_LOG}
    if settings.kafka_security == "sasl_ssl":
        assert settings.kafka_password is not None
        conf.update({
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": settings.kafka_sasl_mechanism,
            "sasl.username": settings.kafka_user,
            "sasl.password": settings.kafka_password.get_secret_value(),
        })
        if settings.kafka_ca:
            conf["ssl.ca.location"] = str(settings.kafka_ca)
    return conf


def ensure_topics(settings: Settings, *, timeout_s: float = 15.0) -> None:
    """Create the contract's topics that are absent, then check the inputs are co-partitioned."""
    admin = AdminClient(client_config(settings))
    existing = admin.list_topics(timeout=timeout_s).topics
    wanted = (*INPUT_TOPICS, *OUTPUT_TOPICS, TICKS)
    # The internal ticks topic follows the inputs that exist already, so that it is co-partitioned.
    usage = existing.get(settings.topic(INPUT_TOPICS[0]))
    ticks_count = len(usage.partitions) if usage is not None else settings.partitions
    new = [
        NewTopic(settings.topic(base), ticks_count if base == TICKS else settings.partitions, 1,
                 config=TOPIC_CONFIGS[base])
        for base in wanted
        if settings.topic(base) not in existing
    ]
    if changelog_topic(settings) not in existing:
        new.append(NewTopic(changelog_topic(settings), ticks_count, 1, config=CHANGELOG_CONFIG))
    if new:
        for name, fut in admin.create_topics(new, operation_timeout=timeout_s).items():
            try:
                fut.result()
                log.info("created topic %s with %d partitions", name, settings.partitions)
            except Exception as exc:  # a concurrent worker may have created it first
                if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                    raise StartupError(f"cannot create topic {name}: {exc}") from exc
    check_copartitioned(admin, settings, timeout_s=timeout_s)


def partition_counts(admin: AdminClient, names: list[str], timeout_s: float = 15.0) -> dict[str, int]:
    topics = admin.list_topics(timeout=timeout_s).topics
    return {name: len(topics[name].partitions) for name in names if name in topics}


def check_copartitioned(admin: AdminClient, settings: Settings, *, timeout_s: float = 15.0) -> int:
    """Return the common partition count of the input topics, or refuse with a message naming them."""
    names = [*(settings.topic(base) for base in (*INPUT_TOPICS, TICKS)), changelog_topic(settings)]
    counts = partition_counts(admin, names, timeout_s)
    missing = [n for n in names if n not in counts]
    if missing:
        raise StartupError(f"input topics missing: {', '.join(missing)}")
    if len(set(counts.values())) != 1:
        listing = ", ".join(f"{name}={count}" for name, count in counts.items())
        raise StartupError(
            "input topics are not co-partitioned (every input topic needs the same partition count, "
            f"so that one worker owns all of a subscriber's events): {listing}"
        )
    return next(iter(counts.values()))
