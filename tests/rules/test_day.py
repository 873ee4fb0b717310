"""Tests for rules.day: what a close, an opening, a lifecycle or a billing event brings (CONTRACT §5), no broker."""

from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from rules import day as rules_day
from rules.events import Billing, Contract, Lifecycle, LifecycleType, Photo, Profile, Usage
from rules.ruleset import load_rule_set
from rules.schedule import CloseDay, PartitionClock, due, start_days
from rules.state import SubscriberState, apply, day_start_ms

TZ = ZoneInfo("Asia/Shanghai")
CMCC = load_rule_set("cmcc-2010")
MSISDN = "13800000001"
KEY = MSISDN.encode()
H = 3_600_000
FIRST = date(2026, 7, 1)
OPEN = FIRST + timedelta(days=40)  # the partition has seen the whole window
PHOTO = Photo("2026-06", 20000, 12000)  # 200 CNY, 200 min
# Ends 75 days after OPEN: the `remaining_match` stage (60 to 90 days left) is due when OPEN opens.
CONTRACT = Contract(OPEN + timedelta(days=75), 100000)


def subscriber(photo: Photo | None = PHOTO, contract: Contract | None = None, prepaid: bool = False,
               spend_fen: int = 0) -> SubscriberState:
    s = SubscriberState()
    apply(s, Profile(MSISDN, "zunyi", "gotone", activated_on=date(2020, 1, 1), prepaid=prepaid, contract=contract,
                     photo=photo), open_day=OPEN - timedelta(days=1), tz=TZ, rules=CMCC)
    if spend_fen:
        ts = day_start_ms(OPEN - timedelta(days=5), TZ) + 12 * H
        apply(s, Usage("u1", MSISDN, ts, "voice", "out", 12000, spend_fen), open_day=OPEN - timedelta(days=1),
              tz=TZ, rules=CMCC)
    s.light = "green"
    return s


def life(s: SubscriberState, kind: LifecycleType, ts_ms: int) -> bool:
    """Apply a lifecycle event; say whether it changed what the light depends on."""
    before = (s.churned, s.churned_ms, s.port_out_request_ms, s.contract)
    apply(s, Lifecycle(f"l-{kind}-{ts_ms}", MSISDN, ts_ms, kind), open_day=OPEN, tz=TZ, rules=CMCC)
    return (s.churned, s.churned_ms, s.port_out_request_ms, s.contract) != before


def close(s: SubscriberState, day: date = OPEN, first_day: date | None = FIRST,
          whole: bool = True) -> list[tuple[bytes, SubscriberState, rules_day.LightChange | None, bool]]:
    return list(rules_day.judge_close([(KEY, s)], day_start_ms(day, TZ), day, first_day, whole, CMCC))


def test_a_day_close_and_the_tasks_of_the_day_that_opens_carry_its_local_midnight() -> None:
    s = subscriber(contract=CONTRACT)  # no usage in the window: red
    [(_, _, change, moved)] = close(s)
    assert change is not None and moved
    assert change.light == "red" and change.at_ms == day_start_ms(OPEN, TZ)
    [light_task] = rules_day.light_tasks(MSISDN, s, change, CMCC, TZ, None)
    [stage] = rules_day.day_open(MSISDN, s, OPEN, CMCC, TZ)
    assert light_task.task.created_at_ms == stage.task.created_at_ms == day_start_ms(OPEN, TZ)


def test_the_closing_days_evaluations_come_before_the_opening_days_triggers() -> None:
    # The opening day's contract task sees the light the close gave, in the order the schedule runs them.
    clock = PartitionClock()
    clock.observe("usage.events", day_start_ms(FIRST, TZ))
    start_days(clock, OPEN - timedelta(days=1), TZ)
    list(due(clock, day_start_ms(OPEN - timedelta(days=1), TZ), TZ, CMCC.window_days))
    s = subscriber(contract=CONTRACT)
    [step] = list(due(clock, day_start_ms(OPEN, TZ) + H, TZ, CMCC.window_days))
    assert isinstance(step, CloseDay) and step.whole
    close(s, step.day, clock.first_day, step.whole)
    [stage] = rules_day.day_open(MSISDN, s, step.day, CMCC, TZ)
    assert stage.task.kind == "contract_expiry" and stage.task.light == "red"


def test_nobody_is_judged_on_thresholds_before_the_window_is_whole() -> None:
    s = subscriber()  # no usage: red once judged
    assert close(s, whole=False) == []  # steady green: not even looked at
    assert close(s, first_day=OPEN - timedelta(days=10)) == [] and s.light == "green"  # judged: no threshold
    [(_, _, change, _)] = close(s)
    assert change is not None and change.light == "red"


def test_a_lifecycle_event_re_evaluates_the_light_at_once_at_its_own_time() -> None:
    s = subscriber(spend_fen=30000)
    ts = day_start_ms(OPEN, TZ) + 9 * H
    changed = life(s, "port_out_request", ts)
    effects = rules_day.on_lifecycle(MSISDN, s, Lifecycle("l", MSISDN, ts, "port_out_request"), changed, OPEN, FIRST,
                                     CMCC, TZ, 1234)
    assert [(c.light, c.at_ms) for c in effects.changes] == [("red", ts)] and effects.touched
    # The port-out guard holds the red light's task, and the trigger's Kafka time goes with it.
    assert [(d.task.kind, d.port_out_open, d.trigger_ts_ms) for d in effects.decide] == [("red_light", True, 1234)]
    replayed = rules_day.on_lifecycle(MSISDN, s, Lifecycle("l", MSISDN, ts, "port_out_request"), False, OPEN,
                                      FIRST, CMCC, TZ, None)
    assert replayed.changes == [] and replayed.decide == []


def test_the_policy_sees_the_state_after_the_event() -> None:
    # `ported_out` closes the port-out request: the black light's win-back task is not held by the guard.
    s = subscriber(spend_fen=30000)
    life(s, "port_out_request", day_start_ms(OPEN, TZ) + 9 * H)
    ts = day_start_ms(OPEN, TZ) + 10 * H
    changed = life(s, "ported_out", ts)
    effects = rules_day.on_lifecycle(MSISDN, s, Lifecycle("l2", MSISDN, ts, "ported_out"), changed, OPEN, FIRST,
                                     CMCC, TZ, None)
    assert [c.light for c in effects.changes] == ["black"]
    assert [(d.task.kind, d.port_out_open) for d in effects.decide] == [("black_light", False)]


def test_a_stage_is_used_up_by_its_first_decision() -> None:
    s = subscriber(contract=CONTRACT)
    assert [d.task.kind for d in rules_day.day_open(MSISDN, s, OPEN, CMCC, TZ)] == ["contract_expiry"]
    assert rules_day.day_open(MSISDN, s, OPEN + timedelta(days=1), CMCC, TZ) == []  # same stage, next day
    assert s.used


def test_contract_balance_and_lifecycle_tasks_go_to_every_subscriber_with_a_profile() -> None:
    # Not photographed: never judged, yet its contract stage and balance crossing are tasks.
    s = subscriber(photo=None, contract=CONTRACT, prepaid=True)
    assert close(s) == []
    assert [d.task.kind for d in rules_day.day_open(MSISDN, s, OPEN, CMCC, TZ)] == ["contract_expiry"]
    ts = day_start_ms(OPEN, TZ) + 12 * H
    for n, balance in enumerate((5000, 500)):
        event = Billing(f"b{n}", MSISDN, ts + n, "balance", None, balance)
        applied = apply(s, event, open_day=OPEN, tz=TZ, rules=CMCC)
        decided = rules_day.on_billing(MSISDN, s, applied, ts + n, CMCC, TZ, None)
    assert [d.task.kind for d in decided] == ["balance_low"]
    # Without a profile: nothing.
    bare = SubscriberState()
    assert rules_day.day_open(MSISDN, bare, OPEN, CMCC, TZ) == []


@given(st.lists(st.integers(min_value=0, max_value=2000), min_size=2, max_size=8))
def test_balance_low_fires_once_per_crossing_from_at_least_10_to_below(balances_cny: list[int]) -> None:
    s = subscriber(photo=None, prepaid=True)
    ts = day_start_ms(OPEN, TZ) + 12 * H
    fired = []
    for n, cny in enumerate(balances_cny):
        applied = apply(s, Billing(f"b{n}", MSISDN, ts + n * 60_000, "balance", None, cny * 100), open_day=OPEN,
                        tz=TZ, rules=CMCC)
        fired.append(bool(rules_day.on_billing(MSISDN, s, applied, ts + n * 60_000, CMCC, TZ, None)))
    expected = [False] + [a >= 10 > b for a, b in zip(balances_cny, balances_cny[1:])]
    assert fired == expected
