# Two entry points for a fresh machine: `make demo` and `make test`. Everything they need is installed here.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

# Exact versions with hashes (`make lock` writes them from pyproject.toml's ranges, for Python 3.11-3.13).
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --quiet

.PHONY: demo worker test faults system-deps lock

# The locked dependencies, then the project itself without resolving anything; `pip check` fails
# when pyproject.toml asks for something the lock lacks (then run `make lock`).
$(STAMP): pyproject.toml $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --require-hashes -r $(DEV_LOCK)
	$(VENV)/bin/pip install -q --no-deps -e .
	$(VENV)/bin/pip check
	touch $(STAMP)

# Resolve pyproject.toml's ranges against PyPI anew: the runtime lock (Docker image) and the dev lock.
lock:
	test -x $(VENV)/bin/uv || { $(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install -q 'uv>=0.13.8,<0.14'; }
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra dev -o $(DEV_LOCK)

# Debian packages some tests use (promtool and prometheus, amtool, docker-compose for `config` checks,
# chromium and a CJK font for the console's browser tests and the demo's screenshots), and libgomp1,
# which LightGBM (the risk score) loads at run time.
system-deps:
	bash deploy/system-deps.sh docker-compose prometheus prometheus-alertmanager chromium fonts-wqy-zenhei libgomp1

demo: $(STAMP)
	$(VENV)/bin/churnlight demo

worker: $(STAMP)
	$(VENV)/bin/churnlight worker

test: $(STAMP) system-deps
	$(VENV)/bin/pytest

# The full fault battery (tests/streams/test_faults.py): every crash point at three seeds.
faults: $(STAMP) system-deps
	$(VENV)/bin/pytest -m faults tests/streams/test_faults.py
