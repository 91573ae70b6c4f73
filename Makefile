# bvit-edge: the two commands of the README.
#   make demo   set up everything, then run the whole pipeline on the built-in digits data
#   make test   set up everything, then run the test suite
# For contributors: make lint (ruff + mypy, fails on any finding), make lint-report (counts, never fails).
# Each creates/refreshes .venv, installs torch (CPU build) first, then the project editable, and the
# Debian packages later steps need (cross compilers, qemu-user, debootstrap). Re-running is fast: the
# dependency install is redone only when pyproject.toml or this Makefile change.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_VERSION := 2.13.0
APT_PACKAGES := gcc-aarch64-linux-gnu g++-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user debootstrap
STAMP := $(VENV)/.bvit-edge-deps
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: all setup apt install demo test test-fast lint lint-report clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# Third-party dependencies (torch first, CPU build, so nothing pulls a CUDA build).
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q hatchling editables pytest hypothesis
	$(PIP) install -q -e ".[test,lint]"
	touch $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The project itself, editable: bvit_edge/{export,runtime,targets,cli.py} are committed symlinks, so the
# source tree imports exactly like the wheel and edits need no reinstall.
install: apt $(STAMP)
	@$(PY) -c "import bvit_edge, pathlib, sys; sys.exit(pathlib.Path(bvit_edge.__file__).resolve().parent != pathlib.Path('bvit_edge').resolve())" 2>/dev/null \
	  || $(PIP) install -q --no-deps --no-build-isolation -e .

setup: install

demo: install
	$(VENV)/bin/bvit-edge demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS) tests

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS) tests

# Lint and types, configured in pyproject.toml ([tool.ruff], [tool.mypy]): rules, format, types.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The same findings counted per rule, never failing (to see what is left while cleaning up).
lint-report: install
	-$(PY) -m ruff check . --statistics
	-$(PY) -m ruff format --check . | tail -n 1
	-$(PY) -m mypy | tail -n 1

clean:
	rm -rf $(VENV) build dist
