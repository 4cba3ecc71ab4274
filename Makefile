# The README's two Quickstart commands: `make run` and `make test` (lint, then the fast lane: every test that starts no
# Ray). `make test-all` is lint and the whole suite in four pytest processes: the fast lane; the `ray` lane (real
# local Ray Train and Data runs, a Ray head for `ray job submit`); the Tune tests (a fresh driver, as `rfgan tune`
# is); the `cluster` lane (several Ray nodes and a local S3 endpoint). It is what CI runs (.ci/run). Each installs
# what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-all lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/rfgan train

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/python -m pytest -m "not ray"

test-all: install lint
	$(BIN)/python -m pytest -m "not ray"
	$(BIN)/python -m pytest -m "ray and not cluster and not tune" --durations=5
	$(BIN)/python -m pytest -m tune --durations=5
	$(BIN)/python -m pytest -m cluster --durations=5
