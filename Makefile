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


.PHONY: demo test install install-runtime lock postgres pgbackrest topology report-tools browser report cluster-stop clean

RUNTIME_LOCK := requirements/runtime.txt
DEV_LOCK := requirements/dev.txt
PIP := $(BIN)/python -m pip --disable-pip-version-check
COMPILE := $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
  --no-emit-find-links --build-deps-for wheel

# What CI tested is what deploys. Two locks, pinned with hashes: requirements/runtime.txt is what
# deploying, verifying and backing up need (`pip install hokmdb`); requirements/dev.txt is that
# plus the test and CI tools, with the same pins. Both are installed with --no-deps, so nothing
# outside the lock can be chosen, and then proven exact and complete (scripts/install-locked.sh,
# requirements/README.md).
$(STAMP): pyproject.toml $(RUNTIME_LOCK) $(DEV_LOCK) scripts/install-locked.sh scripts/verify-install.py
	@echo "hokmdb: installing the locked dependencies into $(VENV) (the first run takes a few minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@./scripts/install-locked.sh $(VENV) $(DEV_LOCK) '.[test,ci]'
	@$(BIN)/python -c 'import pytest_hokmdb, asyncpg, alembic, trustme'
	@test -x $(BIN)/squawk && test -x $(BIN)/bandit
	@touch $(STAMP)

install: $(STAMP)

## What a deploy, rollback or smoke job needs and nothing more: the runtime lock and hokmdb
install-runtime:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@./scripts/install-locked.sh $(VENV) $(RUNTIME_LOCK) .
	@$(BIN)/python -c 'import pytest_hokmdb.cli.deploy' && test -x $(BIN)/squawk
	@touch $(VENV)/.hokmdb-runtime

## Re-resolve both locks after changing dependencies in pyproject.toml (then commit requirements/);
## LOCK_ARGS="--upgrade-package NAME" moves one package
lock: install
	$(COMPILE) $(LOCK_ARGS) --output-file $(RUNTIME_LOCK) pyproject.toml
	$(COMPILE) $(LOCK_ARGS) --extra test --extra ci --constraint $(RUNTIME_LOCK) --output-file $(DEV_LOCK) pyproject.toml

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
