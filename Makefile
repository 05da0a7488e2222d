# Two entry points for a newcomer: `make train` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup train test

# Everything through uv, which resolves and installs in parallel. uv does not read pip's configuration, so it gets
# pip's package sources (scripts/pip_sources.py: a local CPU build of torch, say) and picks the best match across
# them, as pip does.
$(BIN)/activate: requirements-dev.txt pyproject.toml scripts/pip_sources.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode --index-strategy unsafe-best-match \
		$$($(BIN)/pip config list 2>/dev/null | $(BIN)/python scripts/pip_sources.py) -r requirements-dev.txt
	touch $(BIN)/activate

setup: $(BIN)/activate

train: setup
	$(BIN)/accelerate launch --num_processes 1 --cpu recipes/train.py --config recipes/scenes-tiny.yaml

test: setup
	$(BIN)/python -m pytest tests
