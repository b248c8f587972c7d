# Two entry points, both doing all set-up on a fresh machine:
#   make demo   - train a short SAC+AE run on cartpole-swingup and evaluate it
#   make test   - run the test suite (all of it, integration tests included)
# and, for development:
#   make test-fast - the unit tests only (-m "not integration": no subprocesses, training or exports)
#   make lint      - ruff (pyflakes, pycodestyle, import order, docstrings; config in pyproject.toml)
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first, pinned: on these machines pip takes the local CPU wheel instead of
	# resolving a bare `torch` to several GB of CUDA packages.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[train,dev]'
	touch $(STAMP)

.PHONY: setup demo test test-fast lint bench
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sacae demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	for b in benchmarks/*.py; do $(VENV)/bin/python $$b; done
