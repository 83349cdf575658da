# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.bayesmeta-installed

.PHONY: install demo test test-slow lint bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first (a local CPU wheel here); any other spec with no torch installed pulls CUDA builds.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/bayesmeta demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check bayesmeta tests examples
	$(PY) -m mypy

bench: install
	$(VENV)/bin/bayesmeta bench sinusoid

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache
