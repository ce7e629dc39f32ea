# k2d — the two commands a newcomer needs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
K2D := $(VENV)/bin/k2d
export K2D_MODELS_DIR ?= $(CURDIR)/models

.PHONY: setup setup-train models demo test lint clips bench-serving loadtest soak images reliability

setup:
	@scripts/setup.sh dev

# the demo needs training and serving, not the test tools (no browser, no promtool): a lighter first install
setup-train:
	@scripts/setup.sh train

models: setup-train
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

# Reliability (not part of `make test`): bad inputs, FFmpeg formats, store names, auth on every route, WebSocket abuse,
# deadline admission under a burst of long uploads, SIGTERM under load, the soak and abandon runs; the table of
# test · expectation · result goes to docs/benchmarks/reliability-cpu/.
RELIABILITY = tests/test_upload_formats.py tests/test_form_validation.py tests/test_hardening.py tests/test_api_fuzz.py \
	tests/test_store_cli.py tests/test_auth_routes.py tests/test_realtime_stream.py tests/test_deadline_admission.py \
	tests/test_deadline_burst.py tests/test_shutdown.py tests/test_soak.py
reliability: models
	@mkdir -p docs/benchmarks/reliability-cpu
	@$(PY) -m pytest -q -m "soak or not soak" $(RELIABILITY) --junitxml=docs/benchmarks/reliability-cpu/junit.xml; \
	  $(PY) -m loadtest.reliability_report docs/benchmarks/reliability-cpu/junit.xml docs/benchmarks/reliability-cpu/README.md

# Images, for real (a check with podman, minutes; not part of `make test`): build the CPU serving and training
# images, serve the store `make demo` wrote, the image healthcheck, Prometheus answering every dashboard query,
# and the compose `train` command on configs/tiny.yaml. Report: runs/images/report.md.
images: setup
	@$(PY) -m pytest -m images -s

lint: setup
	@$(VENV)/bin/ruff check .

# the fast tier first (no model store, about a minute), then the integration tier on real weights
test: setup lint
	@$(PY) -m pytest -q -m "not slow and not soak and not images"
	@$(MAKE) --no-print-directory models
	@$(PY) -m pytest -q -m "slow and not soak and not images"

clips: setup
	@$(PY) tests/data/make_clips.py
