# The two commands a newcomer runs are `make demo` and `make test`; each builds .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# Two busy processes with spinning OpenMP threads slow torch down 3x-25x on small machines.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: env demo test lint bench
env:
	bash scripts/bootstrap.sh

demo: env
	$(PY) -m taudis.cli demo $(ARGS)

test: env
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest $(ARGS)

lint: env
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
	$(PY) -m mypy

bench: env
	$(PY) bench/selection.py
	$(PY) bench/inference.py
