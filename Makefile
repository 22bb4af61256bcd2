# The two commands of the README: `make dev` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev test test-under-load lint format bench

install:
	scripts/bootstrap.sh

## Local stack (PostgreSQL, S3, registry, nginx, Prometheus) and the Dagster UI on 127.0.0.1:3000.
dev: install
	scripts/dev.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Lint, then the whole suite against real services (slow end-to-end tests included).
test: lint
	$(BIN)/pytest

## `make test` three times in a row beside two CPU-bound processes (a busy CI machine); they end with it.
test-under-load:
	scripts/test-under-load.sh

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/load_time.py
