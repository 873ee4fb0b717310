"""Tests for rules.tasks: triggers, task ids and the task message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.event_types import Lifecycle
from rules.lights import LightChange
from rules.localtime import iso_time, local_date, local_midnight_ms
from rules.offers import ContractTerms, contract_stages, tenure_discount, tenure_years
from rules.task_message import Keyed, SubscriberFacts, Task, task_id
from rules.tasks import (
    balance_low_tasks,
    birthday_on,
    birthday_tasks,
    contract_key,
    contract_tasks,
    day_open_tasks,
    lifecycle_tasks,
    light_task_kind,
    light_tasks,
    port_out_tasks,
    risk_crossed,
    risk_tasks,
    vas_trial_tasks,
)
from rules.vocabulary import KINDS, LIGHTS, Light, Minutes, Money, Reason

TZ = ZoneInfo("Asia/Shanghai")


def light_change(light: Light, previous: Light | None, at_ms: int, reasons: tuple[Reason, ...] = ()) -> LightChange:
    """A change of the light engine's (its window figures play no part in a task)."""
    return LightChange(previous, light, at_ms, reasons, 0, 0)

HOUR = 3_600_000
DAY = 24 * HOUR


@dataclass(frozen=True)
class Spec:
    channel: str
    priority: str
    due_hours: int | None
    template: str | None = None


def _default_tasks() -> dict[str, Spec]:
    return {
        "red_light": Spec("callcentre", "high", 24),
        "yellow_light": Spec("sms", "normal", 0, "yellow_light.v1"),
        "black_light": Spec("callcentre", "normal", 72),
        "contract_expiry": Spec("callcentre", "normal", 7 * 24),
        "balance_low": Spec("sms", "normal", 0, "balance_low.v1"),
        "birthday": Spec("sms", "low", None, "birthday.v1"),
        "vas_trial": Spec("sms", "normal", None, "vas_trial.v1"),
        "port_out": Spec("callcentre", "urgent", 2),
        "risk": Spec("callcentre", "normal", 72),
    }


@dataclass(frozen=True)
class Rules:
    """Stand-in for the loaded rule set, with the cmcc-2010 defaults."""

    name: str = "cmcc-2010"
    port_out_guard: bool = True
    tasks: Mapping[str, Spec] = field(default_factory=_default_tasks)
    remaining_match_days: tuple[int, int] = (60, 90)
    balance_low_below_fen: int = 1000
    birthday_brands: frozenset[str] = frozenset({"gotone"})
    tenure_discounts: tuple[tuple[int, int], ...] = ((1, 95), (2, 92), (3, 90), (5, 85), (8, 80), (10, 70))
    holdout_bp: int = 500
    cooldown_days: int = 7
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    risk_task_threshold: float | None = None


RULES = Rules()
WHO = SubscriberFacts(
    msisdn="13800000001",
    region="zunyi",
    brand="gotone",
    segment="high",
    activated_on=date(2020, 10, 3),
    birthday="10-03",
    prepaid=True,
    light="green",
)


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    """Return epoch ms of a Shanghai wall time."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=TZ).timestamp()) * 1000


# --------------------------------------------------------------------------------------------
# light tasks

WORSENING: dict[tuple[Light | None, Light], str | None] = {
    (None, "yellow"): "yellow_light",
    (None, "red"): "red_light",
    (None, "black"): "black_light",
    ("green", "yellow"): "yellow_light",
    ("green", "red"): "red_light",
    ("green", "black"): "black_light",
    ("yellow", "red"): "red_light",
    ("yellow", "black"): "black_light",
    ("red", "black"): "black_light",
}


@pytest.mark.parametrize("previous", [None, *LIGHTS])
@pytest.mark.parametrize("light", LIGHTS)
def test_light_task_kind_only_on_worsening(previous: Light | None, light: Light) -> None:
    expected = WORSENING.get((previous, light))
    assert light_task_kind(light, previous) == expected
    change = light_change(light, previous, at(2026, 10, 3, 9, 15))
    tasks = light_tasks(change, WHO, None, RULES, TZ)
    assert [t.kind for t in tasks] == ([] if expected is None else [expected])


def test_red_light_task_fields() -> None:
    reasons = (Reason("arpu_below", Money(8550), Money(12000)), Reason("mou_below", Minutes(3000), Minutes(6000)))
    change = light_change("red", "yellow", at(2026, 10, 3, 9, 15), reasons)
    (task,) = light_tasks(change, WHO, None, RULES, TZ)
    assert task.channel == "callcentre" and task.priority == "high"
    assert task.light == "red" and task.previous_light == "yellow"
    assert task.created_at_ms == change.at_ms
    assert task.due_by_ms == change.at_ms + 24 * HOUR
    assert task.reasons == reasons
    assert task.template is None and task.vars is None and task.send_after_ms is None
    assert task.task_id == task_id(WHO.msisdn, "red_light", "2026-10-03")
    assert task.rule_set == "cmcc-2010" and task.region == "zunyi" and task.segment == "high"


def test_black_light_due_72h() -> None:
    change = light_change("black", "red", at(2026, 10, 3, 9, 15))
    (task,) = light_tasks(change, WHO, None, RULES, TZ)
    assert (task.kind, task.priority, task.due_by_ms) == ("black_light", "normal", change.at_ms + 72 * HOUR)


def test_yellow_light_is_sms_due_now_with_tenure_offer() -> None:
    change = light_change("yellow", "green", at(2026, 10, 3, 9, 15))
    (task,) = light_tasks(change, WHO, None, RULES, TZ)
    assert task.channel == "sms" and task.due_by_ms == task.created_at_ms
    assert task.template == "yellow_light.v1"
    assert task.offer is not None and task.offer.code == "tenure_discount"
    assert dict(task.vars or ()) == {"offer": "tenure_discount", "discount_percent": 85, "tenure_years": 6}


@pytest.mark.parametrize(
    ("on", "percent"),
    [
        (date(2021, 10, 2), None),
        (date(2021, 10, 3), 95),
        (date(2022, 10, 2), 95),
        (date(2022, 10, 3), 92),
        (date(2023, 10, 3), 90),
        (date(2024, 10, 3), 90),
        (date(2025, 10, 3), 85),
        (date(2028, 10, 2), 85),
        (date(2028, 10, 3), 80),
        (date(2030, 10, 3), 70),
        (date(2050, 1, 1), 70),
    ],
)
def test_tenure_discount_table(on: date, percent: int | None) -> None:
    years = tenure_years(date(2020, 10, 3), on)
    assert tenure_discount(years, RULES.tenure_discounts) == percent
    change = light_change("red", "green", at(on.year, on.month, on.day, 12))
    (task,) = light_tasks(change, WHO, None, RULES, TZ)
    if percent is None:
        assert task.offer is None
    else:
        assert task.offer is not None and task.offer.code == "tenure_discount"
        assert f"{percent}%" in task.offer.detail


def test_tenure_uses_local_date_of_change() -> None:
    # 2021-10-02T16:30Z is 2021-10-03 00:30 in Shanghai: one whole year.
    change = light_change("red", "green", int(datetime(2021, 10, 2, 16, 30, tzinfo=ZoneInfo("UTC")).timestamp()) * 1000)
    (task,) = light_tasks(change, WHO, None, RULES, TZ)
    assert task.offer is not None and "95%" in task.offer.detail
    assert task.task_id == task_id(WHO.msisdn, "red_light", "2021-10-03")


def test_feb_29_activation_completes_a_year_on_mar_1() -> None:
    assert tenure_years(date(2024, 2, 29), date(2025, 2, 28)) == 0
    assert tenure_years(date(2024, 2, 29), date(2025, 3, 1)) == 1


def test_no_activation_date_no_offer() -> None:
    who = replace(WHO, activated_on=None)
    (task,) = light_tasks(light_change("yellow", "green", at(2026, 10, 3, 10)), who, None, RULES, TZ)
    assert task.offer is None and task.vars == ()


@pytest.mark.parametrize(
    ("contract", "offer"),
    [
        (ContractTerms(date(2026, 12, 17), 120000, 50000), "remaining_match"),  # 75 days left
        (ContractTerms(date(2026, 10, 31), 120000, 50000), "deposit_match"),
        (ContractTerms(date(2027, 6, 30), 120000, 130000), "overspend_match"),
        (ContractTerms(date(2026, 12, 17), 120000, 130000), "remaining_match"),  # listing order wins
        (ContractTerms(date(2027, 6, 30), 120000, 50000), "tenure_discount"),  # no stage
        (ContractTerms(date(2026, 10, 2), 120000, 130000), "tenure_discount"),  # already ended
    ],
)
def test_contract_offer_applies_before_tenure(contract: ContractTerms, offer: str) -> None:
    change = light_change("red", "green", at(2026, 10, 3, 9))
    (task,) = light_tasks(change, WHO, contract, RULES, TZ)
    assert task.offer is not None and task.offer.code == offer


# --------------------------------------------------------------------------------------------
# task ids


def test_task_id_deterministic_and_per_period() -> None:
    a = task_id("13800000001", "red_light", "2026-10-03")
    assert a == task_id("13800000001", "red_light", "2026-10-03")
    assert len(a) == 32 and int(a, 16) >= 0
    assert a != task_id("13800000001", "red_light", "2026-10-04")
    assert a != task_id("13800000001", "black_light", "2026-10-03")
    assert a != task_id("13800000002", "red_light", "2026-10-03")


@given(
    st.from_regex(r"\+?[0-9]{5,20}", fullmatch=True),
    st.sampled_from(KINDS),
    st.text(max_size=30),
    st.text(max_size=30),
)
def test_task_id_differs_exactly_when_period_differs(msisdn: str, kind: str, p1: str, p2: str) -> None:
    assert (task_id(msisdn, kind, p1) == task_id(msisdn, kind, p2)) == (p1 == p2)


def test_light_task_id_same_day_same_id_next_day_new_id() -> None:
    first = light_tasks(light_change("red", "green", at(2026, 10, 3, 0, 0)), WHO, None, RULES, TZ)[0]
    later = light_tasks(light_change("red", "yellow", at(2026, 10, 3, 23, 59)), WHO, None, RULES, TZ)[0]
    next_day = light_tasks(light_change("red", "yellow", at(2026, 10, 4, 0, 0)), WHO, None, RULES, TZ)[0]
    assert first.task_id == later.task_id != next_day.task_id


# --------------------------------------------------------------------------------------------
# contract stages


@pytest.mark.parametrize(
    ("day", "stages"),
    [
        (date(2026, 9, 30), ()),  # 92 days left
        (date(2026, 10, 1), ()),  # 91
        (date(2026, 10, 2), ("remaining_match",)),  # 90
        (date(2026, 11, 1), ("remaining_match",)),  # 60
        (date(2026, 11, 2), ()),  # 59
        (date(2026, 11, 30), ()),
        (date(2026, 12, 1), ("deposit_match",)),
        (date(2026, 12, 31), ("deposit_match",)),  # the last day itself
        (date(2027, 1, 1), ()),
    ],
)
def test_contract_stages(day: date, stages: tuple[str, ...]) -> None:
    assert contract_stages(ContractTerms(date(2026, 12, 31), 120000, 0), day, RULES) == stages


def test_overspend_stage_before_end_only() -> None:
    contract = ContractTerms(date(2027, 6, 30), 120000, 120000)  # spend == committed counts
    assert contract_stages(contract, date(2026, 10, 3), RULES) == ("overspend_match",)
    assert contract_stages(contract, date(2027, 6, 29), RULES) == ("deposit_match", "overspend_match")
    assert contract_stages(contract, date(2027, 6, 30), RULES) == ("deposit_match",)
    assert contract_stages(replace(contract, spend_fen=119999), date(2026, 10, 3), RULES) == ()


@pytest.mark.parametrize("spend", [0, 200000])
def test_each_stage_fires_once_with_the_used_set(spend: int) -> None:
    contract = ContractTerms(date(2026, 12, 31), 120000, spend)
    used: set[str] = set()
    fired: list[tuple[date, str]] = []
    day = date(2026, 6, 1)
    while day <= date(2027, 1, 5):
        for key, task in contract_tasks(WHO, contract, day, used, RULES, TZ):
            assert task.offer is not None
            fired.append((day, task.offer.code))
            used.add(key)
        day += timedelta(days=1)
    expected = [(date(2026, 10, 2), "remaining_match"), (date(2026, 12, 1), "deposit_match")]
    if spend:
        expected.insert(0, (date(2026, 6, 1), "overspend_match"))
    assert sorted(fired) == sorted(expected)


def test_stages_due_on_the_same_day_are_all_issued() -> None:
    contract = ContractTerms(date(2026, 12, 17), 120000, 150000)
    keyed = contract_tasks(WHO, contract, date(2026, 10, 3), set(), RULES, TZ)
    assert [k.key for k in keyed] == [
        contract_key(contract.ends_on, "remaining_match"),
        contract_key(contract.ends_on, "overspend_match"),
    ]
    assert len({k.task.task_id for k in keyed}) == 2
    used = {keyed[0].key}
    assert [k.key for k in contract_tasks(WHO, contract, date(2026, 10, 3), used, RULES, TZ)] == [keyed[1].key]


def test_contract_task_fields() -> None:
    contract = ContractTerms(date(2026, 12, 17), 120000, 50000)
    ((key, task),) = contract_tasks(WHO, contract, date(2026, 10, 3), set(), RULES, TZ)
    assert key == "contract:2026-12-17:remaining_match"
    assert task.kind == "contract_expiry" and task.channel == "callcentre" and task.priority == "normal"
    assert task.created_at_ms == at(2026, 10, 3)
    assert task.due_by_ms == at(2026, 10, 10)
    assert task.task_id == task_id(WHO.msisdn, "contract_expiry", "2026-12-17:remaining_match")
    assert task.offer is not None and "700.00 CNY" in task.offer.detail
    assert task.reasons == (Reason("contract_days_left", 75, 90),)
    assert task.light == "green" and task.previous_light is None
    # A new contract (another ends_on) has stages of its own.
    renewed = ContractTerms(date(2027, 1, 1), 120000, 0)
    assert contract_tasks(WHO, renewed, date(2026, 10, 3), {key}, RULES, TZ)[0].key == "contract:2027-01-01:remaining_match"


def test_no_contract_no_contract_task() -> None:
    assert contract_tasks(WHO, None, date(2026, 10, 3), set(), RULES, TZ) == []


# --------------------------------------------------------------------------------------------
# balance_low


@pytest.mark.parametrize(
    ("previous", "balance", "fires"),
    [
        (1000, 999, True),
        (2000, 0, True),
        (1000, 1000, False),
        (999, 500, False),
        (None, 500, False),
        (500, 2000, False),
    ],
)
def test_balance_low_crossing(previous: int | None, balance: int, fires: bool) -> None:
    tasks = balance_low_tasks(WHO, previous, balance, at(2026, 10, 3, 12), RULES, TZ)
    assert len(tasks) == int(fires)


@given(st.one_of(st.none(), st.integers(-10**6, 10**6)), st.integers(-10**6, 10**6))
def test_balance_low_fires_iff_crossing(previous: int | None, balance: int) -> None:
    tasks = balance_low_tasks(WHO, previous, balance, at(2026, 10, 3, 12), RULES, TZ)
    assert bool(tasks) == (previous is not None and previous >= 1000 > balance)


def test_balance_low_fields_and_postpaid() -> None:
    ts = at(2026, 10, 3, 12, 30)
    (task,) = balance_low_tasks(WHO, 1200, 850, ts, RULES, TZ)
    assert task.channel == "sms" and task.created_at_ms == task.due_by_ms == ts
    assert task.task_id == task_id(WHO.msisdn, "balance_low", "2026-10-03")
    assert task.to_message(TZ)["vars"] == {"balance": 8.5, "threshold": 10.0}
    assert balance_low_tasks(replace(WHO, prepaid=False), 1200, 850, ts, RULES, TZ) == []


# --------------------------------------------------------------------------------------------
# birthday


def test_birthday_task() -> None:
    ((key, task),) = birthday_tasks(WHO, date(2026, 10, 3), set(), RULES, TZ)
    assert key == "birthday:2026"
    assert task.kind == "birthday" and task.priority == "low" and task.template == "birthday.v1"
    assert task.created_at_ms == at(2026, 10, 3)
    assert task.due_by_ms == at(2026, 10, 4)
    assert task.task_id == task_id(WHO.msisdn, "birthday", "2026")
    assert birthday_tasks(WHO, date(2026, 10, 3), {key}, RULES, TZ) == []
    assert birthday_tasks(WHO, date(2026, 10, 4), set(), RULES, TZ) == []
    assert birthday_tasks(replace(WHO, brand="mzone"), date(2026, 10, 3), set(), RULES, TZ) == []
    assert birthday_tasks(replace(WHO, birthday=None), date(2026, 10, 3), set(), RULES, TZ) == []
    assert len(birthday_tasks(WHO, date(2027, 10, 3), {key}, RULES, TZ)) == 1


def test_feb_29_birthday_on_feb_28_in_common_years() -> None:
    assert birthday_on("02-29", 2027) == date(2027, 2, 28)
    assert birthday_on("02-29", 2028) == date(2028, 2, 29)
    who = replace(WHO, birthday="02-29")
    assert len(birthday_tasks(who, date(2027, 2, 28), set(), RULES, TZ)) == 1
    assert birthday_tasks(who, date(2027, 3, 1), set(), RULES, TZ) == []
    assert birthday_tasks(who, date(2028, 2, 28), set(), RULES, TZ) == []
    assert len(birthday_tasks(who, date(2028, 2, 29), set(), RULES, TZ)) == 1


def test_day_open_tasks_combines_contract_and_birthday() -> None:
    contract = ContractTerms(date(2026, 12, 17), 120000, 0)
    keyed = day_open_tasks(WHO, contract, date(2026, 10, 3), set(), RULES, TZ)
    assert [k.key for k in keyed] == ["contract:2026-12-17:remaining_match", "birthday:2026"]
    assert all(isinstance(k, Keyed) for k in keyed)


# --------------------------------------------------------------------------------------------
# vas_trial and port_out


def test_vas_trial_task() -> None:
    ts = at(2026, 10, 3, 15)
    (task,) = vas_trial_tasks(WHO, "music_plus", date(2026, 10, 10), ts, RULES, TZ)
    assert task.kind == "vas_trial" and task.channel == "sms" and task.created_at_ms == ts
    assert task.due_by_ms == at(2026, 10, 10)
    assert task.task_id == task_id(WHO.msisdn, "vas_trial", "music_plus:2026-10-10")
    assert task.to_message(TZ)["vars"] == {"service": "music_plus", "ends_on": "2026-10-10"}


def test_port_out_task_only_without_guard() -> None:
    ts = at(2026, 10, 3, 15)
    assert port_out_tasks(WHO, ts, RULES, TZ) == []
    (task,) = port_out_tasks(WHO, ts, replace(RULES, port_out_guard=False), TZ)
    assert (task.kind, task.channel, task.priority) == ("port_out", "callcentre", "urgent")
    assert task.due_by_ms == ts + 2 * HOUR
    assert task.task_id == task_id(WHO.msisdn, "port_out", "2026-10-03")


def test_port_out_spec_defaults_when_rule_set_has_no_row() -> None:
    tasks = {k: v for k, v in _default_tasks().items() if k != "port_out"}
    rules = replace(RULES, port_out_guard=False, tasks=tasks)
    (task,) = port_out_tasks(WHO, at(2026, 10, 3, 15), rules, TZ)
    assert (task.channel, task.priority, task.due_by_ms - task.created_at_ms) == ("callcentre", "urgent", 2 * HOUR)


def test_kind_without_row_is_switched_off() -> None:
    tasks = {k: v for k, v in _default_tasks().items() if k != "yellow_light"}
    rules = replace(RULES, tasks=tasks)
    assert light_tasks(light_change("yellow", "green", at(2026, 10, 3, 9)), WHO, None, rules, TZ) == []


def test_lifecycle_tasks_dispatch() -> None:
    ts = at(2026, 10, 3, 15)
    vas = Lifecycle("e1", WHO.msisdn, ts, "vas_trial_ending", service="video", ends_on=date(2026, 10, 9))
    port = Lifecycle("e2", WHO.msisdn, ts, "port_out_request")
    assert [t.kind for t in lifecycle_tasks(vas, WHO, RULES, TZ)] == ["vas_trial"]
    assert lifecycle_tasks(port, WHO, RULES, TZ) == []
    assert [t.kind for t in lifecycle_tasks(port, WHO, replace(RULES, port_out_guard=False), TZ)] == ["port_out"]
    assert lifecycle_tasks(Lifecycle("e3", WHO.msisdn, ts, "complaint"), WHO, RULES, TZ) == []


# --------------------------------------------------------------------------------------------
# the message

COMMON_KEYS = {
    "task_id",
    "msisdn",
    "channel",
    "kind",
    "priority",
    "light",
    "previous_light",
    "reasons",
    "offer",
    "region",
    "brand",
    "segment",
    "created_at",
    "due_by",
    "rule_set",
}


def _all_tasks() -> list[Task]:
    day = date(2026, 10, 3)
    ts = at(2026, 10, 3, 9, 15)
    contract = ContractTerms(date(2026, 12, 17), 120000, 150000)
    changes: list[tuple[Light, Light]] = [("green", "yellow"), ("yellow", "red"), ("red", "black")]
    tasks = [t for prev, light in changes for t in light_tasks(light_change(light, prev, ts), WHO, contract, RULES, TZ)]
    tasks += [k.task for k in day_open_tasks(WHO, contract, day, set(), RULES, TZ)]
    tasks += balance_low_tasks(WHO, 1000, 10, ts, RULES, TZ)
    tasks += vas_trial_tasks(WHO, "video", date(2026, 10, 9), ts, RULES, TZ)
    tasks += port_out_tasks(WHO, ts, replace(RULES, port_out_guard=False), TZ)
    tasks += risk_tasks(WHO, 1200, 4000, contract, day, replace(RULES, risk_task_threshold=0.35), TZ)
    return tasks


def test_every_kind_is_covered() -> None:
    assert {t.kind for t in _all_tasks()} == set(KINDS)


@pytest.mark.parametrize("task", _all_tasks(), ids=lambda t: f"{t.kind}-{t.task_id[:6]}")
def test_message_has_exactly_the_contract_keys(task: Task) -> None:
    message = task.to_message(TZ)
    expected = COMMON_KEYS | ({"send_after", "template", "vars"} if task.channel == "sms" else set())
    assert set(message) == expected
    assert orjson.loads(orjson.dumps(message)) == message
    assert message["created_at"].endswith("+08:00") and message["due_by"].endswith("+08:00")
    assert all(set(r) == {"code", "value", "threshold"} for r in message["reasons"])
    assert message["offer"] is None or set(message["offer"]) == {"code", "detail"}
    if task.channel == "sms":
        assert message["send_after"] is None
        assert message["template"] == f"{task.kind}.v1"
        assert isinstance(message["vars"], dict)


def test_message_values() -> None:
    reasons = (Reason("arpu_below", Money(8550), Money(12000)), Reason("mou_below", Minutes(5430), Minutes(6000)))
    change = light_change("yellow", "green", at(2026, 10, 3, 9, 15), reasons)
    (task,) = light_tasks(change, WHO, None, RULES, TZ)
    message = replace(task, send_after_ms=at(2026, 10, 4, 8)).to_message(TZ)
    assert message["created_at"] == "2026-10-03T09:15:00+08:00"
    assert message["due_by"] == "2026-10-03T09:15:00+08:00"
    assert message["send_after"] == "2026-10-04T08:00:00+08:00"
    assert message["reasons"] == [
        {"code": "arpu_below", "value": 85.5, "threshold": 120.0},
        {"code": "mou_below", "value": 90.5, "threshold": 100.0},
    ]
    assert message["offer"]["code"] == "tenure_discount"
    assert message["vars"]["discount_percent"] == 85
    assert message["light"] == "yellow" and message["previous_light"] == "green"


def test_message_keeps_milliseconds() -> None:
    assert iso_time(at(2026, 10, 3, 9, 15) + 250, TZ) == "2026-10-03T09:15:00.250+08:00"


@given(st.integers(0, 4_102_444_800_000))
def test_iso_time_round_trips(ms: int) -> None:
    parsed = datetime.fromisoformat(iso_time(ms, TZ))
    assert round(parsed.timestamp() * 1000) == ms
    # The offset is the zone's at that instant (China kept summer time 1986-1991).
    assert parsed.utcoffset() == datetime.fromtimestamp(ms // 1000, TZ).utcoffset()
    if ms >= at(1992, 1, 1):
        assert parsed.utcoffset() == timedelta(hours=8)


@given(st.dates(date(1990, 1, 1), date(2090, 1, 1)))
def test_local_midnight_round_trips(day: date) -> None:
    ms = local_midnight_ms(day, TZ)
    assert local_date(ms, TZ) == day and local_date(ms - 1, TZ) == day - timedelta(days=1)


def test_light_tasks_take_the_light_engines_change_as_is() -> None:
    reasons = (Reason("arpu_below", 85.5, 120.0),)
    change = LightChange("green", "red", at(2026, 10, 3, 9), reasons, 8550, 0)
    (task,) = light_tasks(change, WHO, None, RULES, TZ)
    assert task.reasons == reasons
    assert task.to_message(TZ)["reasons"] == [{"code": "arpu_below", "value": 85.5, "threshold": 120.0}]


# --------------------------------------------------------------------------------------------
# the risk task


@pytest.mark.parametrize(("previous", "now", "light", "crossed"), [
    (None, 3500, "green", True),    # the first score is a first judgement: at or above is a crossing
    (None, 3499, "green", False),
    (3499, 3500, "green", True),
    (1000, 9000, "green", True),
    (3500, 3600, "green", False),   # already above at the close before: no second task
    (4000, 3000, "green", False),   # falling back below
    (1000, 9000, "yellow", False),  # only while green: a yellow or red one has its light task
    (1000, 9000, "red", False),
    (1000, 9000, None, False),      # not watched
])
def test_the_risk_task_fires_when_a_green_subscribers_risk_first_crosses_the_threshold(
        previous: int | None, now: int, light: Light | None, crossed: bool) -> None:
    assert risk_crossed(previous, now, 0.35, light) == crossed
    who = replace(WHO, light=light)
    tasks = risk_tasks(who, previous, now, None, date(2026, 10, 3), replace(RULES, risk_task_threshold=0.35), TZ)
    assert [t.kind for t in tasks] == (["risk"] if crossed else [])
    # Without a threshold the option is off.
    assert not risk_crossed(previous, now, None, light)
    assert risk_tasks(who, previous, now, None, date(2026, 10, 3), RULES, TZ) == []


def test_a_crossing_again_after_falling_below_is_a_new_task_of_its_own_day() -> None:
    rules = replace(RULES, risk_task_threshold=0.5)
    closes = [(date(2026, 10, 3), None, 6000), (date(2026, 10, 4), 6000, 6500), (date(2026, 10, 5), 6500, 4000),
              (date(2026, 10, 9), 4000, 5000)]
    fired = [t for day, before, now in closes for t in risk_tasks(WHO, before, now, None, day, rules, TZ)]
    assert [local_date(t.created_at_ms, TZ) for t in fired] == [date(2026, 10, 3), date(2026, 10, 9)]
    assert fired[0].task_id == task_id(WHO.msisdn, "risk", "2026-10-03") != fired[1].task_id


def test_the_risk_task_message() -> None:
    (task,) = risk_tasks(WHO, 1200, 4000, None, date(2026, 10, 3), replace(RULES, risk_task_threshold=0.35), TZ)
    message = task.to_message(TZ)
    assert (message["channel"], message["kind"], message["priority"]) == ("callcentre", "risk", "normal")
    assert message["created_at"] == "2026-10-03T00:00:00+08:00" and message["due_by"] == "2026-10-06T00:00:00+08:00"
    assert message["light"] == "green" and message["previous_light"] is None
    assert message["reasons"] == [{"code": "risk_above", "value": 0.4, "threshold": 0.35}]
    assert message["offer"]["code"] == "tenure_discount"  # the light tasks' offer: tenure 6 y
    # Scored, the message carries the score; unscored, not a field more than CONTRACT §2 says.
    assert "risk" not in message and "risk_reasons" not in message
    scored = replace(task, risk=0.4, risk_reasons=(("arpu_vs_prev", 0.31, 0.82), ("days_since_usage", None, 0.4)))
    assert scored.to_message(TZ)["risk"] == 0.4
    assert scored.to_message(TZ)["risk_reasons"] == [
        {"feature": "arpu_vs_prev", "value": 0.31, "contribution": 0.82},
        {"feature": "days_since_usage", "value": None, "contribution": 0.4}]
