"""`churnlight --version` and the settings in `churnlight --help`, as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version

from streams.settings import Settings


def churnlight(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_version_is_the_installed_package_version() -> None:
    assert churnlight("--version").strip() == f"churnlight, version {version('churnlight')}"


def test_help_lists_every_setting_with_its_default_and_meaning() -> None:
    text = churnlight("--help")
    listed = dict(re.findall(r"^\s+(CHURNLIGHT_\w+)\s+(\S.*)$", text, flags=re.M))
    assert set(listed) == {f"CHURNLIGHT_{name.upper()}" for name in Settings.model_fields}
    assert listed["CHURNLIGHT_PARTITIONS"].endswith("[8]")
    assert listed["CHURNLIGHT_RULES"].endswith("[cmcc-2010]")
    assert "embedded broker" in listed["CHURNLIGHT_KAFKA"]
    assert all(meaning.strip("[]0123456789.") for meaning in listed.values())
