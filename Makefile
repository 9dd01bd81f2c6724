# Two entry points (see README): `make demo` and `make test`. Each sets up .venv by itself.
# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: demo test lint bench crds clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[trainer,azure,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lightning-op demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

crds: $(STAMP)
	$(VENV)/bin/lightning-op crds --output-dir crds
	cp crds/*.lightning-op.dev.yaml charts/lightning-op/crds/
	cp crds/rbac.yaml charts/lightning-op/files/rbac.yaml

clean:
	rm -rf $(VENV) .pytest_cache demo-output
