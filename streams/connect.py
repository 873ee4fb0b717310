"""What every command starts with: the settings, and the Kafka and Redis they name (or embedded ones)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
from rich.console import Console

from streams import preflight
from streams.embedded import EmbeddedStack
from streams.settings import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
    """Return the settings; an invalid one ends the command in one line (exit code 2)."""
    try:
        return load_settings()
    except SettingsError as exc:
        click.echo(f"churnlight: {exc}", err=True)
        raise SystemExit(2) from None


def fail(command: str, message: object, code: int = 1) -> NoReturn:
    """End `churnlight <command>` with `message` in red on stderr, in one line, and exit `code`."""
    Console(stderr=True).print(f"[red]churnlight {command}: {message}[/red]", soft_wrap=True)
    raise SystemExit(code)


@contextmanager
def connected(settings: Settings, *, kafka: bool = True, redis: bool = True) -> Iterator[Settings]:
    """Yield settings with Kafka and Redis resolved, starting embedded servers for what is unset."""
    need_kafka = kafka and settings.kafka is None
    need_redis = redis and settings.redis is None
    # The configured servers first, before anything embedded starts (and logs).
    preflight.check(settings, kafka=kafka, redis=redis)
    if not (need_kafka or need_redis):
        yield settings
        return
    stack = EmbeddedStack(settings.data_dir, kafka=need_kafka, redis=need_redis)
    try:
        stack.start()
        update: dict[str, object] = {}
        if need_kafka:
            update["kafka"] = stack.kafka
        if need_redis:
            from pydantic import SecretStr

            update["redis"] = SecretStr(stack.redis or "")
        yield settings.model_copy(update=update)
    finally:
        stack.stop()
