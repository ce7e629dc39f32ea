# k2d — the two commands a newcomer needs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
K2D := $(VENV)/bin/k2d
export K2D_MODELS_DIR ?= $(CURDIR)/models

.PHONY: setup models demo test lint clips

setup:
	@scripts/setup.sh dev

models: setup
	@$(K2D) models fetch

# Main job: the models, then a sample transcription with the teacher.
demo: models
	@$(K2D) evaluate --model whisper-base --manifest tests/data/manifest.jsonl --out runs/demo/hypotheses.jsonl
	@cat runs/demo/hypotheses.jsonl

lint: setup
	@$(VENV)/bin/ruff check .

test: models lint
	@$(PY) -m pytest -q

clips: setup
	@$(PY) tests/data/make_clips.py
