# Two entry points for a newcomer: `make train` (set up + main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup train test

$(BIN)/activate: requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(BIN)/activate

setup: $(BIN)/activate

train: setup
	$(BIN)/accelerate launch --num_processes 1 --cpu recipes/train.py --config recipes/scenes-tiny.yaml

test: setup
	$(BIN)/python -m pytest tests
