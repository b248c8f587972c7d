# Two entry points, both doing all set-up on a fresh machine:
#   make demo   - train a short SAC+AE run on cartpole-swingup and evaluate it
#   make test   - run the test suite
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

.PHONY: setup demo test bench
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sacae demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	for b in benchmarks/*.py; do $(VENV)/bin/python $$b; done
