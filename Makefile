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
	$(BIN)/mypy kernels consensus node

# The explorer's tests drive Debian's Chromium through Playwright (no browser download).
CHROMIUM := /usr/bin/chromium
.PHONY: browser
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the explorer's browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "error: the explorer's browser tests need Chromium at $(CHROMIUM):" \
	      "install it as root with 'apt-get install chromium' (Debian), then run make test again" >&2; \
	    exit 1; \
	  fi; \
	fi

pytest: $(STAMP) browser
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
