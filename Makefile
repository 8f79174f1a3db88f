# sarcart: two commands do everything on a fresh Debian machine.
#   make test   set up (.venv, package, system tools) and run the whole test suite
#   make demo   set up and run the main job
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# the set-up is redone only when its inputs change
SETUP_HASH := $(shell cat pyproject.toml Makefile scripts/install-system-deps.sh 2>/dev/null | sha1sum | cut -c1-12)
STAMP := $(VENV)/.setup-$(SETUP_HASH)
SYSTEM_TOOLS := dcmtk dicom3tools plastimatch chromium orthanc
PYTEST_ARGS ?=

.PHONY: setup test demo system-deps clean-venv

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
	@# the CPU wheel of torch first: the project's range is then satisfied and no CUDA build is pulled
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 numpy setuptools wheel versioneer
	@# pyradiomics has no wheel for Python 3.11: build it against the venv's numpy
	$(PY) -c "import radiomics" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check --no-build-isolation pyradiomics==3.0.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[full,test]'
	@rm -f $(VENV)/.setup-*
	@touch $@

system-deps:
	@bash scripts/install-system-deps.sh $(SYSTEM_TOOLS)

test: setup system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/sarcart demo --out demo_out/course

clean-venv:
	rm -rf $(VENV)
