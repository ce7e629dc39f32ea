# k2d — the two commands a newcomer needs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
K2D := $(VENV)/bin/k2d
export K2D_MODELS_DIR ?= $(CURDIR)/models

.PHONY: setup models demo test lint clips bench-serving loadtest soak images

setup:
	@scripts/setup.sh dev

models: setup
	@$(K2D) models fetch

# Main job: build the K²D student (each stage reused when done: seconds on a second run), then serve
# it beside its teacher on 127.0.0.1:8000.
demo: models
	@$(K2D) run configs/demo.yaml
	@$(K2D) serve

# Measurements (not tests): serving throughput with/without batching, and teacher vs student load test.
bench-serving: models
	@$(K2D) bench serving

loadtest: setup
	@$(PY) -m loadtest --out runs/loadtest

# Reliability (opt-in tests): 64 concurrent clients for 30 s against a server process on 127.0.0.1 (fails on
# any 5xx), and abandoned uploads leaving the server idle within seconds.
soak: models
	@$(PY) -m pytest -m soak -s

# Images, for real (a check with podman, minutes; not part of `make test`): build the CPU serving and training
# images, serve the store `make demo` wrote, the image healthcheck, Prometheus answering every dashboard query,
# and the compose `train` command on configs/tiny.yaml. Report: runs/images/report.md.
images: setup
	@$(PY) -m pytest -m images -s

lint: setup
	@$(VENV)/bin/ruff check .

test: models lint
	@$(PY) -m pytest -q

clips: setup
	@$(PY) tests/data/make_clips.py
