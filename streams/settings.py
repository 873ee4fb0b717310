"""The one settings object (CONTRACT §7), read once at start-up."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_HOSTPORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}$")


# Settings whose value may hold a credential (a bootstrap list or URL with user:password, a salt).
SECRET_SETTINGS: Final = frozenset({"kafka", "kafka_user", "kafka_password", "redis", "holdout_salt", "api_token"})


class SettingsError(ValueError):
    """An invalid setting; the message names the variable and what is accepted."""


class Settings(BaseSettings):
    # The docstring under a field is its description: `churnlight --help` lists them (settings_help).
    model_config = SettingsConfigDict(
        env_prefix="CHURNLIGHT_", env_file=".env", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    kafka: str | None = Field(None, description="bootstrap servers host:port[,host:port]; unset: start the embedded broker")
    kafka_security: Literal["plaintext", "sasl_ssl"] = "plaintext"
    """plaintext, or sasl_ssl with KAFKA_USER, KAFKA_PASSWORD (and KAFKA_CA)"""
    kafka_user: str | None = None
    """SASL user name (sasl_ssl)"""
    kafka_password: SecretStr | None = None
    """SASL password (sasl_ssl)"""
    kafka_ca: Path | None = None
    """CA certificate file of the broker's TLS (sasl_ssl)"""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """SASL mechanism (sasl_ssl)"""
    # A Redis URL may carry a password: keep it out of logs and reprs.
    redis: SecretStr | None = None
    """redis:// or rediss:// URL (a password as redis://:PASSWORD@host:port/db); unset: start the embedded Redis"""
    topic_prefix: str = ""
    """prefix for every topic"""
    partitions: int = Field(8, ge=1, le=1024)
    """partitions of the topics the system creates"""
    rules: str = "cmcc-2010"
    """a rule-set name under rules/ or a path to a rule file"""
    tz: str = "Asia/Shanghai"
    """operator time zone (IANA)"""
    holdout_salt: str = "churnlight"
    """hold-out group hash salt"""
    web_port: int = Field(6066, ge=1, le=65535)
    """HTTP port of the worker"""
    # The host name other workers use to reach this one's HTTP routes (table routing).
    web_host: str = Field(default_factory=socket.gethostname)
    """the name other workers use to reach this one (default: the host name)"""
    data_dir: Path = Path("./churnlight-data")
    """Faust's files and the embedded services' files"""
    # Access (CONTRACT §4): the worker's /subscribers and the console need a bearer token or a user
    # of the users file (lines `name role hash`, roles `manager` / `supervisor`; streams.auth).
    api_token: SecretStr | None = None
    """bearer token for /subscribers and the console (at least 16 characters; a supervisor)"""
    users_file: Path | None = None
    """users file for /subscribers and the console: `name role scrypt-hash` a line"""
    # Where the worker's and the console's HTTP servers listen: loopback for the embedded stack;
    # 0.0.0.0 in containers (docker-compose.yml), where other hosts must reach them.
    bind: str = "127.0.0.1"
    """address the worker's and the console's HTTP servers listen on"""
    # The console: its port, and the workers it asks (comma-separated base URLs; unset = this
    # host's worker on CHURNLIGHT_WEB_PORT).
    console_port: int = Field(6070, ge=1, le=65535)
    """HTTP port of the console"""
    workers: str | None = None
    """base URLs of the workers the console asks, comma-separated (default: this host's worker)"""
    # Not in the contract: operational knobs with defaults that work on the embedded broker.
    app_id: str = "churnlight"
    """Faust application id (consumer group, changelog topic name)"""
    session_timeout_s: float = Field(6.0, gt=0)
    """consumer-group session timeout, seconds"""
    rebalance_timeout_s: float = Field(3.0, gt=0)
    """consumer-group rebalance timeout, seconds"""
    # Static group membership (KIP-345): a worker restarted with the same id takes its member back
    # without waiting for its session timeout. Off by default: through Faust (whose member metadata
    # carries the last assignment) a restart still rebalances the group, and on the embedded Tansu
    # that made a restart in a group of two slower, not faster (README, Settings).
    instance_id: str | None = None
    """static group membership: this worker's own, stable id (e.g. a StatefulSet pod name); unset: off"""
    batch_max: int = Field(2000, ge=1)
    """records per batch at most"""
    batch_within_s: float = Field(0.05, gt=0)
    """seconds a batch waits to fill"""
    # How often the touched state goes to the changelog (each batch's outputs are acknowledged
    # before the next batch either way): a subscriber touched several times in between is written
    # once, and a crash re-reads at most this much. 3 s (quixstreams commits every 5 s, Kafka
    # Streams every 30 s): a sixth fewer changelog records than 2 s in the benchmark.
    commit_interval_s: float = Field(3.0, ge=0)
    """seconds between writes of the touched state to the changelog"""
    # The others are held serialised (about 200 bytes each) and decoded when an event touches
    # them (streams.runtime.states). A decoded one costs about 1 KiB more: the default (~120 MiB)
    # keeps the benchmark's default base (100k) decoded, and 1M subscribers under 0.5 KiB each.
    hot_states: int = Field(125_000, ge=1)
    """subscriber states a worker keeps decoded (the rest stay serialised, decoded when touched)"""
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    """debug, info, warn or error"""
    log_format: Literal["text", "json"] = "text"
    """text, or json: one JSON object a line (ts, level, logger, msg)"""
    # Tests only: `point[:n]` kills the worker (SIGKILL) the n-th time (default 1st) it reaches a
    # crash point (streams.faults.POINTS). Unset in production.
    fault: str | None = None
    """tests only: point[:n] kills the worker at a crash point (streams.faults); unset in production"""

    @field_validator("kafka")
    @classmethod
    def _bootstrap(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        for part in value.split(","):
            if not _HOSTPORT.match(part.strip()):
                raise ValueError("expected host:port[,host:port]")
        return value

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected an IANA time zone such as Asia/Shanghai") from None
        return value

    @field_validator("redis")
    @classmethod
    def _redis(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis:// or rediss:// URL")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9._\-]+$", value):
            raise ValueError("expected letters, digits, '.', '_' or '-'")
        return value

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^[A-Za-z0-9._\-]{1,200}$", value):
            raise ValueError("expected 1-200 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("api_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < 16:
            raise ValueError("expected a token of at least 16 characters")
        return value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: str | None) -> str | None:
        if not value:
            return None
        for part in value.split(","):
            if not re.match(r"^https?://[A-Za-z0-9_.\-\[\]:]+/?$", part.strip()):
                raise ValueError("expected http://host:port[,http://host:port]")
        return value

    @property
    def worker_urls(self) -> list[str]:
        """Return the base URLs of the workers the console asks."""
        if self.workers is None:
            return [f"http://127.0.0.1:{self.web_port}"]
        return [part.strip().rstrip("/") for part in self.workers.split(",")]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def topic(self, base: str) -> str:
        """Return the full name of topic `base` with the configured prefix."""
        return f"{self.topic_prefix}{base}"

    def worker_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Return `base` (default: this process's environment) without CHURNLIGHT_* variables, plus
        the CHURNLIGHT_* variables that make a `churnlight worker` subprocess run with these settings."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("CHURNLIGHT_")}
        for name, value in self.model_dump().items():
            if value is not None:
                env[f"CHURNLIGHT_{name.upper()}"] = (
                    value.get_secret_value() if isinstance(value, SecretStr) else str(value))
        return env

    def check_security(self) -> None:
        if self.kafka_security == "sasl_ssl" and not (self.kafka_user and self.kafka_password):
            raise SettingsError(
                "CHURNLIGHT_KAFKA_SECURITY=sasl_ssl needs CHURNLIGHT_KAFKA_USER and CHURNLIGHT_KAFKA_PASSWORD"
            )


def settings_help() -> str:
    """Return the CHURNLIGHT_* variables with their defaults and meanings, one a line."""
    rows = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = ""
        elif field.default is None:
            default = ""  # the description says what unset means
        else:
            default = str(field.default) if field.default != "" else "empty"
        rows.append((f"CHURNLIGHT_{name.upper()}", default, field.description or ""))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{var:<{width}}  {meaning}" + (f" [{default}]" if default else "")
                     for var, default, meaning in rows)


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (and .env); raise SettingsError naming the variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = "_".join(str(p) for p in err["loc"])
            name = "CHURNLIGHT_" + field.upper()
            msg = err["msg"].removeprefix("Value error, ")
            # A value that may carry a credential is never echoed, not even a wrong one.
            lines.append(f"{name}: {msg}" if field in SECRET_SETTINGS else f"{name}: {msg} (got {err.get('input')!r})")
        raise SettingsError("invalid settings: " + "; ".join(lines)) from None
    settings.check_security()
    return settings
