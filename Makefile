# The two commands of the README, plus a few conveniences. Every target installs what it
# needs (virtualenv, packages, PostgreSQL binaries) and is safe to run again.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hokmdb-installed
PYTEST_WORKERS ?= auto

.PHONY: demo test install postgres cluster-stop clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(BIN)/python -c 'import pytest_hokmdb, asyncpg, alembic, trustme' 
	@touch $(STAMP)

install: $(STAMP)

postgres:
	@./scripts/ensure-postgres.sh

## The main job on the embedded default: cluster -> migrate to head -> seed -> smoke -> summary
demo: install postgres
	$(BIN)/hokmdb demo --environment development

## Every test: the project's own tests and the migration suite, in parallel workers
test: install postgres
	$(BIN)/pytest -n $(PYTEST_WORKERS) -p no:cacheprovider

cluster-stop: install
	$(BIN)/hokmdb cluster stop --environment development

clean: cluster-stop
	rm -rf .hokmdb
