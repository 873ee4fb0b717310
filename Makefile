# Two entry points for a fresh machine: `make demo` and `make test`. Everything they need is installed here.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo worker test system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages some tests use (promtool and prometheus, docker-compose for `config` checks),
# and libgomp1, which LightGBM (the risk score) loads at run time.
system-deps:
	bash deploy/system-deps.sh docker-compose prometheus libgomp1

demo: $(STAMP)
	$(VENV)/bin/churnlight demo

worker: $(STAMP)
	$(VENV)/bin/churnlight worker

test: $(STAMP) system-deps
	$(VENV)/bin/pytest
