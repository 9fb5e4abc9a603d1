# The entry points: `make demo`, `make test` (the default suite, a minute or two of CPU) and
# `make test-all` (also the tests marked slow: multi-process training, compiled decoding, full-size
# checkpoints). Each creates .venv if missing and installs everything it needs, so all work on a
# fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: on these machines torch==2.13.0 is a CPU wheel on disk, while an open
# range would download a several-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,quant]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lumina demo --overwrite

# pyproject.toml's addopts deselect `slow`; test-all's -m comes later on the command line and wins.
test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m 'slow or not slow'

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
