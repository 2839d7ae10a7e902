# The two commands of the README, plus a few conveniences. Every target installs what it
# needs (virtualenv, packages, PostgreSQL binaries) and is safe to run again.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hokmdb-installed
PYTEST_WORKERS ?= auto

ALLURE_DIR := tools/allure
ALLURE := $(ALLURE_DIR)/node_modules/.bin/allure
# Allure 3's quality gate uses ES2025 iterator helpers; Node 20 gets them from this shim.
ALLURE_ENV := NODE_OPTIONS="--require $(CURDIR)/$(ALLURE_DIR)/iterator-helpers.cjs"
ALLURE_RESULTS ?= allure-results
ALLURE_REPORT ?= allure-report
ALLURE_MAX_FAILURES ?= 0


.PHONY: demo test install lock postgres pgbackrest topology report-tools browser report cluster-stop clean

LOCK := requirements/lock.txt
PIP := $(BIN)/python -m pip --disable-pip-version-check

# What CI tested is what deploys: every dependency comes from the lock file, pinned with
# hashes (pip refuses anything else); the project itself is installed without dependencies.
$(STAMP): pyproject.toml $(LOCK)
	@echo "hokmdb: installing the locked dependencies into $(VENV) (the first run takes a few minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@./scripts/install-locked.sh $(VENV) $(LOCK)
	@out=$$($(PIP) install --quiet --no-deps -e . 2>&1) || { echo "$$out" | grep -v '^WARNING: Location'; exit 1; }
	@$(BIN)/python -c 'import pytest_hokmdb, asyncpg, alembic, trustme'
	@test -x $(BIN)/squawk && test -x $(BIN)/bandit
	@touch $(STAMP)

install: $(STAMP)

## Re-resolve the lock file after changing dependencies in pyproject.toml (then commit both)
lock: install
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	  --no-emit-find-links --extra test --extra ci --output-file $(LOCK) pyproject.toml

postgres:
	@./scripts/ensure-postgres.sh

$(ALLURE): $(ALLURE_DIR)/package-lock.json
	@./scripts/ensure-node.sh
	@cd $(ALLURE_DIR) && npm ci --no-audit --no-fund --loglevel=error >/dev/null
	@touch $@

report-tools: $(ALLURE)

browser:
	@./scripts/ensure-browser.sh

## pgBackRest for the point-in-time recovery tests (Debian package, as root)
pgbackrest:
	@./scripts/ensure-pgbackrest.sh

## PgBouncer, Patroni and etcd for the topology tests (Debian packages, as root)
topology:
	@./scripts/ensure-topology.sh

## Allure Report 3 (single HTML file, Google Analytics tag removed) from the last run's results, then Allure's quality gate
report: report-tools
	@test -n "$$(ls -A $(ALLURE_RESULTS) 2>/dev/null)" || { \
	  echo "error: no Allure results in $(ALLURE_RESULTS)/"; \
	  echo "  hint: run make test, or a suite with them, e.g. pytest smoke/ --environment development --alluredir $(ALLURE_RESULTS)"; \
	  exit 2; }
	$(ALLURE_ENV) $(ALLURE) generate $(ALLURE_RESULTS) -o $(ALLURE_REPORT) -c allurerc.json
	@$(PYTHON) scripts/strip-report-analytics.py $(ALLURE_REPORT)
	$(ALLURE_ENV) $(ALLURE) quality-gate $(ALLURE_RESULTS) --max-failures $(ALLURE_MAX_FAILURES)

## The main job on the embedded default: cluster -> migrate to head -> seed -> smoke -> summary
demo: install postgres
	$(BIN)/hokmdb demo --environment development

## Every test: the project's own tests and the migration suite, in parallel workers
test: install postgres pgbackrest topology report-tools browser
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup -p no:cacheprovider --alluredir $(ALLURE_RESULTS) --clean-alluredir

cluster-stop: install
	$(BIN)/hokmdb cluster stop --all

clean: cluster-stop
	rm -rf .hokmdb
