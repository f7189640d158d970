# genrec: `make run` and `make test` work on a fresh machine that reaches only the package registries.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genrec-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Extra flags for `genrec pipeline run`, e.g. make run RUN_ARGS="--dataset amazon-beauty".
RUN_ARGS ?=

.PHONY: install run test test-fast bench lint compile lock clean

# torch goes in first and alone: any other route pulls a multi-GB CUDA build where the CPU wheel
# pinned here is wanted. Everything else is pinned in requirements.lock.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/genrec pipeline run --local $(RUN_ARGS)

# Test files run on TEST_WORKERS processes (pytest-xdist), each file whole on one of them (its
# servers and fixtures start once): most tests wait on servers and subprocesses, so two workers
# on two cores take about 60% of the serial time. TEST_WORKERS=0 runs them in this process. Tests
# marked `alone` calibrate against the machine's speed: they run first, by themselves, before the
# parallel part leaves its servers, Ray workers and page cache behind.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -m alone
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not alone"

# The tests that start no server (no Redis, Prometheus, genrec serve or pipeline run): a quick loop.
test-fast: install
	$(BIN)/python -m pytest -m "not integration"

bench: install
	$(BIN)/python -m benchmarks

lint: install
	$(BIN)/ruff check genrec components pipelines tests benchmarks testbed
	$(BIN)/mypy genrec

compile: install
	$(BIN)/genrec pipeline compile --output runs/genrec_pipeline.yaml

clean:
	rm -rf runs local_outputs .pytest_cache .mypy_cache .ruff_cache

# Re-pin requirements.lock from the current venv (after changing dependencies in pyproject.toml).
lock:
	{ echo "# Exact versions that resolve together (pip freeze of a working venv, torch excluded: the"; \
	  echo "# Makefile installs torch==2.13.0 first, on its own). Regenerate with: make lock"; \
	  $(PIP) freeze --exclude-editable | grep -iv '^torch=='; } > requirements.lock
