# Vigil. `make help` lists the targets. Everything installs what it needs, as root on Debian.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the lab, the tests and the fence need; nginx and redis are real apps the e2e
# tests supervise (their own services are kept from starting at install: Vigil starts them).
DEB_PACKAGES := iproute2 nftables procps curl util-linux nginx-light redis-server redis-tools

.DEFAULT_GOAL := help
.PHONY: help setup deps run test test-unit test-integration test-e2e test-deploy lint typecheck schemas \
        bench bench-flood chaos lab-down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

deps: ## install the Debian packages (root; skipped when present)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    own_policy=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' \
	      > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1; }; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing; rc=$$?; \
	    [ -z "$$own_policy" ] || rm -f /usr/sbin/policy-rc.d; [ $$rc = 0 ] || exit $$rc; \
	  else echo "missing Debian packages (install as root): $$missing"; fi; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)

.stamp-venv: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: deps .stamp-venv ## create .venv and install Vigil with its dev tools

run: setup ## the lab demo: 3 nodes, kill one, print the failover timeline
	$(BIN)/vigil lab demo -f examples/lab.yaml

test: setup ## the whole suite: lint, types, unit, integration, e2e (e2e needs root)
	$(MAKE) --no-print-directory lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider -m "not deploy" tests

test-unit: setup ## unit tests only (pure logic, no root)
	$(BIN)/pytest -q tests/unit

test-integration: setup ## integration tests against a real nats-server
	$(BIN)/pytest -q tests/integration

test-e2e: setup ## end-to-end tests in network namespaces (root)
	$(BIN)/pytest -q tests/e2e

test-deploy: setup ## the compose deployment in Docker, two hosts, failover (root; installs Docker)
	$(BIN)/pytest -q -p no:cacheprovider -s -m deploy tests/deploy

lint: setup ## ruff and import-linter
	$(BIN)/ruff check services schemas tests bench
	$(BIN)/ruff format --check services schemas tests bench
	$(BIN)/lint-imports

typecheck: setup ## mypy --strict on the product code
	$(BIN)/mypy

schemas: setup ## regenerate schemas/json from the Structs
	$(BIN)/python -m vigil.wire.generate

bench: setup ## failover and scale benchmarks; writes docs/benchmarks.md
	$(BIN)/python -m bench

bench-flood: setup ## floods vs leases: longest gap between grants under a 10k msg/s flood; docs/security.md
	$(BIN)/python -m bench.flood

chaos: setup ## randomized fault schedules over the lab (root; SCHEDULES=200 SEED=1); docs/reliability.md
	$(BIN)/python -m bench.chaos --schedules $(or $(SCHEDULES),200) --seed $(or $(SEED),1)

lab-down: ## remove a lab left behind
	$(BIN)/vigil lab down

clean: lab-down ## remove the venv and caches
	rm -rf $(VENV) .stamp-venv .pytest_cache .mypy_cache .ruff_cache
