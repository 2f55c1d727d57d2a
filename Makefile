# The two commands of the README: `make demo` (the local stack with the operator and the
# example TaskRuns) and `make test` (lint, types, and every test against the real stack).
.PHONY: setup demo down lint test bench

setup:
	./devstack/setup.sh

demo: setup
	taskrun-dev up --examples

down:
	taskrun-dev down

lint:
	ruff check .
	ruff format --check .
	mypy
	lint-imports

test: setup lint
	python3 -m pytest -q -p no:cacheprovider
