# patronage — one Makefile for install, services, lint, typecheck, test, bench, demo.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PATRONAGE_PYTHON := $(abspath $(PY))

.PHONY: chromium install services services-down services-status lint format typecheck unit test bench demo demo-stop schemas clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

# The hot pure modules compiled with mypyc into build/mypyc (patronage/compiled.py),
# again whenever a module of patronage/models changes. Without a C compiler the
# install goes on and the sources run (`make test` asks for the build: set
# PATRONAGE_COMPILED=off there).
build/mypyc/manifest.json: $(VENV)/.installed $(wildcard patronage/models/*.py) patronage/compiled.py
	$(PY) -m patronage.compiled build || echo "[install] mypyc build failed (above): the worker runs the Python sources"

install: $(VENV)/.installed build/mypyc/manifest.json

services: install
	deploy/services.sh up

services-down:
	deploy/services.sh down

services-status:
	deploy/services.sh status

lint: install
	$(VENV)/bin/ruff check patronage tests benchmarks
	$(VENV)/bin/ruff format --check patronage tests benchmarks

format: install
	$(VENV)/bin/ruff format patronage tests benchmarks
	$(VENV)/bin/ruff check --fix patronage tests benchmarks

typecheck: install
	$(VENV)/bin/mypy patronage/models patronage/streams patronage/compiled.py

unit: install
	$(VENV)/bin/pytest tests/unit -q

# Debian's Chromium, for the dashboard's browser test.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

# The whole suite: real Kafka and Redis (and Chromium) are set up first, on
# the compiled modules a worker runs (PATRONAGE_COMPILED=off: on the sources).
test: export PATRONAGE_COMPILED ?= on
test: services chromium
	$(VENV)/bin/pytest -q

# The Quix Streams comparison job runs in a virtualenv of its own: quixstreams
# pins newer pydantic and confluent-kafka than the worker uses.
$(VENV)-quix/.installed:
	python3 -m venv $(VENV)-quix
	$(VENV)-quix/bin/pip install -q quixstreams==3.28.1 redis
	touch $@

bench: services $(VENV)-quix/.installed
	$(PY) -m benchmarks.bench

schemas: install
	$(PY) -m patronage.streams.cli schemas export --out schemas

demo: services
	deploy/demo.sh

demo-stop:
	deploy/demo.sh stop

clean: services-down
	rm -rf .services .patronage test-artifacts
