# The commands the README documents. Every target that needs Python or npm packages
# installs them first, so `make test` works on a fresh clone with nothing installed.

PYTHON ?= python3
VENV = .venv
NPM ?= npm
NODE ?= node
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="-x -k wheel"` (.ci/run passes
# --junitxml through this).
PYTEST_ARGS ?=

BIN = $(VENV)/bin
VENV_STAMP = $(VENV)/.installed
NODE_STAMP = node_modules/.installed
# Tests and the demo call the `keeper` console script and may spawn `python`: the
# project's venv comes first on PATH, as if it were activated.
VENV_PATH = PATH="$(CURDIR)/$(BIN):$$PATH"

.DEFAULT_GOAL := help

.PHONY: help venv .venv node_modules contracts test lint format demo bench bench-gas \
	bench-index bench-tx bench-plan clean distclean fuzz constraints

help:
	@echo "make test       run the whole test suite (installs everything first)"
	@echo "make lint       ruff check, ruff format --check, mypy --strict"
	@echo "make demo       run the keeper against a local anvil chain"
	@echo "make contracts  compile contracts/ into abis/*.json"
	@echo "make bench      run the benchmarks"
	@echo "make clean      remove build output and caches (distclean: also .venv, node_modules)"
	@echo "make constraints  re-resolve the Python packages into constraints.txt (then commit it)"

# --- installation -----------------------------------------------------------------------

venv .venv: $(VENV_STAMP)

# constraints.txt pins every Python distribution installed here (the project's dependencies
# and theirs), so two installs of the same commit get the same versions.
$(VENV_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dev]'
	touch $@

# Resolves pyproject.toml's ranges afresh (the newest versions they allow) in a scratch
# virtualenv and writes its pins to constraints.txt; `make .venv` then installs them.
CONSTRAINTS_VENV = build/constraints-venv
constraints:
	rm -rf $(CONSTRAINTS_VENV)
	$(PYTHON) -m venv $(CONSTRAINTS_VENV)
	$(CONSTRAINTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CONSTRAINTS_VENV)/bin/python -m pip install --quiet -e '.[test,dev]'
	{ echo "# Exact versions that make installs (make constraints writes this file; see README)."; \
	  $(CONSTRAINTS_VENV)/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(CONSTRAINTS_VENV)

node_modules: $(NODE_STAMP)

# `npm ci` installs exactly what package-lock.json pins (for every platform, so that it
# accepts the lockfile anywhere) and never rewrites it. After changing package.json, update
# the lockfile with `npm install --package-lock-only` and commit both.
$(NODE_STAMP): package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	touch $@

# --- build ------------------------------------------------------------------------------

contracts: $(NODE_STAMP)
	$(NODE) contracts/compile.js

# --- checks -----------------------------------------------------------------------------

test: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV_PATH) $(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The invariant campaign of tests/contracts/test_campaign.py at length: random examples (not
# the fixed ones of `make test`), thousands of steps. Override the size with
# `make fuzz CAMPAIGN_EXAMPLES=100 CAMPAIGN_STEPS=200`.
fuzz: $(VENV_STAMP) $(NODE_STAMP)
	CAMPAIGN_RANDOM=1 CAMPAIGN_EXAMPLES=$${CAMPAIGN_EXAMPLES:-40} \
		CAMPAIGN_STEPS=$${CAMPAIGN_STEPS:-150} \
		$(VENV_PATH) $(BIN)/pytest -q tests/contracts/test_campaign.py $(PYTEST_ARGS)

# --- running ----------------------------------------------------------------------------

demo: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV_PATH) $(BIN)/keeper demo

bench: bench-gas bench-index bench-tx bench-plan

bench-gas: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV_PATH) $(BIN)/python -m tests.bench.bench_gas

bench-index: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV_PATH) $(BIN)/python -m tests.bench.bench_index

bench-tx: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV_PATH) $(BIN)/python -m tests.bench.bench_tx

bench-plan: $(VENV_STAMP) $(NODE_STAMP)
	$(VENV_PATH) $(BIN)/python -m tests.bench.bench_plan

# --- cleanup ----------------------------------------------------------------------------

# abis/*.json are committed build products and are never removed here.
clean:
	rm -rf build dist .eggs *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis \
		junit*.xml
	find . -path ./$(VENV) -prune -o -path ./node_modules -prune -o \
		-name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) node_modules
