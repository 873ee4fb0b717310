"""Run a `churnlight worker` (or `console`) subprocess with given settings, as the bench, the demo and
the tests do: start it, wait until `/health` answers 200, ask its HTTP, stop it, read its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.embedded import _die_with_parent, stop_process
from streams.settings import Settings
from streams.tools import scrape

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
POLL_S = 0.2


class WorkerFailed(RuntimeError):
    """The process exited, or did not become healthy in time; the message ends with its log's tail."""


def worker_env(settings: Settings) -> dict[str, str]:
    """Return the environment that makes a `churnlight` subprocess run exactly with `settings`."""
    env = settings.worker_env()
    # The checkout's packages, whether or not the project is installed in the interpreter.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@dataclass
class WorkerProcess:
    """One `python -m streams.cli COMMAND` child with its settings, port and log file.

    It runs in a session of its own (Ctrl-C in a terminal is the parent's to handle: it stops its
    children in order) and dies with its parent, even on SIGKILL.
    """

    settings: Settings
    log_path: Path
    name: str = "worker"
    command: str = "worker"  # or "console": its port is the console's
    cwd: Path | None = None  # where it starts (a `.env` there is read); None: the parent's
    stop_timeout_s: float = 20.0  # SIGTERM, then SIGKILL after this long
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def port(self) -> int:
        return self.settings.console_port if self.command == "console" else self.settings.web_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> WorkerProcess:
        """Start the process; do not wait for it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", self.command], env=worker_env(self.settings),
                cwd=None if self.cwd is None else str(self.cwd), stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()
        return self

    def start(self, timeout_s: float = START_TIMEOUT_S) -> WorkerProcess:
        """Start the process and wait until `/health` answers 200."""
        self.launch()
        self.wait_healthy(timeout_s)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise WorkerFailed when the process has exited."""
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise WorkerFailed(f"{self.name} exited with code {code}; its log ({self.log_path}):\n{self.tail()}")

    def request(self, path: str, headers: dict[str, str] | None = None,
                timeout_s: float = 5.0) -> tuple[int, bytes, str] | None:
        """GET `path`: (status, body, content type), None when nothing answers."""
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return int(resp.status), resp.read(), resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get_content_type()
        except (OSError, ValueError):
            return None

    def health(self) -> dict[str, Any] | None:
        """Return /health's body when it answers 200, else None."""
        got = self.request("/health", timeout_s=2.0)
        if got is None or got[0] != 200:
            return None
        try:
            doc = orjson.loads(got[1])
        except orjson.JSONDecodeError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Return seconds from the start to the first 200 of /health; raise WorkerFailed if none comes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if self.health() is not None:
                return time.monotonic() - self.started_at
            time.sleep(POLL_S)
        raise WorkerFailed(f"{self.name} not healthy after {timeout_s:.0f} s; its log ({self.log_path}):\n"
                           f"{self.tail()}")

    def metrics(self, timeout_s: float = 5.0) -> scrape.Samples | None:
        """Return the samples of /metrics, None when it does not answer."""
        got = self.request("/metrics", timeout_s=timeout_s)
        if got is None or got[0] != 200:
            return None
        return scrape.parse(got[1].decode("utf-8", "replace"))

    def metric(self, name: str, **labels: str) -> float:
        """Return the sum of the samples of `name` whose labels include `labels`."""
        samples = self.metrics()
        if samples is None:
            raise WorkerFailed(f"{self.name}: /metrics does not answer")
        return scrape.total(samples, name, labels)

    def peak_rss(self) -> int | None:
        """Return the peak resident set (VmHWM) of the live process, None where /proc does not say."""
        if not self.alive():
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting for it."""
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout_s`."""
        stop_process(self.proc, self.stop_timeout_s)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        """Return the log's last lines, without librdkafka's."""
        return "\n".join([line for line in self.log().splitlines() if "rdkafka" not in line][-lines:])
