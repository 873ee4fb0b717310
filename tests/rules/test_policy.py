"""Tests for rules.policy: the contact policy in CONTRACT order."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.policy import Decision, decide, in_holdout, is_guarded, is_marketing, issued, quiet_until_ms
from rules.task_message import Task, task_id
from rules.vocabulary import KINDS, Channel, Kind

TZ = ZoneInfo("Asia/Shanghai")
SALT = "churnlight"
MINUTE = 60_000
DAY = 24 * 60 * MINUTE


@dataclass(frozen=True)
class Rules:
    """Stand-in for the policy fields of the loaded rule set, with the cmcc-2010 defaults."""

    port_out_guard: bool = True
    holdout_bp: int = 500
    cooldown_days: int = 7
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)


RULES = Rules()
CHANNEL: dict[Kind, Channel] = {
    "red_light": "callcentre",
    "yellow_light": "sms",
    "black_light": "callcentre",
    "contract_expiry": "callcentre",
    "balance_low": "sms",
    "birthday": "sms",
    "vas_trial": "sms",
    "port_out": "callcentre",
    "risk": "callcentre",
}
LIGHT = ("red_light", "yellow_light", "black_light")


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    """Return epoch ms of a Shanghai wall time."""
    return int(datetime(y, mo, d, h, mi, tzinfo=TZ).timestamp()) * 1000


def _first(held: bool) -> str:
    n = 13800000000
    while in_holdout(str(n), SALT, RULES.holdout_bp) != held:
        n += 1
    return str(n)


IN = _first(True)  # an msisdn in the hold-out group
OUT = _first(False)
NOON = at(2026, 10, 3, 12)


def make(kind: Kind, *, msisdn: str = OUT, created_at_ms: int = NOON, channel: Channel | None = None) -> Task:
    channel = channel or CHANNEL[kind]
    sms = channel == "sms"
    return Task(
        task_id=task_id(msisdn, kind, "2026-10-03"),
        msisdn=msisdn,
        channel=channel,
        kind=kind,
        priority="normal",
        light="red" if kind in LIGHT else None,
        previous_light="green" if kind in LIGHT else None,
        reasons=(),
        offer=None,
        region="zunyi",
        brand="gotone",
        segment="high",
        created_at_ms=created_at_ms,
        due_by_ms=created_at_ms,
        send_after_ms=None,
        rule_set="cmcc-2010",
        template=f"{kind}.v1" if sms else None,
        vars=() if sms else None,
    )


def run(
    task: Task,
    *,
    port_out_open: bool = False,
    opted_out_sms: bool = False,
    dnc: bool = False,
    last_contact_ms: int | None = None,
    rules: Rules = RULES,
) -> Decision:
    return decide(
        task,
        port_out_open=port_out_open,
        opted_out_sms=opted_out_sms,
        dnc=dnc,
        last_contact_ms=last_contact_ms,
        salt=SALT,
        rules=rules,
        tz=TZ,
    )


def test_plain_task_is_issued_unchanged() -> None:
    task = make("red_light")
    assert run(task) == Decision(task, "issued", None)
    assert run(task).issued


# --------------------------------------------------------------------------------------------
# port-out guard


@pytest.mark.parametrize("kind", KINDS)
def test_port_out_guard(kind: Kind) -> None:
    guarded = kind in {*LIGHT, "contract_expiry", "birthday", "risk"}
    assert is_guarded(kind) == guarded
    decision = run(make(kind), port_out_open=True)
    assert (decision.status, decision.reason) == (("suppressed", "port_out_guard") if guarded else ("issued", None))
    # Switched off, or no open request: no guard.
    assert run(make(kind), port_out_open=True, rules=replace(RULES, port_out_guard=False)).issued
    assert run(make(kind), port_out_open=False).issued


def test_port_out_guard_comes_first() -> None:
    decision = run(make("yellow_light", msisdn=IN), port_out_open=True, opted_out_sms=True, last_contact_ms=NOON)
    assert decision.reason == "port_out_guard"


# --------------------------------------------------------------------------------------------
# opt-out and do-not-call


@pytest.mark.parametrize("kind", KINDS)
def test_opt_out_stops_every_sms_task(kind: Kind) -> None:
    sms = make(kind, channel="sms")
    assert (run(sms, opted_out_sms=True).status, run(sms, opted_out_sms=True).reason) == ("suppressed", "opt_out")
    assert run(sms, dnc=True).issued


@pytest.mark.parametrize("kind", KINDS)
def test_dnc_stops_every_callcentre_task(kind: Kind) -> None:
    call = make(kind, channel="callcentre")
    assert (run(call, dnc=True).status, run(call, dnc=True).reason) == ("suppressed", "dnc")
    assert run(call, opted_out_sms=True).issued


def test_opt_out_before_holdout_and_cooldown() -> None:
    assert run(make("yellow_light", msisdn=IN), opted_out_sms=True, last_contact_ms=NOON).reason == "opt_out"
    assert run(make("red_light", msisdn=IN), dnc=True, last_contact_ms=NOON).reason == "dnc"


# --------------------------------------------------------------------------------------------
# hold-out


def _reference(msisdn: str, salt: str) -> bool:
    return int(hashlib.sha256(f"{salt}:{msisdn}".encode()).hexdigest()[:8], 16) % 10000 < 500


MSISDNS = [str(13800000000 + i) for i in range(100_000)]


def test_holdout_fraction_and_stability() -> None:
    first = [in_holdout(m, SALT, 500) for m in MSISDNS]
    share = sum(first) / len(first)
    assert 0.045 <= share <= 0.055
    assert first == [in_holdout(m, SALT, 500) for m in MSISDNS]
    assert first == [_reference(m, SALT) for m in MSISDNS]
    # Pinned: a change of the formula would silently reshuffle the control group.
    assert sum(first) == 5149
    assert [m for m in MSISDNS[:50] if in_holdout(m, SALT, 500)] == ["13800000044", "13800000048", "13800000049"]
    other = [in_holdout(m, "another-salt", 500) for m in MSISDNS]
    assert 0.045 <= sum(other) / len(other) <= 0.055 and other != first


def test_holdout_bounds() -> None:
    assert not any(in_holdout(m, SALT, 0) for m in MSISDNS[:1000])
    assert all(in_holdout(m, SALT, 10000) for m in MSISDNS[:1000])


@pytest.mark.parametrize("kind", KINDS)
def test_holdout_only_for_light_tasks(kind: Kind) -> None:
    decision = run(make(kind, msisdn=IN))
    if kind in LIGHT:
        assert (decision.status, decision.reason) == ("suppressed", "holdout")
    else:
        assert decision.issued
    assert run(make(kind, msisdn=OUT)).issued


def test_holdout_before_cooldown() -> None:
    assert run(make("red_light", msisdn=IN), last_contact_ms=NOON).reason == "holdout"


# --------------------------------------------------------------------------------------------
# cooldown


@pytest.mark.parametrize(
    ("since", "suppressed"),
    [
        (0, True),
        (6 * DAY + 23 * 60 * MINUTE + 59 * MINUTE, True),
        (7 * DAY - 1, True),
        (7 * DAY, False),
        (30 * DAY, False),
        (-DAY, False),  # a contact dated after the task never blocks it (issue 13)
    ],
)
@pytest.mark.parametrize("kind", ["red_light", "yellow_light", "black_light", "contract_expiry", "risk"])
def test_cooldown_seven_days_in_event_time(kind: Kind, since: int, suppressed: bool) -> None:
    decision = run(make(kind), last_contact_ms=NOON - since)
    assert (decision.status, decision.reason) == (("suppressed", "cooldown") if suppressed else ("issued", None))


@pytest.mark.parametrize("kind", ["balance_low", "birthday", "vas_trial", "port_out"])
def test_no_cooldown_for_service_and_port_out_tasks(kind: Kind) -> None:
    assert not is_marketing(kind)
    assert run(make(kind), last_contact_ms=NOON).issued


def test_marketing_kinds() -> None:
    # CONTRACT §5: the `risk` task is a marketing task.
    assert {k for k in KINDS if is_marketing(k)} == {*LIGHT, "contract_expiry", "risk"}


@given(st.integers(-30 * DAY, 30 * DAY), st.integers(0, 30))
def test_cooldown_property(since: int, days: int) -> None:
    decision = run(make("contract_expiry"), last_contact_ms=NOON - since, rules=replace(RULES, cooldown_days=days))
    assert decision.issued == (since < 0 or since >= days * DAY)


# --------------------------------------------------------------------------------------------
# quiet hours


@pytest.mark.parametrize(
    ("created", "send_after"),
    [
        (at(2026, 10, 3, 20, 59), None),
        (at(2026, 10, 3, 21, 0), at(2026, 10, 4, 8, 0)),
        (at(2026, 10, 3, 23, 59), at(2026, 10, 4, 8, 0)),
        (at(2026, 10, 4, 0, 0), at(2026, 10, 4, 8, 0)),
        (at(2026, 10, 4, 7, 59), at(2026, 10, 4, 8, 0)),
        (at(2026, 10, 4, 7, 59) + 59_999, at(2026, 10, 4, 8, 0)),
        (at(2026, 10, 4, 8, 0), None),
        (at(2026, 12, 31, 22, 0), at(2027, 1, 1, 8, 0)),
    ],
)
def test_quiet_hours_edges(created: int, send_after: int | None) -> None:
    decision = run(make("yellow_light", created_at_ms=created))
    assert decision.issued and decision.task.send_after_ms == send_after
    assert decision.task.created_at_ms == created
    message = decision.task.to_message(TZ)
    if send_after is None:
        assert message["send_after"] is None
    else:
        assert message["send_after"].endswith("T08:00:00+08:00")


def test_quiet_hours_only_for_sms() -> None:
    night = at(2026, 10, 3, 23, 0)
    assert run(make("red_light", created_at_ms=night)).task.send_after_ms is None
    assert run(make("balance_low", created_at_ms=night)).task.send_after_ms == at(2026, 10, 4, 8)


def test_a_task_issued_before_is_deferred_as_its_decision_was() -> None:
    # The task sink re-issues a task decided before a crash: the message must be the one decided.
    for kind, hour in (("yellow_light", 23), ("yellow_light", 12), ("red_light", 23)):
        task = make(kind, created_at_ms=at(2026, 10, 3, hour))
        assert issued(task, RULES, TZ) == run(task)


def test_suppressed_task_is_not_deferred() -> None:
    decision = run(make("yellow_light", created_at_ms=at(2026, 10, 3, 23)), opted_out_sms=True)
    assert not decision.issued and decision.task.send_after_ms is None


@given(st.integers(1_600_000_000_000, 2_000_000_000_000))
def test_quiet_hours_property(created: int) -> None:
    local = datetime.fromtimestamp(created / 1000, TZ)
    send_after = run(make("birthday", created_at_ms=created)).task.send_after_ms
    quiet = local.hour >= 21 or local.hour < 8
    assert (send_after is not None) == quiet
    if send_after is not None:
        assert created < send_after <= created + 11 * 3_600_000
        assert datetime.fromtimestamp(send_after / 1000, TZ).time() == time(8, 0)


def test_quiet_hours_not_wrapping_and_empty() -> None:
    created = at(2026, 10, 3, 13, 30)
    assert quiet_until_ms(created, time(12, 0), time(14, 0), TZ) == at(2026, 10, 3, 14)
    assert quiet_until_ms(created, time(14, 0), time(16, 0), TZ) is None
    assert quiet_until_ms(created, time(8, 0), time(8, 0), TZ) is None


def test_time_zone_is_an_argument() -> None:
    created = at(2026, 10, 3, 22)  # 22:00 in Shanghai, 14:00 UTC
    assert quiet_until_ms(created, time(21), time(8), ZoneInfo("UTC")) is None
    assert quiet_until_ms(created, time(21), time(8), TZ) == created + timedelta(hours=10) // timedelta(milliseconds=1)
