# jepa-platform: `make demo` and `make test` set everything up on a fresh machine (Python 3.10+ and make).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
RUNS ?= $(CURDIR)/runs

.PHONY: install demo test test-all lint format bench bench-gpu ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Pinned install (torch/torchvision and every dependency from constraints.txt); redone when either file changes.
# Bytecode is compiled on both cores afterwards instead of by pip on one (1:22 instead of 1:40 for a fresh venv);
# like pip, compileall skips what it cannot compile (a Python 3.12-only file in torch's tests).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt -e ".[dev]"
	$(BIN)/python -m compileall -j 0 -q $(VENV)/lib > /dev/null || true
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# Train VICReg on the built-in dataset (generated on first use); the run ends by comparing its frozen encoder with
# the same encoder randomly initialised (final_eval). Results go to the MLflow store in runs/mlflow.db (`make ui`).
demo: install
	JEPA_RUNS_DIR=$(RUNS) $(BIN)/jepa train experiment=demo

test: install
	$(BIN)/pytest -q

# Includes the slow tests (multi-process, longer training).
test-all: install
	$(BIN)/pytest -q -m "not gpu"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The GPU table (benchmarks/gpu.py: demo end to end, model step, loader, ResNet-50/ViT-B MFU, planners, syncs); on a
# machine without this venv, see the module docstring (wheels into /tmp/site, then python3 -m benchmarks.gpu).
bench-gpu: install
	$(BIN)/python -m benchmarks.gpu --out gpu_table.txt

# CPU benchmarks, one table (under 10 minutes on 2 cores); the bench extra brings lightly for benchmarks/peer_lightly.py
bench: install
	$(BIN)/python -c "import lightly" 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,bench]"
	$(BIN)/python -m benchmarks.run_all

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(RUNS)/mlflow.db

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
