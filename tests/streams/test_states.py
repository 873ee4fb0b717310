"""The worker's states held serialised with a bounded cache of decoded ones (streams.runtime.states)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings as hyp_settings
from hypothesis import strategies as st

from rules.ruleset import load_rule_set
from rules.subscriber import SubscriberState
from streams.runtime.codec import decode_state, encode_state
from streams.runtime.states import States
from streams.runtime.store import Store, partition_of, partitions_of
from streams.settings import Settings
from streams.tools import backtest
from streams.tools.sim import SimConfig
from streams.tools.sim.run import write_history
from tests.streams.test_codec import states

KEYS = [b"1380000000%d" % i for i in range(6)]

# One step on the container: (what, which key, a state to load or a number to change it by).
steps = st.lists(st.tuples(st.sampled_from(["load", "change", "peek_keep", "write", "pop"]),
                           st.sampled_from(KEYS), states(), st.integers(1, 500)), max_size=40)


def _expected_equal(found: SubscriberState, expected: SubscriberState) -> bool:
    return found == expected and encode_state(found) == encode_state(expected)


@hyp_settings(max_examples=150, deadline=None)
@given(steps, st.integers(1, 4))
def test_every_state_reads_back_as_last_changed_whatever_the_cache_evicts(
        script: list[tuple[str, bytes, SubscriberState, int]], hot_max: int) -> None:
    held = States(hot_max)
    model: dict[bytes, SubscriberState] = {}  # the state each key should have
    for what, key, loaded, n in script:
        if what == "load":
            if loaded.is_empty():
                continue  # never in the changelog: the write of an empty state is a tombstone
            data = encode_state(loaded)
            held.put(key, data)
            model[key] = decode_state(data)
        elif what == "change":
            state = held.fetch(key)
            state.add_to_day(739_000 + n % 40, n, n)
            held.touch(key)
            model.setdefault(key, SubscriberState()).add_to_day(739_000 + n % 40, n, n)
        elif what == "peek_keep" and key in model and key in held:
            state = held.peek(key)
            state.remember(n * 7919, 29_000_000 + n)
            held.keep(key, state)
            model[key].remember(n * 7919, 29_000_000 + n)
        elif what == "write":
            data = held.encoded(key)
            expected = model.get(key)
            if expected is None or expected.is_empty():
                assert data is None and key not in held
                model.pop(key, None)
            else:
                assert data is not None and _expected_equal(decode_state(data), expected)
        elif what == "pop":
            held.pop(key)
            model.pop(key, None)
        assert len(held.hot) <= hot_max
        for k, expected in model.items():
            if expected.is_empty():
                assert k not in held or held.peek(k).is_empty()  # an empty state may be dropped
            else:
                assert _expected_equal(held.peek(k), expected)
        assert set(held) == {k for k, s in model.items() if k in held or not s.is_empty()}
        assert len(held) == len(set(held))


def test_a_state_changed_and_evicted_is_written_with_its_change() -> None:
    held = States(1)
    for key in KEYS[:3]:
        held.put(key, encode_state(SubscriberState()))
    state = held.fetch(KEYS[0])
    state.region = "zunyi"
    held.touch(KEYS[0])
    held.fetch(KEYS[1])  # the first leaves the cache, encoded
    assert KEYS[0] not in held.hot
    data = held.encoded(KEYS[0])
    assert data is not None and decode_state(data).region == "zunyi"


def test_a_worker_with_a_tiny_cache_gives_the_lights_and_tasks_of_one_that_keeps_every_state_decoded(
        tmp_path: Path) -> None:
    """The backtest runs the worker's processor: with 3 states decoded at a time of 300 subscribers,
    every event of the history goes through decoding, encoding on eviction and `keep` at the closes."""
    history = tmp_path / "h.jsonl"
    write_history(SimConfig(subscribers=300, days=50, seed=5, activity=0.3), history)
    rules = load_rule_set("cmcc-2010")
    base = Settings().model_copy(update={"partitions": 4})
    whole = backtest.run(history, rules, base)
    tiny = backtest.run(history, rules, base.model_copy(update={"hot_states": 3}))
    assert whole.changes and whole.decisions  # the history lights subscribers and decides tasks
    assert tiny.changes == whole.changes
    assert [d.task.task_id for d in tiny.decisions] == [d.task.task_id for d in whole.decisions]
    assert (tiny.final_lights, tiny.events, tiny.watched) == (whole.final_lights, whole.events, whole.watched)


@given(st.lists(st.binary(max_size=24), max_size=60), st.integers(1, 64))
def test_partitions_of_many_keys_are_kafkas_default_partitioner(keys: list[bytes], partitions: int) -> None:
    assert partitions_of(keys, partitions).tolist() == [partition_of(key, partitions) for key in keys]


def test_a_store_drops_exactly_the_subscribers_of_the_partitions_let_go() -> None:
    store = Store(4, 10)
    keys = [b"1380000%04d" % i for i in range(400)] + [b"86138%d" % i for i in range(7)]
    for key in keys:
        store.states.put(key, encode_state(SubscriberState()))
    for key in keys[::40]:
        store.states.get(key)  # some decoded too
    store.drop({1, 3})
    assert sorted(store.states) == sorted(k for k in keys if partition_of(k, 4) in (0, 2))
