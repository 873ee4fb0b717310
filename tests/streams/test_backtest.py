"""The offline backtest runs the streaming pipeline's code: same light changes, side-by-side rule sets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from rules.ruleset import load_rule_set, resolve
from streams.tools import backtest
from streams.settings import Settings
from tests.conftest import env_of
from tests.streams import scripted


def _write(path: Path, partitions: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"topic": t, "value": v}) + b"\n" for t, v in scripted.history(partitions)))
    return path


def test_backtest_gives_the_light_changes_the_streaming_worker_gives(tmp_path: Path) -> None:
    settings = Settings(partitions=4, data_dir=tmp_path)
    result = backtest.run(_write(tmp_path / "h.jsonl", 4), load_rule_set("cmcc-2010"), settings)
    got = {(c["msisdn"], c["previous"], c["light"], c["at"]) for c in result.changes}
    # EXPECTED_CHANGES is what test_lights_stream asserts the worker publishes on the same history.
    assert got == scripted.EXPECTED_CHANGES
    assert len(result.changes) == len(got)
    assert result.events["duplicate"] == 1 and result.events["late_dropped"] == 1


def test_backtest_command_compares_two_rule_sets_side_by_side(settings: Settings, tmp_path: Path) -> None:
    history = _write(tmp_path / "h.jsonl", settings.partitions)
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(orjson.dumps({"msisdn": "13900000007", "photographed": True, "churn_date": "2026-08-20",
                                     "pattern": "decline_deactivate", "how": "deactivated"}) + b"\n")
    out = tmp_path / "scores.json"
    done = subprocess.run([sys.executable, "-m", "streams.cli", "backtest", str(history), "--labels", str(labels),
                           "--rules", "cmcc-2010", "--rules", "seed-004", "--json", str(out)],
                          env=env_of(settings), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    text = done.stdout.decode()
    assert "cmcc-2010" in text and "seed-004" in text and "median lead time" in text
    scores = {s["rule_set"]: s for s in orjson.loads(out.read_bytes())}
    # Without a minutes condition (seed 004), the minutes-only decline of 13900000001 raises no alarm.
    assert scores["cmcc-2010"]["light_changes"] > scores["seed-004"]["light_changes"]
    assert scores["cmcc-2010"]["churners"] == 1


def _day_lines(msisdn: str, day: int, charge: float, minutes: float) -> bytes:
    value = {"event_id": f"{msisdn}-{day}", "msisdn": msisdn, "ts": scripted.at(day), "type": "voice",
             "direction": "out", "minutes": minutes, "charge": charge}
    return orjson.dumps({"topic": "usage.events", "value": value}) + b"\n"


def _small_history(path: Path) -> Path:
    """45 days: 13900000101 photographed and busy, 13900000102 photographed and quiet, 13900000103
    not photographed and busy; two records on a topic the contract does not have."""
    lines = []
    for msisdn, photo in (("13900000101", True), ("13900000102", True), ("13900000103", False)):
        profile = {"msisdn": msisdn, "region": "zunyi", "brand": "easyown", "activated_on": "2020-01-01",
                   "updated_at": scripted.at(0, 0), "photo": {"month": "2026-06", "arpu": 150, "mou": 150} if photo else None}
        lines.append(orjson.dumps({"topic": "subscriber.profiles", "value": profile}) + b"\n")
    for day in range(45):
        lines.append(_day_lines("13900000101", day, 6, 6))
        lines.append(_day_lines("13900000102", day, 1, 1))
        lines.append(_day_lines("13900000103", day, 6, 6))
    lines.insert(5, b'{"topic": "billing.v2", "value": {"msisdn": "13900000101"}}\n')
    lines.insert(9, b'{"topic": "billing.v2", "value": {"msisdn": "13900000102"}}\n')
    path.write_bytes(b"".join(lines))
    return path


def test_photo_auto_watches_the_first_complete_window_that_meets_the_thresholds(tmp_path: Path) -> None:
    history = _small_history(tmp_path / "h.jsonl")
    rules = tmp_path / "auto.yaml"
    rules.write_text(resolve("cmcc-2010")[0].read_text()
                     .replace("name: cmcc-2010", "name: cmcc-auto").replace("photo: profile", "photo: auto"))
    settings = Settings(partitions=4, data_dir=tmp_path)
    by_profile, auto = backtest.run_many(history, ["cmcc-2010", str(rules)], settings, None)
    # The profiles photograph 101 and 102; the rule set's own photo (180 CNY and 180 minutes over the
    # first 30 days against 120 and 100) takes 101 and 103.
    assert (by_profile.name, by_profile.watched, by_profile.engine) == ("cmcc-2010", 2, "fold")
    assert (auto.name, auto.watched) == ("cmcc-auto", 2)
    folded = backtest.run_folded(history, load_rule_set(str(rules)), settings, examples=False)
    assert folded.watched == {"13900000101", "13900000103"}
    assert by_profile.unknown_topics == {"billing.v2": 2}


def test_records_on_unknown_topics_are_counted_and_shown(settings: Settings, tmp_path: Path) -> None:
    history = _small_history(tmp_path / "h.jsonl")
    done = subprocess.run([sys.executable, "-m", "streams.cli", "backtest", str(history)], env=env_of(settings),
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert "records on unknown topics" in done.stdout.decode()
    assert "billing.v2 2" in done.stderr.decode()


@pytest.mark.parametrize("content, field", [
    (b'{"msisdn": "13900000101", "churn": "2026-08-01"}\n', "churn_date"),
    (b'{"msisdn": 13900000101, "churn_date": null}\n', "msisdn"),
    (None, "no such labels file"),
])
def test_a_missing_or_malformed_labels_file_is_one_line_naming_the_field(settings: Settings, tmp_path: Path,
                                                                         content: bytes | None, field: str) -> None:
    history = _small_history(tmp_path / "h.jsonl")
    labels = tmp_path / "labels.jsonl"
    if content is not None:
        labels.write_bytes(content)
    done = subprocess.run([sys.executable, "-m", "streams.cli", "backtest", str(history), "--labels", str(labels)],
                          env=env_of(settings), capture_output=True, timeout=120)
    assert done.returncode == 2
    err = [line for line in done.stderr.decode().splitlines() if line.strip()]
    assert len(err) == 1 and field in err[0] and str(labels.name) in err[0], err
