"""The tools stay outside the runtime: importing any runtime module loads nothing of streams.tools."""

from __future__ import annotations

import subprocess
import sys

# Every module of the streams package except the tools themselves, the command line that adds
# their commands, and the offline fold the tools run (train, backtest), which reads history files.
PROBE = """
import importlib, pkgutil, sys
import streams
outside = ("streams.tools", "streams.cli", "streams.history")
names = []
def walk(path, prefix):
    for m in pkgutil.iter_modules(path, prefix):
        if m.name.startswith(outside):
            continue  # walk_packages would import a package to look inside it
        names.append(m.name)
        if m.ispkg:
            walk([f"{path[0]}/{m.name.rsplit('.', 1)[1]}"], m.name + ".")
walk(list(streams.__path__), "streams.")
for name in names:
    importlib.import_module(name)
print(len(names), sorted(m for m in sys.modules if m.startswith("streams.tools")))
"""


def test_no_runtime_module_imports_the_tools() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) >= 15  # the worker, app, reader, pipeline, console... were all imported
    assert loaded.strip() == "[]"
