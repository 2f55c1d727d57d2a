# The two commands of the README: `make demo` (the local stack with the operator and the
# example TaskRuns) and `make test` (lint, types, and every test against the real stack);
# `make bench` runs the benchmark suite (README, "Benchmarks").
.PHONY: setup setup-tests demo down lint test bench

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

test: setup-tests lint
	python3 -m pytest -q -p no:cacheprovider

bench: setup
	python3 benchmarks/suite.py $(BENCH_ARGS)
