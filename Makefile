# One entry point for people and CI. `make test` is what the README and .ci/run call.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TOOLS := .venv-tools

.PHONY: setup tools test lint unit demo sandbox bench package clean

setup: $(STAMP)

# checkov pins versions that clash with the runtime's, so it lives in its own virtualenv.
tools: $(TOOLS)/.installed

$(TOOLS)/.installed: infra/tools-requirements.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check -r infra/tools-requirements.txt
	@touch $@

# Re-installs only when the requirement files change; quick no-op otherwise.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -e .
	@touch $@

lint: setup
	$(BIN)/ruff check .

test: setup lint tools
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/multus-provisioner demo

sandbox: setup
	$(BIN)/multus-provisioner sandbox --env-file .sandbox/env

bench: setup
	$(BIN)/python -m scripts.bench

package: setup
	$(BIN)/python -m scripts.package

clean:
	rm -rf build dist .pytest_cache .ruff_cache .sandbox
