# Set-up is the project's job: `make demo` and `make test` create the venvs on first use.
#
# Two stacks are tested:
#   .venv          the default: latest transformers 5, torch.onnx exporter   (extras dev, data, onnx)
#   .venv-optimum  Optimum's ONNX exporter, which pins transformers 4.57     (extras dev, data, optimum)
# Both are built with uv (installed from PyPI into .venv-uv), with torch/torchvision as a matching pair
# from PyPI (.ci/constraints.txt). Local pip/uv configuration is ignored: some machines carry a
# find-links entry with a CPU-only torch that PyPI's torchvision cannot load. Downloads are cached in
# uv's cache directory (UV_CACHE_DIR, default ~/.cache/uv), so rebuilding a venv is quick.
PYTHON  ?= python3
VENV    ?= .venv
VENV_OPTIMUM ?= .venv-optimum
UV_VENV := .venv-uv
UV      := $(UV_VENV)/bin/uv
CLEAN_ENV := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u UV_FIND_LINKS \
	-u UV_INDEX_URL -u UV_EXTRA_INDEX_URL -u UV_INDEX PIP_CONFIG_FILE=/dev/null UV_NO_CONFIG=1 UV_PYTHON_DOWNLOADS=never
EXTRAS_DEFAULT := dev,data,onnx
EXTRAS_OPTIMUM := dev,data,optimum
PYTEST  := -m pytest -q -n 2 -p no:cacheprovider
# `uv pip install` into VENV with EXTRAS (upgrading a venv left by an older set-up), then mark it installed.
define make_venv
	$(CLEAN_ENV) $(UV) venv -q --allow-existing --python $(PYTHON) $(1)
	$(CLEAN_ENV) VIRTUAL_ENV=$(1) $(UV) pip install -q --upgrade --constraint .ci/constraints.txt -e '.[$(2)]'
	touch $(1)/.installed
endef

.PHONY: install demo test test-default test-optimum test-all bench clean

$(UV):
	$(PYTHON) -m venv $(UV_VENV)
	$(CLEAN_ENV) $(UV_VENV)/bin/python -m pip install --quiet uv

$(VENV)/.installed: pyproject.toml setup.py .ci/constraints.txt | $(UV)
	$(call make_venv,$(VENV),$(EXTRAS_DEFAULT))

$(VENV_OPTIMUM)/.installed: pyproject.toml setup.py .ci/constraints.txt | $(UV)
	$(call make_venv,$(VENV_OPTIMUM),$(EXTRAS_OPTIMUM))

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/hf-prune train recipes/demo.yaml

test: test-default test-optimum

test-default: $(VENV)/.installed
	$(VENV)/bin/python $(PYTEST) -m "not slow"

test-optimum: $(VENV_OPTIMUM)/.installed
	$(VENV_OPTIMUM)/bin/python $(PYTEST) -m "not slow"

test-all: $(VENV)/.installed $(VENV_OPTIMUM)/.installed
	$(VENV)/bin/python $(PYTEST)
	$(VENV_OPTIMUM)/bin/python $(PYTEST)

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/analysis.py
	$(VENV)/bin/python bench/import_time.py

clean:
	rm -rf $(VENV) $(VENV_OPTIMUM) $(UV_VENV) .pytest_cache
