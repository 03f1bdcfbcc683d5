# Two commands do all the set-up on a fresh machine:  make demo  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all demo test lint lint-docker bench chaos redis-server chromium venv clean

all: test

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# redis-server from the distribution when it is missing (the suite and the demo start their own).
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# Debian's chromium when it is missing: the Flower tests render its pages headless and fail without it.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing chromium"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: venv lint-docker
	$(VENV)/bin/ruff check producer worker simulator demo harness gateway tests
	$(VENV)/bin/mypy

# The deployment, checked without a Docker engine: the Dockerfile, every shell script, both compose files.
SHELL_SCRIPTS := $(shell git ls-files --cached --others --exclude-standard -- '*.sh') .ci/run
lint-docker: venv
	$(VENV)/bin/hadolint docker/Dockerfile
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml compose.worker.yaml

test: venv redis-server chromium lint
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q

demo: venv redis-server
	$(PY) -m demo

# A bounded fault run on loopback: 60 jobs, 3 workers, 3 simulators (one with jobs of 2.5 visibility timeouts),
# kill -9s, SIGTERMs (rolling restarts) and a Redis outage of twice the lease TTL.
chaos: venv redis-server
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m harness.chaos

# Performance targets on loopback with the simulator (BENCHMARKS.md); the serial baseline runs beside.
bench: venv redis-server
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m harness.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var test-artifacts
