# The two commands a newcomer runs are `make demo` and `make test`; each builds .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# Two busy processes with spinning OpenMP threads slow torch down 3x-25x on small machines.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: env demo test lint bench images
env:
	bash scripts/bootstrap.sh

demo: env
	$(PY) -m taudis.cli demo $(ARGS)

test: env
	bash scripts/install-test-tools.sh
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	# One worker per core; a test file stays on one worker (the tool tiers share a server per module).
	$(PY) -m pytest -n auto --dist loadfile $(ARGS)

lint: env
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
	$(PY) -m mypy

# The taudis-cpu and taudis-gpu images (podman or docker), pushed with PUSH=1:
#   make images REGISTRY=europe-west4-docker.pkg.dev/PROJECT/taudis PUSH=1
images: env
	$(PY) scripts/build_images.py $(if $(REGISTRY),--registry $(REGISTRY)) $(if $(PUSH),--push) $(IMAGE_ARGS)

bench: env
	$(PY) bench/selection.py
	$(PY) bench/inference.py
