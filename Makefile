# One entry point for people and CI. `make test` is what the README and .ci/run call.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TOOLS := .venv-tools

.PHONY: setup tools test lint unit demo sandbox bench package lock clean realworld infra-check infra-lock syspkgs realcni

setup: $(STAMP)

# checkov pins versions that clash with the runtime's, so it lives in its own virtualenv.
tools: $(TOOLS)/.installed

$(TOOLS)/.installed: infra/tools-requirements.txt
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check -r infra/tools-requirements.txt
	@touch $@

# Re-installs only when the requirement files change; quick no-op otherwise. The runtime comes
# from the lock (exact versions, hashes checked), the dev tools after it; the CLI runs from this
# checkout (scripts/devenv.py: a .pth line and a launcher, no package installed).
$(STAMP): requirements.txt requirements-dev.txt scripts/devenv.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m scripts.devenv
	@touch $@

# Re-resolve the runtime ranges (requirements.in) into the lock; commit both.
lock: setup
	PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --no-emit-trusted-host -o requirements.txt requirements.in

# mypy strict on what deploys (shared/, functions/) and on the CLI: the files are pyproject's.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# The suite runs on two workers (pytest-xdist, a test file per worker at a time): the end-to-end
# tier is I/O-bound and every stack, emulator and server takes its own free ports and state.
# `realworld` first: the real components (the Kubernetes control plane, kwok, the CNI plugins, the Google
# provider) are built with progress, or found in the cache.
test: setup lint tools syspkgs realworld
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# infra/ against the real hashicorp/google provider, offline: the provider is built from the Go module
# proxy into the shared cache (realworld/terraform-provider-google; 6-11 min the first time on this
# machine, later runs reuse it), Terraform installs it from that filesystem mirror through a CLI
# configuration of ours, then `init` (lock file checked), `validate`, `terraform test` (infra/tests/)
# and the static checks (python-hcl2, checkov). `make test` runs the same test files with the rest.
infra-check: setup tools
	$(BIN)/python -m sandbox.gobuild build terraform-provider-google
	$(BIN)/python -m pytest -q tests/test_terraform.py tests/test_infra.py

# After a change of provider pin (or of Go toolchain): record the built provider's hash in the lock.
infra-lock: setup
	$(BIN)/python -m scripts.infra_check lock

# The fast tier: pure logic and contract tests that start no emulator, stack or real control plane.
unit: setup
	$(BIN)/python -m pytest -q -m "not emulator and not e2e and not real"

# `make demo DEMO_ARGS="--kube real"`: the same story on real Kubernetes, Multus, IPVLAN and Whereabouts.
demo: setup
	$(BIN)/multus-provisioner demo $(DEMO_ARGS)

# `make sandbox SCENARIO=sandbox/scenarios/tutorial.yaml` for docs/TUTORIAL.md's empty project.
sandbox: setup
	$(BIN)/multus-provisioner sandbox --env-file .sandbox/env $(if $(SCENARIO),--scenario $(SCENARIO))

# The real upstream components (kube-apiserver, etcd, kwok, ...) built from the Go modules pinned in
# realworld/*/go.sum into ~/.cache/multus-provisioner/realworld (sandbox/gobuild.py). The first build
# takes minutes; later ones, in any clone on this machine, find the cache.
realworld: setup syspkgs
	$(BIN)/python -m sandbox.gobuild build

# The real CNI plugins the data-path tests run (Multus, Whereabouts v0.7.0/v0.8.0, the reference
# plugins): built before the suite, so no test waits minutes for a first build under its timeout.
realcni: setup
	$(BIN)/python -m sandbox.gobuild build cni-plugins multus whereabouts whereabouts-0.8

# Debian packages of the real CNI data path (user-mode-linux, kmod, ping, arping), installed with
# apt-get only when missing (scripts/syspkgs.py says what to do where it cannot).
syspkgs:
	$(PYTHON) -m scripts.syspkgs

bench: setup
	$(BIN)/python -m scripts.bench

package: setup
	$(BIN)/python -m scripts.package

clean:
	rm -rf build dist .pytest_cache .ruff_cache .sandbox
