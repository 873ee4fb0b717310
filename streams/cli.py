"""The `churnlight` command line (CONTRACT §8)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console

from rules.ruleset import RuleSetError, load_rule_set
from streams import preflight
from streams.connect import connected, fail, settings_or_exit
from streams.logs import setup_logging
from streams.settings import settings_help
from streams.tools.commands import TOOLS
from streams.topics import StartupError

console = Console(stderr=True)
log = logging.getLogger("churnlight")

class _Main(click.Group):
    """The command group; a setting that points at nothing usable ends any command in one line."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (preflight.Unreachable, RuleSetError) as exc:
            # One plain line (click, not rich: rich wraps at 80 columns and reads [..] as markup).
            name = f" {ctx.invoked_subcommand}" if ctx.invoked_subcommand else ""
            click.echo(f"churnlight{name}: {exc}", err=True)
            raise SystemExit(2) from None


# "\b" keeps click from re-wrapping the table.
@click.group(cls=_Main, epilog="Settings (environment variables; a .env file may set them):\n\n\b\n" + settings_help())
@click.version_option(package_name="churnlight", prog_name="churnlight")
def main() -> None:
    """churnlight: churn early warning for mobile operators."""


@main.command()
def worker() -> None:
    """Run the processor against the configured (or embedded) Kafka and Redis."""
    settings = settings_or_exit()
    setup_logging(settings.log_level, settings.log_format)
    from streams.auth import UsersFileError
    from streams.worker import run_worker

    rules = load_rule_set(settings.rules)  # an unknown rule set fails before anything is started or created
    if rules.risk_model is not None:
        from rules.risk import RiskModelError, load_model

        try:
            load_model(rules.risk_model)  # so does a model file that cannot be used (one line naming it)
        except RiskModelError as exc:
            click.echo(f"churnlight worker: {settings.rules}: risk.model: {exc}", err=True)
            raise SystemExit(2) from None
    with connected(settings) as resolved:
        try:
            run_worker(resolved)
        except (StartupError, RuleSetError, UsersFileError) as exc:
            console.print(f"[red]churnlight worker: {exc}[/red]")
            raise SystemExit(1) from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print each task as its JSON message")
@click.option("--from-beginning", is_flag=True, help="start at the oldest task, not at new ones")
@click.option("--channel", type=click.Choice(["callcentre", "sms"]), multiple=True, help="only these channels")
@click.option("--max", "max_count", type=int, default=0, help="stop after this many tasks (0: run until Ctrl-C)")
@click.option("--unmask", is_flag=True, help="show msisdns in full (masked by default, for shared screens)")
def tail(as_json: bool, from_beginning: bool, channel: tuple[str, ...], max_count: int, unmask: bool) -> None:
    """Print retention tasks from the task topics as they arrive."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    from rules.events import mask
    from streams.topics import TASK_TOPIC, client_config

    settings = settings_or_exit()
    setup_logging("warn", settings.log_format)
    out = Console()
    with connected(settings, redis=False) as resolved:
        conf = client_config(resolved)
        conf.update({"group.id": "churnlight-tail", "enable.auto.commit": False})
        consumer = Consumer(conf)
        topics = [resolved.topic(TASK_TOPIC[c]) for c in (channel or ("callcentre", "sms"))]
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        # Assign every partition directly: a tail needs no group membership and starts at once.
        tps = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                console.print(f"[red]churnlight tail: topic {topic} does not exist (has a worker run?)[/red]")
                raise SystemExit(1)
            tps.extend(TopicPartition(topic, p, start) for p in meta.partitions)
        consumer.assign(tps)
        seen = 0
        try:
            while not max_count or seen < max_count:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                seen += 1
                if as_json:
                    click.echo(msg.value().decode())
                    continue
                try:
                    task = orjson.loads(msg.value())
                    who = task["msisdn"] if unmask else mask(task["msisdn"])
                    offer = (task.get("offer") or {}).get("code") or "-"
                    when = task.get("send_after") or task["created_at"]
                    out.print(f"{when}  [bold]{task['channel']:<10}[/bold] {task['priority']:<6} "
                              f"{task['kind']:<15} {who}  {task.get('region')}/{task.get('brand')}  "
                              f"light {task.get('previous_light') or '-'}->{task.get('light') or '-'}  offer {offer}")
                except (ValueError, KeyError, TypeError):
                    out.print(f"[yellow]unreadable task at {msg.topic()}/{msg.partition()}/{msg.offset()}[/yellow]")
        except KeyboardInterrupt:
            pass
        finally:
            consumer.close()


@main.group()
def consent() -> None:
    """Add or remove msisdns in the opt-out / do-not-call sets."""


def _numbers(numbers: tuple[str, ...], file: Path | None) -> list[str]:
    found = list(numbers)
    if file is not None:
        found.extend(line.strip() for line in file.read_text().splitlines() if line.strip() and not line.startswith("#"))
    if not found:
        raise click.UsageError("give msisdns as arguments or with --file")
    return found


SET_CHOICE = click.Choice(["sms-optout", "dnc"])


def _set_and_numbers(command: Callable[..., None]) -> Callable[..., None]:
    """Take WHICH set and the msisdns, as arguments or a --file (consent add and remove)."""
    command = click.option("--file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                           help="one msisdn a line")(command)
    command = click.argument("numbers", nargs=-1)(command)
    return click.argument("which", type=SET_CHOICE)(command)


@consent.command("add")
@_set_and_numbers
def consent_add(which: str, numbers: tuple[str, ...], file: Path | None) -> None:
    """Add msisdns to WHICH set (sms-optout: no SMS; dnc: no call)."""
    _consent("add", which, _numbers(numbers, file))


@consent.command("remove")
@_set_and_numbers
def consent_remove(which: str, numbers: tuple[str, ...], file: Path | None) -> None:
    """Remove msisdns from WHICH set."""
    _consent("remove", which, _numbers(numbers, file))


@consent.command("list")
@click.argument("which", type=SET_CHOICE)
def consent_list(which: str) -> None:
    """Print the members of WHICH set, one a line."""
    _consent("list", which, [])


def _consent(action: str, which: str, numbers: list[str]) -> None:
    import redis as redis_lib

    from sinks import consent as store

    settings = settings_or_exit()
    setup_logging("warn", settings.log_format)
    with connected(settings, kafka=False) as resolved:
        assert resolved.redis is not None
        client = redis_lib.Redis.from_url(resolved.redis.get_secret_value())
        try:
            if action == "list":
                for number in store.members(client, which):  # type: ignore[arg-type]
                    click.echo(number)
                return
            fn = store.add if action == "add" else store.remove
            changed = fn(client, which, numbers)  # type: ignore[arg-type]
        except store.InvalidMsisdn as exc:
            console.print(f"[red]churnlight consent: {exc}[/red]")
            raise SystemExit(2) from None
        except redis_lib.RedisError as exc:
            console.print(f"[red]churnlight consent: Redis unreachable: {type(exc).__name__}[/red]")
            raise SystemExit(1) from None
        verb = "added to" if action == "add" else "removed from"
        click.echo(f"{changed} of {len(numbers)} msisdn(s) {verb} {store.KEYS[which]}")


@main.command("console")
@click.option("--add-user", metavar="NAME", help="add (or replace) a user in the users file, asking for the password")
@click.option("--role", type=click.Choice(["manager", "supervisor"]), default="manager", show_default=True,
              help="with --add-user: manager sees masked msisdns, supervisor full ones")
def console_cmd(add_user: str | None, role: str) -> None:
    """Serve the retention managers' web console (CHURNLIGHT_BIND:CHURNLIGHT_CONSOLE_PORT)."""
    from streams.auth import UsersFileError, write_user

    settings = settings_or_exit()
    if add_user is not None:
        if settings.users_file is None:
            raise click.UsageError("set CHURNLIGHT_USERS_FILE to the users file to write")
        password = click.prompt(f"password for {add_user}", hide_input=True, confirmation_prompt=True)
        try:
            write_user(settings.users_file, add_user, "supervisor" if role == "supervisor" else "manager", password)
        except UsersFileError as exc:
            raise click.UsageError(str(exc)) from None
        click.echo(f"{add_user} ({role}) written to {settings.users_file}")
        return
    setup_logging(settings.log_level, settings.log_format)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from streams.console.app import run_console

    with connected(settings, kafka=False) as resolved:
        try:
            run_console(resolved)
        except UsersFileError as exc:
            fail("console", exc, 2)


for command in TOOLS:
    main.add_command(command)

if __name__ == "__main__":
    main()
