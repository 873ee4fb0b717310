"""Tests for rules.ruleset: the two shipped rule sets and errors that name the file and field."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from rules.ruleset import RULES_DIR, TASK_KINDS, RuleSet, RuleSetError, TaskSpec, load_rule_set
from rules.offers import tenure_discount


def default_doc() -> dict[str, Any]:
    doc = yaml.safe_load((RULES_DIR / "cmcc-2010.yaml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def write(tmp_path: Path, doc: Any, name: str = "x.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return str(path)


def test_default_rule_set_in_internal_units() -> None:
    r = load_rule_set("cmcc-2010")
    assert r.name == "cmcc-2010"
    assert r.window_days == 30
    assert (r.arpu_min_fen, r.arpu_inclusive) == (12000, True)
    assert (r.mou_min_seconds, r.mou_inclusive) == (6000, True)
    assert r.decline_ratio == 0.5
    assert (r.port_out_guard, r.port_out_request_open_days) == (True, 30)
    assert r.remaining_match_days == (60, 90)
    assert r.balance_low_below_fen == 1000
    assert r.birthday_brands == frozenset({"gotone"})
    assert r.tenure_discounts == ((1, 95), (2, 92), (3, 90), (5, 85), (8, 80), (10, 70))
    assert (r.holdout_bp, r.cooldown_days) == (500, 7)
    assert (r.quiet_start, r.quiet_end) == (time(21, 0), time(8, 0))


def test_default_task_table() -> None:
    tasks = load_rule_set("cmcc-2010").tasks
    assert tuple(tasks) == TASK_KINDS
    assert tasks["red_light"] == TaskSpec("callcentre", "high", 24, None)
    assert tasks["yellow_light"] == TaskSpec("sms", "normal", 0, "yellow_light.v1")
    assert tasks["black_light"] == TaskSpec("callcentre", "normal", 72, None)
    assert tasks["contract_expiry"] == TaskSpec("callcentre", "normal", 168, None)
    assert tasks["balance_low"] == TaskSpec("sms", "normal", 0, "balance_low.v1")
    assert tasks["birthday"] == TaskSpec("sms", "low", None, "birthday.v1")
    assert tasks["vas_trial"] == TaskSpec("sms", "normal", None, "vas_trial.v1")
    assert tasks["port_out"] == TaskSpec("callcentre", "urgent", 2, None)
    with pytest.raises(TypeError):
        tasks["red_light"] = TaskSpec("sms", "low", 0, "x")  # type: ignore[index]


def test_seed_004_watches_arpu_over_80_without_minutes() -> None:
    r = load_rule_set("seed-004")
    d = load_rule_set("cmcc-2010")
    assert (r.name, r.arpu_min_fen, r.arpu_inclusive, r.mou_min_seconds) == ("seed-004", 8000, False, None)
    same = ("window_days", "decline_ratio", "port_out_guard", "tasks", "tenure_discounts", "holdout_bp", "quiet_start")
    assert all(getattr(r, f) == getattr(d, f) for f in same)


def test_name_and_path_resolve_to_the_same_rule_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(RULES_DIR.parent)
    assert load_rule_set("rules/cmcc-2010.yaml") == load_rule_set("cmcc-2010")
    assert load_rule_set(str(RULES_DIR / "seed-004.yaml")) == load_rule_set("seed-004")
    assert load_rule_set(write(tmp_path, default_doc(), "mine.yaml")).name == "cmcc-2010"


def test_rule_set_is_hashable_and_frozen() -> None:
    r = load_rule_set("cmcc-2010")
    assert hash(r) == hash(load_rule_set("cmcc-2010"))
    with pytest.raises(AttributeError):
        r.window_days = 7  # type: ignore[misc]


@pytest.mark.parametrize(
    ("years", "percent"), [(0, None), (1, 95), (2, 92), (4, 90), (5, 85), (9, 80), (10, 70), (40, 70)]
)
def test_the_tenure_table_gives_the_discount_of_the_longest_tenure_reached(years: int, percent: int | None) -> None:
    assert tenure_discount(years, load_rule_set("cmcc-2010").tenure_discounts) == percent


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("thresholds.arpu_min", -1, "thresholds.arpu_min: must be a number >= 0"),
        ("thresholds.arpu_min", "120", "thresholds.arpu_min: must be a number"),
        ("thresholds.arpu_min", 120.005, "thresholds.arpu_min: must have at most 2 decimals"),
        ("thresholds.arpu_min", _DELETE, "thresholds.arpu_min: is required"),
        ("thresholds.arpu_inclusive", "yes", "thresholds.arpu_inclusive: must be true or false"),
        ("thresholds.decline_ratio", 1.5, "thresholds.decline_ratio: must be a number <= 1"),
        ("thresholds.typo", 1, "thresholds.typo: unknown field"),
        ("window_days", 0, "window_days: must be a number >= 1"),
        ("window_days", 30.5, "window_days: must be a whole number"),
        ("port_out.request_open_days", True, "port_out.request_open_days: must be a whole number"),
        ("tasks.red_light.priority", "asap", "tasks.red_light.priority: must be one of"),
        ("tasks.red_light.channel", "fax", "tasks.red_light.channel: must be one of"),
        ("tasks.red_light.due_hours", None, "tasks.red_light.due_hours: must be a whole number of hours >= 0"),
        ("tasks.yellow_light.template", None, "tasks.yellow_light.template: is required for an sms task"),
        ("tasks.black_light.template", "x.v1", "tasks.black_light.template: only sms tasks have a template"),
        ("tasks.birthday", _DELETE, "tasks.birthday: is required"),
        ("tasks.fax_light", {"channel": "sms"}, "tasks.fax_light: unknown field"),
        ("contract.remaining_match_days", [90, 60], "contract.remaining_match_days: must be [low, high]"),
        ("contract.remaining_match_days", [60], "contract.remaining_match_days: must have at least 2 items"),
        ("balance_low_below", -5, "balance_low_below: must be a number >= 0"),
        ("tenure_discounts.2.percent", 120, "tenure_discounts[2].percent: must be a number <= 100"),
        ("tenure_discounts.3.min_years", 1, "tenure_discounts: min_years 1 appears twice"),
        ("policy.holdout_bp", 10001, "policy.holdout_bp: must be a number <= 10000"),
        ("policy.quiet_hours.start", 1260, "policy.quiet_hours.start: must be a string"),
        ("policy.quiet_hours.end", "8:00", 'policy.quiet_hours.end: must be a quoted local time "HH:MM"'),
        ("name", "", "name: must not be empty"),
        ("risk.task_threshold", 0.3, "risk.task_threshold: needs risk.model"),
        ("risk.task_threshold", 1.0, "risk.task_threshold: must be a number < 1"),
        ("tasks.risk", {"channel": "callcentre", "priority": "normal", "due_hours": None},
         "tasks.risk.due_hours: must be a whole number of hours >= 0"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, field: str, value: Any, message: str) -> None:
    doc = default_doc()
    _set(doc, field, value)
    path = write(tmp_path, doc)
    with pytest.raises(RuleSetError) as err:
        load_rule_set(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_unquoted_quiet_hour_is_caught() -> None:
    # YAML 1.1 reads an unquoted 21:00 as the sexagesimal integer 1260.
    from rules.ruleset import parse_rule_set

    text = (RULES_DIR / "cmcc-2010.yaml").read_text(encoding="utf-8").replace('"21:00"', "21:00")
    with pytest.raises(RuleSetError, match=r"^rules/y\.yaml: policy\.quiet_hours\.start: must be a string"):
        parse_rule_set(text, "rules/y.yaml")


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(RuleSetError, match=r"^rules/nope\.yaml: no such rule-set file \(rule sets under rules/: [a-z0-9, .-]*cmcc-2010, [a-z0-9, .-]*seed-004[a-z0-9, .-]*\)$"):
        load_rule_set("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(RuleSetError, match=rf"^{bad}: not valid YAML \(line \d+\)$"):
        load_rule_set(str(bad))
    bad.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(RuleSetError, match=rf"^{bad}: must be a YAML mapping"):
        load_rule_set(str(bad))
    with pytest.raises(RuleSetError, match="not a rule-set name"):
        load_rule_set("..\\etc")


def test_a_model_file_is_found_next_to_the_rule_file_and_the_risk_task_has_the_contracts_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = default_doc()
    doc["risk"] = {"model": "models/churn.json", "horizon_days": 45, "task_threshold": 0.4}
    (tmp_path / "rules").mkdir()
    path = write(tmp_path / "rules", doc)
    monkeypatch.chdir(tmp_path)  # the rule file named relative to where the worker runs, too
    for name in (path, "rules/x.yaml"):
        r = load_rule_set(name)
        assert Path(r.risk_model or "").resolve() == tmp_path / "rules" / "models" / "churn.json"
        assert (r.risk_horizon_days, r.risk_task_threshold) == (45, 0.4)
    doc["risk"]["model"] = str(tmp_path / "elsewhere.json")  # an absolute path stays as it is
    assert load_rule_set(write(tmp_path, doc)).risk_model == str(tmp_path / "elsewhere.json")
    assert load_rule_set("cmcc-2010").risk_model is None
    assert load_rule_set("cmcc-2010").tasks["risk"] == TaskSpec("callcentre", "normal", 72, None)


def test_rule_set_error_is_a_value_error() -> None:
    assert issubclass(RuleSetError, ValueError)
    assert isinstance(load_rule_set("cmcc-2010"), RuleSet)
