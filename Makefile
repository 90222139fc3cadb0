# Two commands on a fresh machine (each creates .venv when it is missing and reuses it otherwise):
#   make demo   install, then the main job (python/train.py: GPaCo vs CE vs balanced softmax on digits-lt, one seed)
#   make test   install, then the test suite (python -m pytest -q) and everything else CI checks (scripts/checks.sh)
# The install is the README's: the CPU build of torch from its pin and the Triton its CUDA build pins (3.7.1), then
# this package with its extras.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gpaco-installed

.PHONY: demo test checks install

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/core/*.cpp csrc/core/*.h)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 triton==3.7.1 ninja wheel "setuptools>=64"
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,bench,train]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) python/train.py

test: $(STAMP)
	$(PY) -m pytest -q
	$(MAKE) checks

checks: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/checks.sh
