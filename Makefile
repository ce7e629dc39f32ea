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
	@$(PY) scripts/bench_serving.py

loadtest: setup
	@$(PY) -m loadtest --out runs/loadtest

# Reliability: 64 concurrent clients for 30 s against a server it starts on 127.0.0.1; fails on any 5xx.
soak: models
	@$(PY) scripts/soak.py --concurrency 64 --duration 30 --out runs/soak.json

# Images, for real (a check with podman, minutes; not part of `make test`): build the CPU serving and training
# images, serve the store `make demo` wrote, the image healthcheck, Prometheus answering every dashboard query,
# and the compose `train` command on configs/tiny.yaml. Report: runs/images/report.md.
images: setup
	@$(PY) scripts/verify_images.py --out runs/images

lint: setup
	@$(VENV)/bin/ruff check .

test: models lint
	@$(PY) -m pytest -q

clips: setup
	@$(PY) tests/data/make_clips.py
