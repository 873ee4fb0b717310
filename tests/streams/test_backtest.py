"""The offline backtest runs the streaming pipeline's code: same light changes, side-by-side rule sets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from rules.ruleset import load_rule_set
from streams import backtest
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
