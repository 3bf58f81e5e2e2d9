# Two entry points, both self-installing on a machine with only Python and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test testnet lint typecheck pytest bench fuzz clean

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

# Every fuzz target for FUZZ_SECONDS each (make test runs them for a few thousand inputs).
# The corpus grows under .fuzz/corpus across runs; a crash's input lands in .fuzz/crashes.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_SECONDS) --corpus .fuzz/corpus \
		--artifacts .fuzz/crashes $(if $(FUZZ_TARGET),--target $(FUZZ_TARGET))

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .fuzz
