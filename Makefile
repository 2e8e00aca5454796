# Two set-up commands (README): `make demo` and `make test`. Both bootstrap .venv idempotently.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU torch wheel first: otherwise peft/transformers pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two workers: most test time is single-threaded (imports, tracing, XLA compilation), so the
# suite finishes in about half the time on CI's 2 cores. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

# The inner loop: everything not marked slow (end-to-end runs, subprocesses, multi-step
# training), 3-5 minutes on 2 cores (4m31s with lint, 503 tests, on AMD EPYC, 2026-12-04).
test-fast: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

bench: $(STAMP)
	$(PY) -m benchmarks.convert
	$(PY) -m benchmarks.methods
	$(PY) -m benchmarks.vs_pytorch
	$(PY) -m benchmarks.scale_plan
	$(PY) -m benchmarks.time_to_accuracy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
