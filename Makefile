# Two entry points for a fresh machine; each creates .venv when missing.
#   make demo   install, then check the zoo claims in circuits/ and write reports/
#   make test   install, then run the project's tests
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/circuitcheck demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Speed comparisons (not part of the tests); writes benchmarks/RESULTS.md
bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

.PHONY: install demo test bench
