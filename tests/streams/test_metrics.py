"""The worker's metrics match CONTRACT §9 and never carry an msisdn."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rules.events import ERRORS
from rules.labels import OTHER
from streams.metrics import END_TO_END_BUCKETS_S, INVALID, Metrics, RegionKpis

# CONTRACT §9, written out: a change there must be a deliberate change here.
CONTRACT_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "churnlight_events_total": ("counter", ("topic", "outcome")),
    "churnlight_deadletter_total": ("counter", ("topic", "error")),
    "churnlight_lights": ("gauge", ("light", "region", "brand")),
    "churnlight_light_changes_total": ("counter", ("previous", "light")),
    "churnlight_tasks_total": ("counter", ("channel", "kind", "status")),
    "churnlight_tasks_suppressed_total": ("counter", ("channel", "reason")),
    "churnlight_end_to_end_seconds": ("histogram", ("channel",)),
    "churnlight_consumer_lag": ("gauge", ("topic", "partition")),
    "churnlight_kpi_task_completion_ratio": ("gauge", ("region",)),
    "churnlight_kpi_retention_ratio": ("gauge", ("region",)),
    "churnlight_kpi_churn_ratio": ("gauge", ("region",)),
}
MSISDN_LIKE = re.compile(r"^\+?\d{5,20}$")
CONTRACT_MD = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"


def _exercise(m: Metrics, region: str = "zunyi", brand: str = "gotone") -> None:
    """Touch every metric so that each has at least one series."""
    m.event("usage.events", "applied")
    m.deadletter("usage.events", "invalid_json")
    m.light_change("green", "yellow")
    m.task("sms", "yellow_light", "issued")
    m.task("callcentre", "red_light", "suppressed", "port_out_guard")
    m.observe_end_to_end("sms", 0.2)
    m.set_lag("usage.events", 3, 42)
    m.set_lights({("yellow", region, brand): 7})
    m.set_kpis({region: RegionKpis(0.4, 0.95, 0.05)})


def _types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _value(m: Metrics, name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, value in _samples(m.render().decode()):
        if sample_name == name and sample_labels == labels:
            return value
    return None


# CONTRACT §9 lists "at least these"; the extras churnlight adds, each documented in streams/metrics.py.
EXTRA_METRICS = {"churnlight_outcomes_total": ("counter", {"result"}),
                 "churnlight_rewinds_total": ("counter", {"topic"}),
                 # The call-centre capacity queue (CONTRACT §5): queued, released, expired.
                 "churnlight_capacity_tasks_total": ("counter", {"region", "kind", "status"}),
                 "churnlight_ready": ("gauge", set()),
                 "churnlight_redis_degraded": ("gauge", set()),
                 # Each owned partition's event time: a stalled one shows no lag (issue 13).
                 "churnlight_watermark_seconds": ("gauge", {"partition"})}
# The worker process's own figures (prometheus_client's ProcessCollector, from /proc).
PROCESS_METRICS = {"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_cpu_seconds_total",
                   "process_open_fds", "process_max_fds", "process_start_time_seconds"}


def test_exposed_names_and_types_are_those_of_the_contract_and_the_documented_extras() -> None:
    m = Metrics()
    _exercise(m)
    m.outcome("unknown_task")
    m.rewind("usage.events")
    types = _types(m.render().decode())
    ours = {name: kind for name, kind in types.items() if name.startswith("churnlight_")}
    assert ours == {name: kind for name, (kind, _) in {**CONTRACT_METRICS, **EXTRA_METRICS}.items()}
    assert set(types) - set(ours) <= PROCESS_METRICS | {"process_network_receive_bytes_total",
                                                         "process_network_transmit_bytes_total"}


def test_the_process_memory_cpu_and_open_files_are_exposed() -> None:
    text = Metrics().render().decode()
    values = {name: value for name, labels, value in _samples(text) if not labels}
    assert PROCESS_METRICS <= set(values)
    assert values["process_resident_memory_bytes"] > 10 * 2**20
    assert values["process_open_fds"] >= 3


def test_watermarks_follow_the_owned_partitions() -> None:
    m = Metrics()
    m.set_watermarks({0: 1_751_338_800_000, 2: 1_751_425_200_000})
    m.set_watermarks({2: 1_751_511_600_000})  # partition 0 went to another worker
    assert [(labels, value) for name, labels, value in _samples(m.render().decode())
            if name == "churnlight_watermark_seconds"] == [({"partition": "2"}, 1_751_511_600.0)]


def test_health_gauges_say_what_health_says() -> None:
    m = Metrics()
    m.set_health(ready=False, redis_degraded=True)
    assert (_value(m, "churnlight_ready"), _value(m, "churnlight_redis_degraded")) == (0, 1)
    m.set_health(ready=True, redis_degraded=False)
    assert (_value(m, "churnlight_ready"), _value(m, "churnlight_redis_degraded")) == (1, 0)


def test_label_names_are_exactly_those_of_the_contract() -> None:
    m = Metrics()
    _exercise(m)
    seen: dict[str, set[frozenset[str]]] = {}
    for name, labels, _ in _samples(m.render().decode()):
        if not name.startswith("churnlight_"):
            continue
        family = re.sub(r"_(bucket|count|sum)$", "", name)
        if family not in CONTRACT_METRICS:  # e.g. churnlight_events_total stays itself
            family = name
        seen.setdefault(family, set()).add(frozenset(labels) - ({"le"} if name.endswith("_bucket") else set()))
    for extra in EXTRA_METRICS:
        seen.pop(extra, None)  # not exercised here; see EXTRA_METRICS
    assert seen == {name: {frozenset(labels)} for name, (_, labels) in CONTRACT_METRICS.items()}


def test_the_written_out_table_matches_contract_md() -> None:
    if not CONTRACT_MD.exists():
        pytest.skip(f"{CONTRACT_MD} not beside the repository")
    section = CONTRACT_MD.read_text(encoding="utf-8").split("## 9.", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(churnlight_\w+)` \| (\w+) \| (.*) \|$", section, flags=re.M)
    # Labels are the backticked names of a cell; the backticked values in parentheses are not.
    table = {
        name: (kind, tuple(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cell))))
        for name, kind, cell in rows
    }
    assert table == CONTRACT_METRICS


def test_free_labels_that_look_like_an_msisdn_become_invalid() -> None:
    m = Metrics()
    _exercise(m, region="+8613800000001", brand="13800000001")
    m.event("13800000002", "duplicate")
    m.deadletter("13800000003", "bad_time")
    m.set_lag("13800000004", 1, 5)
    m.set_kpis({"13800000005": RegionKpis(0.1, 0.2, 0.3)})
    m.capacity("13800000006", "red_light", "queued")
    samples = _samples(m.render().decode())
    values = {v for _, labels, _ in samples for v in labels.values()}
    assert not {v for v in values if MSISDN_LIKE.match(v)}
    assert INVALID in values
    # Regions and brands are a closed set (rules.labels): a phone number is "other".
    assert _value(m, "churnlight_lights", light="yellow", region=OTHER, brand=OTHER) == 7
    assert _value(m, "churnlight_events_total", topic=INVALID, outcome="duplicate") == 1
    assert _value(m, "churnlight_capacity_tasks_total", region=OTHER, kind="red_light", status="queued") == 1


def test_regions_and_brands_outside_the_rule_sets_lists_count_as_other_and_are_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    m.use_labels(frozenset({"zunyi"}), frozenset({"gotone", "mzone"}))
    counts = {("red", "zunyi", "gotone"): 2, ("red", "tel:13811112222", "gotone"): 1,
              ("red", "zunyi", "13811113333 "): 4, ("green", "guiyang", "mzone"): 3}
    with caplog.at_level("WARNING"):
        m.set_lights(counts)
        m.set_lights(counts)
    assert _value(m, "churnlight_lights", light="red", region="zunyi", brand="gotone") == 2
    assert _value(m, "churnlight_lights", light="red", region=OTHER, brand="gotone") == 1
    assert _value(m, "churnlight_lights", light="red", region="zunyi", brand=OTHER) == 4
    assert _value(m, "churnlight_lights", light="green", region=OTHER, brand="mzone") == 3
    noticed = [r.getMessage() for r in caplog.records if "not in the rule set's labels" in r.getMessage()]
    assert len(noticed) == 3  # once per value, not once per update
    assert not any(re.search(r"\d{5}", line) for line in noticed)


def test_without_lists_labels_are_short_words_and_capped() -> None:
    m = Metrics()
    m.set_lights({("red", f"r{i:02x}", "gotone"): 1 for i in range(70)} | {("red", "Zunyi City!", "gotone"): 1})
    regions = {labels["region"] for name, labels, _ in _samples(m.render().decode()) if name == "churnlight_lights"}
    assert len(regions) == 65 and OTHER in regions  # 64 words, the rest "other"


def test_ordinary_free_labels_pass_unchanged() -> None:
    m = Metrics()
    m.set_lights({("red", "zunyi", "mzone"): 2, ("red", "guiyang-1", "easyown"): 1})
    assert _value(m, "churnlight_lights", light="red", region="zunyi", brand="mzone") == 2
    assert _value(m, "churnlight_lights", light="red", region="guiyang-1", brand="easyown") == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.event("usage.events", "ok"),
        lambda m: m.event("usage.events", "13800000001"),
        lambda m: m.deadletter("usage.events", "13800000001"),
        lambda m: m.deadletter("usage.events", "whatever"),
        lambda m: m.light_change("green", "purple"),
        lambda m: m.light_change("none", "green"),
        lambda m: m.task("email", "red_light", "issued"),
        lambda m: m.task("sms", "13800000001", "issued"),
        lambda m: m.task("sms", "yellow_light", "dropped"),
        lambda m: m.task("sms", "yellow_light", "suppressed", "13800000001"),
        lambda m: m.task("sms", "yellow_light", "suppressed"),
        lambda m: m.task("sms", "yellow_light", "issued", "cooldown"),
        lambda m: m.task("sms", "13800000001", "suppressed", "cooldown"),
        lambda m: m.task("fax", "yellow_light", "suppressed", "cooldown"),
        lambda m: m.observe_end_to_end("fax", 0.1),
        lambda m: m.set_lights({("orange", "zunyi", "gotone"): 1}),
        lambda m: m.capacity("zunyi", "red_light", "issued"),
        lambda m: m.capacity("zunyi", "13800000001", "queued"),
    ],
)
def test_closed_labels_reject_values_outside_their_set(call) -> None:  # type: ignore[no-untyped-def]
    m = Metrics()
    with pytest.raises(ValueError):
        call(m)
    # Nothing half-recorded (the unlabelled process and health figures are always there).
    assert not [sample for sample in _samples(m.render().decode()) if sample[1]]


def test_every_dead_letter_code_is_accepted() -> None:
    m = Metrics()
    for error in ERRORS:
        m.deadletter("billing.events", error)
    assert all(_value(m, "churnlight_deadletter_total", topic="billing.events", error=e) == 1 for e in ERRORS)


def test_helpers_count_and_cache() -> None:
    m = Metrics()
    for _ in range(3):
        m.event("usage.events", "applied")
    m.event("usage.events", "late_dropped")
    m.light_change("yellow", "red")
    m.light_change("yellow", "red")
    m.task("callcentre", "black_light", "issued")
    m.task("sms", "birthday", "suppressed", "opt_out")
    m.task("sms", "birthday", "suppressed", "opt_out")
    m.task("sms", "yellow_light", "suppressed", "holdout")
    assert _value(m, "churnlight_events_total", topic="usage.events", outcome="applied") == 3
    assert _value(m, "churnlight_events_total", topic="usage.events", outcome="late_dropped") == 1
    assert _value(m, "churnlight_light_changes_total", previous="yellow", light="red") == 2
    assert _value(m, "churnlight_tasks_total", channel="callcentre", kind="black_light", status="issued") == 1
    assert _value(m, "churnlight_tasks_total", channel="sms", kind="birthday", status="suppressed") == 2
    assert _value(m, "churnlight_tasks_suppressed_total", channel="sms", reason="opt_out") == 2
    assert _value(m, "churnlight_tasks_suppressed_total", channel="sms", reason="holdout") == 1
    assert _value(m, "churnlight_tasks_suppressed_total", channel="callcentre", reason="opt_out") is None


def test_end_to_end_buckets_have_the_one_second_target_as_a_bound() -> None:
    assert 1.0 in END_TO_END_BUCKETS_S
    assert list(END_TO_END_BUCKETS_S) == sorted(END_TO_END_BUCKETS_S)
    m = Metrics()
    m.observe_end_to_end("callcentre", 0.9)
    m.observe_end_to_end("callcentre", 1.5)
    m.observe_end_to_end("callcentre", -0.2)  # producer clock slightly ahead: counts as 0
    assert _value(m, "churnlight_end_to_end_seconds_bucket", channel="callcentre", le="1.0") == 2
    assert _value(m, "churnlight_end_to_end_seconds_count", channel="callcentre") == 3
    assert _value(m, "churnlight_end_to_end_seconds_sum", channel="callcentre") == pytest.approx(2.4)


def test_set_lights_replaces_the_whole_gauge() -> None:
    m = Metrics()
    m.set_lights({("green", "zunyi", "gotone"): 10, ("yellow", "zunyi", "gotone"): 2})
    m.set_lights({("green", "zunyi", "gotone"): 11, ("red", "zunyi", "mzone"): 1})
    assert _value(m, "churnlight_lights", light="green", region="zunyi", brand="gotone") == 11
    assert _value(m, "churnlight_lights", light="red", region="zunyi", brand="mzone") == 1
    assert _value(m, "churnlight_lights", light="yellow", region="zunyi", brand="gotone") is None
    m.set_lights({})
    assert not [s for s in _samples(m.render().decode()) if s[0] == "churnlight_lights"]


def test_set_lights_adds_up_regions_that_both_become_other() -> None:
    m = Metrics()
    m.set_lights({("green", "13800000001", "gotone"): 2, ("green", "13800000002", "gotone"): 3})
    assert _value(m, "churnlight_lights", light="green", region=OTHER, brand="gotone") == 5


def test_set_lags_drops_revoked_partitions() -> None:
    m = Metrics()
    m.set_lags({("usage.events", 0): 5, ("usage.events", 1): 7})
    m.set_lags({("usage.events", 1): 3, ("billing.events", 1): 0})
    assert _value(m, "churnlight_consumer_lag", topic="usage.events", partition="0") is None
    assert _value(m, "churnlight_consumer_lag", topic="usage.events", partition="1") == 3
    assert _value(m, "churnlight_consumer_lag", topic="billing.events", partition="1") == 0
    m.set_lag("usage.events", 0, 9)  # re-assigned later: a fresh series, not the removed one
    assert _value(m, "churnlight_consumer_lag", topic="usage.events", partition="0") == 9


def test_set_kpis_replaces_and_omits_undefined_ratios() -> None:
    m = Metrics()
    m.set_kpis({"zunyi": RegionKpis(0.3, 0.9, 0.1), "guiyang": RegionKpis(0.5, 0.8, 0.2)})
    m.set_kpis({"zunyi": RegionKpis(None, 0.92, 0.08)})
    assert _value(m, "churnlight_kpi_task_completion_ratio", region="zunyi") is None
    assert _value(m, "churnlight_kpi_retention_ratio", region="zunyi") == pytest.approx(0.92)
    assert _value(m, "churnlight_kpi_churn_ratio", region="zunyi") == pytest.approx(0.08)
    assert _value(m, "churnlight_kpi_churn_ratio", region="guiyang") is None


def test_instances_are_independent_and_leave_the_default_registry_alone() -> None:
    before = {name for c in list(REGISTRY._collector_to_names) for name in REGISTRY._collector_to_names[c]}
    a, b = Metrics(), Metrics(CollectorRegistry())
    a.event("usage.events", "applied")
    assert _value(b, "churnlight_events_total", topic="usage.events", outcome="applied") is None
    after = {name for c in list(REGISTRY._collector_to_names) for name in REGISTRY._collector_to_names[c]}
    assert not {n for n in after - before if n.startswith("churnlight_")}


def test_render_is_the_registry_exposition() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    assert m.registry is registry
    text = m.render().decode()
    assert "# TYPE churnlight_events_total counter" in text
    assert "_created" not in text
