# One-command set-up: `make serve` (run the service) and `make test` (run the whole suite) work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned so a CPU machine takes the CPU wheel it already has; on a CUDA machine the same pin takes PyPI's CUDA build.
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_SIZE ?= tiny

.PHONY: proto serve test test-unit test-slow lint fuzz compare evaluate install install-dev demo-store clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,load]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo-store: install
	@if [ ! -f model_store/xlmr-mnli/config.json ]; then \
		$(BIN)/xnli-serve build-demo-store --out model_store --size $(DEMO_SIZE); \
	else echo "model_store already has checkpoints (xnli-serve build-demo-store --force rebuilds them)"; fi

serve: demo-store
	$(BIN)/xnli-serve serve --host $(HOST) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/python deploy/grafana/dashboard.py --check

# The quick loop: unit tests that load no checkpoint, open no socket (--forbid-sockets fails one that does) and run
# no statistical calibration; `make test` runs them all.
test-unit: install-dev
	$(BIN)/pytest -m "not slow and not checkpoints and not sockets and not simulation" --forbid-sockets tests/unit

# Every test but the long end-to-end runs and the statistical calibrations marked `slow` (see pyproject.toml); CI (.ci/run) runs both targets.
test: install-dev lint
	$(BIN)/pytest -m "not slow and not simulation" --durations=15

# The long end-to-end runs and the statistical calibrations (simulated load tests, marker `simulation`): the image's install in a clean venv, the benchmark harness, the bounded schema fuzzing,
# benchmarks/gpu_check.sh's CPU proof, and the real-server runs of many seconds each (front-end and engine processes
# killed and drained, SIGTERM under load, saturation, hostile connections, Locust end to end, Prometheus, Chromium).
test-slow: install-dev
	$(BIN)/pytest -m "slow or simulation" --durations=15

# Compare every demo variant under the same Locust load (starts its own server on a free port).
COMPARE_ARGS ?= --users 1,8,32 --duration 20
compare: demo-store install-dev
	$(BIN)/python -m loadtests.compare $(COMPARE_ARGS)

# XNLI accuracy and latency of every catalogue variant (the dev set sits beside the checkout).
XNLI_DIR ?= ../shared/data/xnli
evaluate: demo-store
	$(BIN)/xnli-serve evaluate --data $(XNLI_DIR) --out reports/evaluation

# Longer, unseeded schema fuzzing than CI's bounded run (nightly-style).
fuzz: install-dev
	XNLI_SERVE_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} XNLI_SERVE_FUZZ_SEED= $(BIN)/pytest -s tests/integration/test_fuzz.py \
		tests/integration/grpc/test_grpc_fuzz.py

# The gRPC transport's generated code (issue #26), committed: messages (+ .pyi for mypy; no grpcio service stubs:
# app.grpc.service registers its handlers from the descriptor), from
# app/grpc/proto/open_inference.proto. The pool edit: tritonclient registers the same `inference.*` names in
# protobuf's default descriptor pool, and a process holding both (tests, a service that also calls Triton) would
# refuse the second; our messages live in a pool of their own (the wire does not carry pool or file names).
proto: install-dev
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
		app/grpc/proto/open_inference.proto
	sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' \
		app/grpc/proto/open_inference_pb2.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
