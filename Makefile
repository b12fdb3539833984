# The two front-door commands (see README):
#   make demo   -- create .venv, install everything, run the main job on the embedded default data
#   make test   -- create .venv, install everything, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEMO_OUT ?= demo-out

.PHONY: setup demo test lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[all]"
	# EmbedSeg's wheel pins an old tifffile and Jupyter: installed alone (pyproject's embedseg)
	$(BIN)/python -m pip install -q --no-deps "EmbedSeg==0.2.3"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/cellsynth demo --out $(DEMO_OUT) --overwrite

# the tests also cover the opt-in micro-sam segmenter: its extra goes in here, not in setup
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[microsam]"
	touch $(TEST_STAMP)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
