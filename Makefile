# Two entry points for a fresh machine; each sets up its own virtualenv.
#   make demo   trains LayerMatch on scikit-learn's digits (CPU, a few minutes)
#   make test   runs the test suite (CPU, 8 simulated devices)
# and for development:
#   make lint   checks formatting and lint (ruff; pyproject.toml), as CI does
#   make format rewrites the files in that format
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo

LINTED := layermatch_jax configs tests tools

.PHONY: demo test lint format install clean

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m layermatch_jax.main --config=configs/demo.py --workdir=$(WORKDIR)

test: install
	XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
	  $(PY) -m pytest -n 2 --durations=15 tests

lint: install
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/ruff check $(LINTED)

format: install
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) workdirs
