"""The Grafana provisioning, the dashboard and the alert rules query only metrics the worker exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "churnlight.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DATASOURCE_UID = "churnlight-prometheus"

# PromQL words that stand without parentheses; everything else bare is a metric name.
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN", "group_left",
                       "group_right"})
_MSISDN_LIKE = re.compile(r"\+?\d{5,20}")


def exported_series() -> dict[str, str]:
    """Return every series name streams.metrics exposes -> its metric family."""
    names: dict[str, str] = {}
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        for suffix in suffixes:
            names[family.name + suffix] = family.name
    return names


def metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in re.finditer(r"(?<![\w$.])[A-Za-z_:][\w:]*", s):
        if s[m.end():].lstrip().startswith("("):  # a function or an aggregation
            continue
        if m.group() not in _KEYWORDS:
            names.add(m.group())
    return names


def test_metric_names_reads_promql() -> None:
    assert metric_names('sum by (topic) (rate(churnlight_events_total{outcome="x y"}[$__rate_interval]))') == {
        "churnlight_events_total"
    }
    assert metric_names("a and on () day_of_month(vector(time() + 8 * 3600)) > b - 7") == {"a", "b"}
    assert metric_names("deriv(sum(x)[5m:30s]) > 0 or absent_over_time(y[10m])") == {"x", "y"}
    assert metric_names("max(a) - on () group_right min by (i, p) (b) > 2 * 86400") == {"a", "b"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows hold their panels


def _exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_datasource_has_the_fixed_uid() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text(encoding="utf-8"))
    (source,) = config["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


def test_dashboard_provider_loads_the_mounted_dashboards() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    config = yaml.safe_load((GRAFANA / "provisioning/dashboards/churnlight.yml").read_text(encoding="utf-8"))
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mounts["./deploy/grafana/dashboards"]


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "churnlight"
    assert 36 <= dashboard["schemaVersion"] <= 41
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))


def test_every_panel_and_query_uses_the_fixed_datasource(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard["panels"]):
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == DATASOURCE_UID, variable["name"]


def test_dashboard_queries_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exported_series()
    used = set()
    for title, expr in _exprs(dashboard):
        names = metric_names(expr)
        assert names, f"{title}: {expr} selects no metric"
        assert names <= exported.keys(), f"{title}: {names - exported.keys()} not in streams/metrics.py"
        used |= {exported[n] for n in names}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            (metric,) = re.findall(r"label_values\((\w+),", variable["definition"])
            assert metric in exported, variable["name"]
    # Every churnlight metric (CONTRACT §9 and the documented extras) is on the dashboard.
    assert {n for n in used if n.startswith("churnlight_")} == {n for n in exported.values() if n.startswith("churnlight_")}
    assert "process_resident_memory_bytes" in used


def test_per_minute_panels_say_per_minute(dashboard: dict[str, Any]) -> None:
    for panel in _panels(dashboard["panels"]):
        exprs = [t["expr"] for t in panel.get("targets", [])]
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if any(re.search(r"\brate\(", e) and e.rstrip().endswith("* 60") for e in exprs):
            assert unit == "opm", f"{panel['title']}: a rate times 60 is per minute, not {unit}"
        elif any(e.startswith("sum by") and "(rate(churnlight_" in e for e in exprs):
            assert unit in ("ops", "opm", "s"), panel["title"]


def test_dashboard_has_the_operators_panels(dashboard: dict[str, Any]) -> None:
    exprs = [re.sub(r"\s+", " ", e) for _, e in _exprs(dashboard)]
    assert "sum by (topic) (rate(churnlight_events_total[$__rate_interval]))" in exprs
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le, channel) "
            "(rate(churnlight_end_to_end_seconds_bucket[$__rate_interval])))"
        ) in exprs
    for label in ("light", "region", "brand"):
        assert any(e.startswith(f"sum by ({label}) (churnlight_lights") for e in exprs), label
    assert any("churnlight_tasks_total{status=\"issued\"}" in e for e in exprs)
    assert any(e.startswith("sum by (reason) (rate(churnlight_tasks_suppressed_total") for e in exprs)
    assert any(e.startswith("sum by (topic, error) (rate(churnlight_deadletter_total") for e in exprs)


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alerts_query_only_exported_metrics(alert_rules: list[dict[str, Any]]) -> None:
    exported = exported_series()
    for rule in alert_rules:
        # `up` is Prometheus's own: whether the scrape of a worker succeeded.
        names = metric_names(rule["expr"]) - {"up"}
        assert names and names <= exported.keys(), f"{rule['alert']}: {names - exported.keys()}"


def test_alerts_have_severity_and_a_summary_without_subscribers(alert_rules: list[dict[str, Any]]) -> None:
    assert len({r["alert"] for r in alert_rules}) == len(alert_rules)
    for rule in alert_rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        for text in [*rule["annotations"].values(), *rule["labels"].values()]:
            assert "msisdn" not in text.lower(), rule["alert"]
            assert not _MSISDN_LIKE.search(text), rule["alert"]
            # Only labels the metrics carry, and none of them identifies a subscriber.
            assert set(re.findall(r"\$labels\.(\w+)", text)) <= {"topic", "region", "error", "instance",
                                                                         "partition"}, rule["alert"]


def test_the_alerts_the_operators_asked_for(alert_rules: list[dict[str, Any]]) -> None:
    exprs: dict[str, str] = {r["alert"]: re.sub(r"\s+", " ", r["expr"]) for r in alert_rules}
    fors = {r["alert"]: r.get("for") for r in alert_rules}

    def one(*parts: str) -> str:
        (name,) = [n for n, e in exprs.items() if all(p in e for p in parts)]
        return name

    lag = one("deriv(", "sum(churnlight_consumer_lag)", "> 0")
    assert fors[lag] == "5m"
    dead = one("rate(churnlight_deadletter_total", "> 1")
    assert fors[dead] == "10m"
    one("rate(churnlight_events_total[10m])) == 0", "absent")
    one("churnlight_kpi_task_completion_ratio", "< 0.35", "day_of_month(", "days_in_month(")
    one("churnlight_kpi_churn_ratio", "> 0.075")
    # Beyond the operators' list: a partition whose days stopped closing shows no lag (issue 13).
    one("churnlight_watermark_seconds", "group_right", "> 2 * 86400")
