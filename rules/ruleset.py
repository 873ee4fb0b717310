"""Rule sets: the thresholds, task table and contact policy as validated, frozen configuration.

A rule set is a YAML file under `rules/` (CONTRACT §5, §7 `CHURNLIGHT_RULES`). The file speaks
CNY and minutes, like every edge of the system; the loaded `RuleSet` speaks integer fen and
integer seconds, like the rest of the core.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import time
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from rules.vocabulary import KINDS, Channel, Priority

RULES_DIR: Final = Path(__file__).resolve().parent
TASK_KINDS: Final = KINDS
# Only these kinds have a due time that is not a fixed number of hours (end of the local day,
# before the trial's `ends_on`), so only they may say `due_hours: null`.
OPEN_DUE_KINDS: Final = frozenset({"birthday", "vas_trial"})

PhotoSource = Literal["profile", "auto"]

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HHMM_RE: Final = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class RuleSetError(ValueError):
    """A rule-set file that is missing or invalid; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    channel: Channel
    priority: Priority
    due_hours: int | None  # None: kind-specific (birthday: end of that local day; vas_trial: before ends_on)
    template: str | None  # sms only


@dataclass(frozen=True, slots=True)
class RuleSet:
    name: str
    description: str
    window_days: int
    arpu_min_fen: int
    arpu_inclusive: bool
    mou_min_seconds: int | None
    mou_inclusive: bool
    decline_ratio: float | None
    port_out_guard: bool
    port_out_request_open_days: int
    tasks: Mapping[str, TaskSpec] = field(hash=False)  # a read-only mapping; left out of hash()
    remaining_match_days: tuple[int, int]
    balance_low_below_fen: int
    birthday_brands: frozenset[str]
    tenure_discounts: tuple[tuple[int, int], ...]  # (min_years, percent), min_years ascending
    holdout_bp: int
    cooldown_days: int
    quiet_start: time
    quiet_end: time
    # The metric label values allowed for regions and brands (rules.labels); None: not listed.
    label_regions: frozenset[str] | None = None
    label_brands: frozenset[str] | None = None
    # `photo: auto`: the rule set photographs its own base (the first complete window meeting its
    # thresholds; the offline backtest), instead of the profiles' photo.
    photo: PhotoSource = "profile"
    risk_model: str | None = None  # a model file (churnlight train); None: no risk score
    risk_horizon_days: int = 60  # the score's churn horizon: churned within this many days
    risk_task_threshold: float | None = None  # a `risk` task when a green subscriber's risk crosses it
    # Call-centre calls per local day per region; a region not named is unlimited.
    capacity: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), hash=False)


# --- the file's schema -------------------------------------------------------------------------

def _two_decimals(value: float) -> float:
    if abs(value * 100 - round(value * 100)) > 1e-6:
        raise ValueError("must have at most 2 decimals (CNY)")
    return value


Cny = Annotated[float, Field(ge=0), AfterValidator(_two_decimals)]
Minutes = Annotated[float, Field(ge=0)]
Days = Annotated[int, Field(ge=1)]


class _Model(BaseModel):
    # strict: YAML already gives numbers and booleans their types; "120" or `yes` for a number
    # is a mistake in the file, not something to coerce.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Thresholds(_Model):
    arpu_min: Cny
    arpu_inclusive: bool = True
    mou_min: Minutes | None
    mou_inclusive: bool = True
    decline_ratio: Annotated[float, Field(gt=0, le=1)] | None


class _PortOut(_Model):
    guard: bool
    request_open_days: Days


class _Task(_Model):
    channel: Channel
    priority: Priority
    due_hours: Annotated[int, Field(ge=0)] | None
    template: Annotated[str, Field(min_length=1)] | None = None


class _Tasks(_Model):
    red_light: _Task
    yellow_light: _Task
    black_light: _Task
    contract_expiry: _Task
    balance_low: _Task
    birthday: _Task
    vas_trial: _Task
    port_out: _Task
    # CONTRACT §5's row; a rule set may name its own (only with `risk.task_threshold` is one made).
    risk: _Task = _Task(channel="callcentre", priority="normal", due_hours=72)


class _Contract(_Model):
    remaining_match_days: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]


class _Discount(_Model):
    min_years: Annotated[int, Field(ge=0)]
    percent: Annotated[int, Field(ge=1, le=100)]


class _QuietHours(_Model):
    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM_RE.match(value):
            raise ValueError('must be a quoted local time "HH:MM"')
        return value


class _Policy(_Model):
    holdout_bp: Annotated[int, Field(ge=0, le=10000)]
    cooldown_days: Annotated[int, Field(ge=0)]
    quiet_hours: _QuietHours


class _Labels(_Model):
    regions: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = None
    brands: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = None
class _Risk(_Model):
    model: Annotated[str, Field(min_length=1)] | None = None
    horizon_days: Annotated[int, Field(ge=1, le=366)] = 60
    task_threshold: Annotated[float, Field(gt=0, lt=1)] | None = None


class _File(_Model):
    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    window_days: Annotated[int, Field(ge=1, le=366)]
    thresholds: _Thresholds
    port_out: _PortOut
    tasks: _Tasks
    contract: _Contract
    balance_low_below: Cny
    birthday_brands: list[Annotated[str, Field(min_length=1)]]
    tenure_discounts: list[_Discount]
    policy: _Policy
    # The closed sets of metric label values (rules.labels); absent: short words, capped.
    labels: _Labels = _Labels()
    photo: PhotoSource = "profile"
    risk: _Risk = _Risk()
    capacity: dict[Annotated[str, Field(min_length=1)], Annotated[int, Field(ge=0)]] | None = None


# --- loading -----------------------------------------------------------------------------------


def resolve(name_or_path: str) -> tuple[Path, str]:
    """Return the file of rule set `name_or_path` and how to name it in messages."""
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        return Path(name_or_path), name_or_path
    if not _NAME_RE.match(name_or_path):
        raise RuleSetError(f"{name_or_path!r}: not a rule-set name (letters, digits, _ . -) or a path")
    return RULES_DIR / f"{name_or_path}.yaml", f"rules/{name_or_path}.yaml"


def known_rule_sets() -> list[str]:
    """Return the names of the rule sets shipped under `rules/`."""
    return sorted(p.stem for p in RULES_DIR.glob("*.yaml"))


def load_rule_set(name_or_path: str) -> RuleSet:
    """Load and validate a rule set: a bare name from `rules/<name>.yaml`, else a file path."""
    path, shown = resolve(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        known = ", ".join(known_rule_sets())
        raise RuleSetError(f"{shown}: no such rule-set file (rule sets under rules/: {known})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleSetError(f"{shown}: cannot read: {exc}") from None
    rules = parse_rule_set(text, shown)
    if rules.risk_model is not None and not Path(rules.risk_model).is_absolute():
        # Like any file a rule set names: relative to the rule file's folder, not to where it runs.
        rules = replace(rules, risk_model=str(path.parent / rules.risk_model))
    return rules


def parse_rule_set(text: str, source: str = "<rules>") -> RuleSet:
    """Validate the YAML text of a rule set; `source` names it in error messages."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise RuleSetError(f"{source}: not valid YAML{line}") from None
    if not isinstance(doc, dict):
        raise RuleSetError(f"{source}: must be a YAML mapping of rule-set fields")
    try:
        model = _File.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RuleSetError(f"{source}: {_loc(first['loc'])}: {_message(first)}") from None
    return _build(model, source)


def _build(m: _File, source: str) -> RuleSet:
    def fail(field: str, message: str) -> RuleSetError:
        return RuleSetError(f"{source}: {field}: {message}")

    tasks: dict[str, TaskSpec] = {}
    for kind in TASK_KINDS:
        t: _Task = getattr(m.tasks, kind)
        if t.due_hours is None and kind not in OPEN_DUE_KINDS:
            raise fail(f"tasks.{kind}.due_hours", "must be a whole number of hours >= 0")
        if t.channel == "sms" and t.template is None:
            raise fail(f"tasks.{kind}.template", "is required for an sms task")
        if t.channel != "sms" and t.template is not None:
            raise fail(f"tasks.{kind}.template", "only sms tasks have a template")
        tasks[kind] = TaskSpec(t.channel, t.priority, t.due_hours, t.template)

    low, high = m.contract.remaining_match_days
    if low > high:
        raise fail("contract.remaining_match_days", "must be [low, high] with low <= high")

    discounts = sorted((d.min_years, d.percent) for d in m.tenure_discounts)
    for i in range(1, len(discounts)):
        if discounts[i][0] == discounts[i - 1][0]:
            raise fail("tenure_discounts", f"min_years {discounts[i][0]} appears twice")

    if m.risk.task_threshold is not None and m.risk.model is None:
        raise fail("risk.task_threshold", "needs risk.model (a model file to score with)")

    th = m.thresholds
    return RuleSet(
        name=m.name,
        description=m.description,
        window_days=m.window_days,
        arpu_min_fen=_fen(th.arpu_min),
        arpu_inclusive=th.arpu_inclusive,
        mou_min_seconds=None if th.mou_min is None else int(round(th.mou_min * 60)),
        mou_inclusive=th.mou_inclusive,
        decline_ratio=th.decline_ratio,
        port_out_guard=m.port_out.guard,
        port_out_request_open_days=m.port_out.request_open_days,
        tasks=MappingProxyType(tasks),
        remaining_match_days=(low, high),
        balance_low_below_fen=_fen(m.balance_low_below),
        birthday_brands=frozenset(m.birthday_brands),
        tenure_discounts=tuple(discounts),
        holdout_bp=m.policy.holdout_bp,
        cooldown_days=m.policy.cooldown_days,
        quiet_start=time.fromisoformat(m.policy.quiet_hours.start),
        quiet_end=time.fromisoformat(m.policy.quiet_hours.end),
        label_regions=None if m.labels.regions is None else frozenset(m.labels.regions),
        label_brands=None if m.labels.brands is None else frozenset(m.labels.brands),
        photo=m.photo,
        risk_model=m.risk.model,
        risk_horizon_days=m.risk.horizon_days,
        risk_task_threshold=m.risk.task_threshold,
        capacity=MappingProxyType(dict(m.capacity or {})),
    )


def _fen(cny: float) -> int:
    return int(round(cny * 100))


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _message(error: Mapping[str, Any]) -> str:
    """Say what a pydantic error means in the words of the file."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be a number {op} {_num(ctx.get(key))}"
    simple = {
        "missing": "is required",
        "extra_forbidden": "unknown field",
        "float_type": "must be a number",
        "int_type": "must be a whole number",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "string_too_short": "must not be empty",
        "list_type": "must be a list",
        "tuple_type": "must be a list",
        "model_type": "must be a mapping",
        "dict_type": "must be a mapping",
    }
    if kind in simple:
        return simple[kind]
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def _num(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)
