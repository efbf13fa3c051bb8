# `make test` and `make demo` work on a fresh machine: they create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck format bench clean

# _version.py holds the version, which the install records in the package metadata.
$(STAMP): pyproject.toml src/panoptic_train/_version.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/panoptic-train demo --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The suite without the tests marked slow (pyproject.toml lists what earns the mark).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# mypy over src/panoptic_train, configured in pyproject.toml ([tool.mypy]).
typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/evaluation.py
	$(BIN)/python benchmarks/forward.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/predict.py
	$(BIN)/python benchmarks/export_onnx.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/evaluation_memory.py
	$(BIN)/python benchmarks/distributed.py

clean:
	rm -rf $(VENV) out build *.egg-info
