# Quick start: `make serve` (embedded service) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup serve test lint typecheck check bench clean

$(BIN)/actlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so pip takes the wheels this machine has on disk.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/actlab

setup: $(BIN)/actlab

serve: setup
	$(BIN)/actlab serve

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check actlab app worker tests bench
	$(BIN)/ruff format --check actlab app worker tests bench

typecheck: setup
	$(BIN)/mypy

check: lint typecheck test

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .actlab actlab.db actlab.db-*
