"""Check that the broker and Redis answer before a command starts; say which setting to fix if not.

Every command that needs Kafka or Redis goes through `check()` once its addresses are resolved, so
an unreachable, refusing or misconfigured server ends in one line that names the setting, the
address (never credentials) and what failed, instead of librdkafka's retry log and a traceback.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import Any, Final
from urllib.parse import urlsplit

from streams.settings import Settings

log = logging.getLogger(__name__)
rdkafka_log = logging.getLogger("churnlight.rdkafka")

# Within the 15 s a user waits: librdkafka gives up on a refused address in well under this, and a
# black-holed one (no answer at all) is reported when this runs out.
KAFKA_TIMEOUT_S: Final = 8.0
REDIS_TIMEOUT_S: Final = 4.0


class Unreachable(RuntimeError):
    """A server named by a setting cannot be used; the message is one line that says what to fix."""


class RdkafkaLog:
    """Hand librdkafka's own log lines to the Python log at debug level (confluent-kafka `logger`).

    librdkafka logs every failed connection attempt at error level (`%3|...|FAIL|`); the command
    reports the failure once in its own words, so its retries belong in the debug log only.
    """

    def log(self, level: int, fmt: str, *args: Any) -> None:
        rdkafka_log.debug(fmt, *args)


RDKAFKA_LOG: Final = RdkafkaLog()


def redis_address(url: str) -> str:
    """Return `url` without user and password: scheme://host:port/db."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{parts.scheme}://{host}:{port}{parts.path}"


def check(settings: Settings, *, kafka: bool = True, redis: bool = True) -> None:
    """Raise Unreachable, naming the setting, unless the configured broker and Redis answer."""
    if kafka and settings.kafka is not None:
        check_kafka(settings)
    if redis and settings.redis is not None:
        check_redis(settings.redis.get_secret_value())


def check_kafka(settings: Settings, *, timeout_s: float = KAFKA_TIMEOUT_S) -> None:
    """Raise Unreachable unless the bootstrap servers answer a metadata request."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    from streams.topics import client_config

    errors: list[KafkaError] = []
    lines = _Collect()
    conf = client_config(settings)
    # A listener that never answers the TLS handshake (a plaintext one) is told within 3 s.
    conf.update({"error_cb": errors.append, "logger": lines, "socket.connection.setup.timeout.ms": 2500})
    where = f"CHURNLIGHT_KAFKA={settings.kafka}"
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:
        raise Unreachable(f"{_kafka_config_setting(str(exc))}: the Kafka client refused its configuration: "
                          f"{exc.args[0].str() if exc.args else exc}") from None
    # Ask in short rounds: librdkafka reports why it failed (refused, TLS, SASL) through error_cb,
    # which runs only when the client is polled, and a definite answer needs no full timeout.
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while True:
        try:
            admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            first = exc.args[0] if exc.args else None
            if isinstance(first, KafkaError) and first.code() not in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
                errors.append(first)
        admin.poll(0)
        problem = _kafka_problem(settings, [e.str() for e in errors] + lines.lines, {e.code() for e in errors})
        # A definite failure still there after 1.5 s (several attempts): not a broker just restarting.
        if problem is not None and time.monotonic() - started >= 1.5:
            raise Unreachable(problem)
        if time.monotonic() >= deadline:
            raise Unreachable(problem or f"{where}: no answer from the broker within {timeout_s:.0f} s")


class _Collect(RdkafkaLog):
    """Keep librdkafka's log lines of a check (they say in which state a connection failed)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, level: int, fmt: str, *args: Any) -> None:
        super().log(level, fmt, *args)
        self.lines.append(fmt % args if args else fmt)


def _kafka_problem(settings: Settings, texts: list[str], codes: set[int]) -> str | None:
    """Return the one-line reason librdkafka's errors and log give, or None while they say nothing definite."""
    from confluent_kafka import KafkaError

    where = f"CHURNLIGHT_KAFKA={settings.kafka}"
    # The most telling error first: TLS and authentication say more than "all brokers down".
    text = " ".join(texts)
    if KafkaError._AUTHENTICATION in codes or "SASL authentication" in text:
        return (f"CHURNLIGHT_KAFKA_USER / CHURNLIGHT_KAFKA_PASSWORD: the broker at {settings.kafka} "
                f"refused the credentials ({settings.kafka_sasl_mechanism})")
    if KafkaError._SSL in codes or "SSL" in text:
        if any(hint in text for hint in ("PLAINTEXT", "Disconnected", "wrong version", "state SSL_HANDSHAKE")):
            return (f"CHURNLIGHT_KAFKA_SECURITY={settings.kafka_security}: the broker at {settings.kafka} "
                    "did not answer TLS (a plaintext listener? then CHURNLIGHT_KAFKA_SECURITY=plaintext)")
        return (f"CHURNLIGHT_KAFKA_CA: TLS with the broker at {settings.kafka} failed "
                "(certificate not trusted or not the broker's name)")
    if KafkaError._RESOLVE in codes or "resolve" in text:
        return f"{where}: host name not found"
    if "Connection refused" in text:
        return f"{where}: cannot reach the broker: connection refused"
    if settings.kafka_security == "plaintext" and "Disconnected" in text:
        return (f"{where}: the broker closed the connection (a TLS or SASL listener? "
                "then set CHURNLIGHT_KAFKA_SECURITY=sasl_ssl)")
    return None


def _kafka_config_setting(text: str) -> str:
    return "CHURNLIGHT_KAFKA_CA" if "ssl.ca" in text else "CHURNLIGHT_KAFKA_SECURITY"


def check_redis(url: str, *, timeout_s: float = REDIS_TIMEOUT_S) -> None:
    """Raise Unreachable unless Redis at `url` answers PING."""
    import redis as redis_lib

    where = f"CHURNLIGHT_REDIS={redis_address(url)}"
    client = redis_lib.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except (redis_lib.AuthenticationError, redis_lib.ResponseError) as exc:
        if not isinstance(exc, redis_lib.AuthenticationError) and "auth" not in str(exc).lower():
            raise Unreachable(f"{where}: Redis answered with an error: {str(exc)[:80]}") from None
        what = "refused the password" if urlsplit(url).password else "wants a password"
        raise Unreachable(f"{where}: Redis {what} (set it in the URL: redis://:PASSWORD@host:port/db)") from None
    except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError) as exc:
        raise Unreachable(f"{where}: cannot reach Redis: {_redis_reason(exc)}") from None
    finally:
        client.close()


def _redis_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    for e in (cause, exc):
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "host name not found"
        if isinstance(e, ssl.SSLError):
            return "TLS handshake failed (a plaintext server? then use redis://)"
        if isinstance(e, (TimeoutError, socket.timeout)):
            return "no answer in time"
    text = str(exc)
    if "refused" in text:
        return "connection refused"
    if "Timeout" in text or "timed out" in text:
        return "no answer in time"
    if "SSL" in text or "ssl" in text:
        return "TLS handshake failed (a plaintext server? then use redis://)"
    if "Name or service not known" in text or "nodename" in text:
        return "host name not found"
    return "the connection failed"
