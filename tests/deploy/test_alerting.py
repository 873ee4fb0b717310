"""The alerts reach someone: rules tested with promtool, each with a runbook, sent to an Alertmanager.

promtool comes with Debian's `prometheus` package and amtool with `prometheus-alertmanager`
(`make system-deps`); on CI (CI set) a missing tool fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import WorkerProc

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = sorted(PROMETHEUS_DIR.glob("alerts*.test.yml"))
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
HINTS = {"promtool": "apt-get install -y prometheus", "amtool": "apt-get install -y prometheus-alertmanager"}


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"`{tool}` is not installed; CI needs it: {HINTS[tool]} (`make system-deps`)")
        pytest.skip(f"`{tool}` is not installed ({HINTS[tool]})")
    return path


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    assert RULE_TESTS, "no deploy/prometheus/alerts*.test.yml"
    done = subprocess.run([_require("promtool"), "test", "rules", *map(str, RULE_TESTS)],
                          cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_runbook_and_a_promtool_test_that_fires_it() -> None:
    fired = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    names = set()
    for rule in _rules():
        names.add(rule["alert"])
        notes = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(notes), rule["alert"]
        assert "Means:" in notes["runbook"] and "Do:" in notes["runbook"], rule["alert"]
    assert names == fired
    assert {"ChurnlightRedisDegraded", "ChurnlightWorkerNotReady"} <= names


def test_prometheus_sends_alerts_to_the_compose_alertmanager() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    targets = [t for am in config["alerting"]["alertmanagers"] for s in am["static_configs"] for t in s["targets"]]
    assert targets == ["alertmanager:9093"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    service = compose["services"]["alertmanager"]
    assert any(v.startswith("./deploy/alertmanager:") for v in service["volumes"])
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in service["command"]


def test_amtool_accepts_the_alertmanager_config() -> None:
    done = subprocess.run([_require("amtool"), "check-config", str(ALERTMANAGER)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    routed = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    receivers = {r["name"]: r for r in routed["receivers"]}
    assert routed["route"]["receiver"] in receivers
    assert any(key.endswith("_configs") for key in receivers[routed["route"]["receiver"]])


def test_the_worker_exposes_process_figures_and_its_readiness(worker: WorkerProc) -> None:
    worker.start()
    assert worker.metric("churnlight_ready") == 1
    assert worker.metric("churnlight_redis_degraded") == 0
    assert worker.metric("process_resident_memory_bytes") > 50 * 2**20
    assert worker.metric("process_cpu_seconds_total") > 0
    assert worker.metric("process_open_fds") > 10
