# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
# .ci/run also tests the transformers floor: VENV=.venv-floor TRANSFORMERS_SPEC=transformers==X.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A bare `torch` requirement would pull a multi-GB CUDA build: take the CPU wheel first.
TORCH_SPEC ?= torch==2.13.0
# Empty: the newest transformers that pyproject.toml allows and pip can install.
TRANSFORMERS_SPEC ?=

.PHONY: demo test lint install clean

# Answer scoring reads WordNet 3.0 offline from Debian's wordnet-base (lrsvqa.bench.wordnet).
$(STAMP): pyproject.toml
	test -f /usr/share/wordnet/data.noun || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev,geo]' $(TRANSFORMERS_SPEC)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lrsvqa demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .venv-floor build *.egg-info src/*.egg-info
