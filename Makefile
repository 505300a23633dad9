# Two commands are all a user needs: `make demo` and `make test`. Every target sets up .venv if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.alutwin-installed

.PHONY: setup test test-fast test-slow demo bench lint typecheck format proto schemas clean

setup: $(STAMP)

# torch first, pinned to the CPU build on disk; then the project with its dev extras.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# buf lint: the .proto files against buf.yaml (STANDARD + COMMENTS; the excluded rules are listed there, with why)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint

# mypy over the six packages ([tool.mypy] in pyproject.toml); incremental through .mypy_cache
typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Every test, the long runs (marker `slow`) included: what CI runs.
test: lint typecheck
	$(BIN)/python -m pytest -q

# The quick loop while developing: everything but the long runs.
test-fast: lint typecheck
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/alutwin demo --out demo-output

bench: $(STAMP)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

proto: $(STAMP)
	$(BIN)/python proto/generate.py

schemas: $(STAMP)
	$(BIN)/python deploy/schemas/generate.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache .mypy_cache
