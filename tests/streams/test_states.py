"""The worker's states kept serialised with a bounded cache of decoded ones (streams.states)."""

from __future__ import annotations

from datetime import date

from rules.events import Photo, Profile
from rules.state import SubscriberState, apply
from rules.ruleset import load_rule_set
from streams.settings import Settings
from streams.states import States

RULES = load_rule_set("rules/seed-004.yaml")
TZ = Settings().zone


def _profiled(region: str) -> SubscriberState:
    state = SubscriberState()
    apply(state, Profile("13800000001", region=region, brand="gotone", photo=Photo("2026-01", 5000, 600)),
          open_day=date(2026, 3, 1), tz=TZ, rules=RULES)
    return state


def test_a_touched_state_keeps_its_change_when_it_leaves_the_cache() -> None:
    states = States(hot_max=2)
    for i in range(5):
        states.put_bytes(i % 2, b"k%d" % i, _profiled("zunyi").to_bytes())
    states[b"k0"].region = "guiyang"
    states.touch(b"k0", 0)
    for i in range(1, 5):
        assert states[b"k%d" % i].region == "zunyi"  # k0 leaves the cache
    assert states.hot(b"k0") is None
    assert states[b"k0"].region == "guiyang"
    assert SubscriberState.from_bytes(states.encoded(b"k0") or b"").region == "guiyang"


def test_a_new_state_is_kept_and_an_empty_one_is_dropped_at_the_write() -> None:
    states = States(hot_max=1)
    states[b"a"] = _profiled("anshun")
    states.touch(b"a", 3)
    states[b"b"] = SubscriberState()
    states.touch(b"b", 3)
    states[b"c"] = SubscriberState()  # a and b leave the cache
    assert len(states) == 3 and b"b" in states
    assert SubscriberState.from_bytes(states.encoded(b"a") or b"").region == "anshun"
    assert states.encoded(b"b") is None and states.encoded(b"c") is None
    assert len(states) == 1 and b"b" not in states
    assert [k for k, _ in states.items()] == [b"a"]


def test_dropping_a_partition_forgets_its_states_only() -> None:
    states = States(hot_max=2)
    for i in range(6):
        states.put_bytes(i % 3, b"k%d" % i, _profiled("zunyi").to_bytes())
    states[b"new"] = _profiled("anshun")
    states.touch(b"new", 1)
    assert sorted(states.drop({1})) == [b"k1", b"k4", b"new"]
    assert sorted(states) == [b"k0", b"k2", b"k3", b"k5"]
