# Two commands for a newcomer: `make demo` (platform + 2 local providers on this machine)
# and `make test` (the whole suite). Both create the virtualenv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROVIDERS ?= 2
PORT ?= 8000

.PHONY: venv test unit lint up down status demo bench

$(BIN)/dcluster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/dcluster

test: venv
	$(BIN)/lint-imports
	$(BIN)/pytest -q tests

unit: venv
	$(BIN)/pytest -q tests/unit

lint: venv
	$(BIN)/lint-imports

up: venv
	$(BIN)/dcluster up --providers $(PROVIDERS) --port $(PORT)

down: venv
	$(BIN)/dcluster down

status: venv
	$(BIN)/dcluster status

demo: venv
	$(BIN)/dcluster demo --port $(PORT)

bench: venv
	$(BIN)/python -m benchmarks
