# Set-up is the project's job: `make demo` and `make test` create .venv on first use.
#
# torch/torchvision come from PyPI as a matching pair. Some machines carry a pip config whose
# find-links holds a CPU-only torch build that PyPI's torchvision cannot load; we ignore local pip
# configuration while creating the venv so a fresh clone behaves the same everywhere.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP_ENV := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(PY) -m pip install --quiet --upgrade pip
	$(PIP_ENV) $(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hf-prune train recipes/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) bench/analysis.py

clean:
	rm -rf $(VENV) .pytest_cache
