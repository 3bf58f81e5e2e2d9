# Two entry points, both self-installing on a machine with only Python and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test testnet lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check kernels consensus node benchmarks tests
	$(BIN)/ruff format --check kernels consensus node benchmarks tests

typecheck: $(STAMP)
	$(BIN)/mypy kernels consensus

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

testnet: $(STAMP)
	$(BIN)/pouw testnet --nodes 4

bench: $(STAMP)
	$(BIN)/pouw bench kernels --size 2048 --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
