# The two commands of the README: `make demo` (the local stack with the operator and the
# example TaskRuns) and `make test` (lint, types, and every test against the real stack);
# `make bench` runs the benchmark suite (README, "Benchmarks").
.PHONY: setup setup-tests demo down lint test test-matrix bench lock

# Everything runs from the project's own environment (.venv, made by setup from
# requirements.lock), never the system interpreter.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

# The demo needs the control plane only; the tests also need helm, promtool and CRDs.
setup:
	./devstack/setup.sh

setup-tests:
	./devstack/setup.sh --for-tests

demo: setup
	taskrun-dev up --examples

down:
	taskrun-dev down

lint:
	ruff check .
	ruff format --check .
	mypy
	lint-imports

# Two pytest-xdist workers, each with its own session stack: the suite mostly waits on
# the servers (half a core on average, one worker), so two halve its time.  A file's tests
# stay on one worker (its module fixtures: a stack, an operator of its own), files taken
# in collection order (the long e2e files first); TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2

test: setup-tests lint
	python -m pytest -q -p no:cacheprovider --durations=25 \
		-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The lifecycle, limits and reliability suites on each broker/backend combination the
# README lists as supported, one session stack after the other (README, "Brokers and
# backends"); exits non-zero if any combination failed.
MATRIX := redis/redis rabbitmq/redis rabbitmq/postgresql
MATRIX_SUITES := tests/e2e/test_lifecycle.py tests/e2e/test_control.py \
	tests/e2e/test_hostile.py tests/e2e/test_tenancy.py tests/e2e/test_priority.py

test-matrix: setup-tests
	@failed=""; for pair in $(MATRIX); do \
		echo "== broker/backend $$pair"; \
		TASKRUN_E2E_BROKER=$${pair%/*} TASKRUN_E2E_BACKEND=$${pair#*/} \
			python -m pytest -q -p no:cacheprovider $(MATRIX_SUITES) $(PYTEST_ARGS) \
			|| failed="$$failed $$pair"; \
	done; \
	echo "== test_brokers.py, RabbitMQ's faults on every combination"; \
	TASKRUN_E2E_MATRIX=1 python -m pytest -q -p no:cacheprovider tests/e2e/test_brokers.py \
		$(PYTEST_ARGS) || failed="$$failed test_brokers"; \
	if [ -n "$$failed" ]; then echo "failed on:$$failed"; exit 1; fi

bench: setup
	python benchmarks/suite.py $(BENCH_ARGS)
	python benchmarks/admission.py
	python benchmarks/gateway_waits.py
	python benchmarks/finished.py --runs $(FINISHED_RUNS) --variants $(FINISHED_BASELINE),.

# Finished runs kept for `finished.py` (issue 19's scale; creating them takes minutes),
# beside the operator before finished runs left Kopf's watch.
FINISHED_RUNS ?= 100000
FINISHED_BASELINE ?= 2f21ea9

# Refresh requirements.lock from pyproject.toml (newest versions its ranges allow), then
# `make setup` installs it.
lock:
	uv pip compile pyproject.toml devstack/lock/build.in --extra dev --generate-hashes \
		--python-version 3.11 --python-platform linux -o requirements.lock
