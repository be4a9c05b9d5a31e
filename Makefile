# Two commands work on a fresh machine: `make demo` and `make test`. Both create .venv when missing, install
# the local CPU build of torch when no torch is present (an unpinned torch would pull a multi-GB CUDA build),
# pin that torch in a constraints file so no extra can replace it, install quanta with its extras, then run.
# A stamp file keyed on pyproject.toml makes repeated runs skip the install.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_CPU ?= torch==2.13.0
CONSTRAINTS := $(VENV)/constraints.txt
TEST_EXTRAS := dev,demo,hf,export,audio,image
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck bench clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(CONSTRAINTS): $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_CPU)"
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $@
	@echo "pinned $$(cat $@) in $@"

$(VENV)/.installed-%: pyproject.toml $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[$*]"
	@touch $@

demo: $(VENV)/.installed-demo
	$(VENV)/bin/quanta demo

test: $(VENV)/.installed-$(TEST_EXTRAS)
	$(VENV)/bin/ruff check quanta tests benchmarks
	$(VENV)/bin/ruff format --check quanta tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.installed-$(TEST_EXTRAS)
	$(VENV)/bin/ruff check quanta tests benchmarks
	$(VENV)/bin/ruff format --check quanta tests benchmarks

typecheck: $(VENV)/.installed-$(TEST_EXTRAS)
	$(VENV)/bin/mypy

bench: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) benchmarks/bench_primitives.py

clean-venv:
	rm -rf $(VENV)
