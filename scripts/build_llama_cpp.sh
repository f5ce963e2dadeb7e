#!/usr/bin/env bash
# Build llama-cpp-python for a portable x86-64 baseline and print the wheelhouse folder.
#
#   scripts/build_llama_cpp.sh            # builds once, prints the folder holding the wheel
#   pip install --only-binary=llama-cpp-python --find-links "$(scripts/build_llama_cpp.sh)" ...
#
# Why: pip compiles llama-cpp-python with `-march=native` by default. A wheel built that way on a
# CPU that advertises AMX/AVX-512 died with SIGILL (`tileloadd` in libggml-cpu.so) on the same
# machine, and a native wheel cached by pip crashes on any CPU without those instructions.
# Turning only the AMX options off is not enough while GGML_NATIVE is on (the compiler still
# emitted 184 AMX instructions). So: GGML_NATIVE=OFF with the x86-64-v3 set (AVX, AVX2, FMA, F16C,
# BMI2), every AVX-512/AMX/VNNI variant off. x86-64-v3 covers Intel since Haswell (2013) and every
# AMD Zen, i.e. every cloud and Databricks node type; `pld_spark.llm.cpu` refuses older CPUs with
# a clear error instead of a crash.
#
# The wheel goes to a folder keyed by version and the sha256 of the build flags, never into
# pip's cache (`--no-cache-dir`), so a wheel built with other flags (or natively, by an earlier
# plain `pip install`) is never picked up; installs use `--only-binary=llama-cpp-python` so pip
# cannot fall back to compiling the sdist natively. After the build, the library is disassembled
# and the wheel is refused if it holds any AMX or AVX-512 instruction.
set -euo pipefail
PY=${PY:-python3.11}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
FLAGS=${PLD_LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF"}
KEY=$(printf '%s\n%s\n' "$VERSION" "$FLAGS" | sha256sum | cut -c1-16)
ROOT=${PLD_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/pld_spark/wheels}
DIR=$ROOT/llama_cpp_python-$VERSION-$KEY
HERE=$(cd "$(dirname "$0")" && pwd)

if ! ls "$DIR"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $VERSION for a portable x86-64-v3 baseline (about 10 min on 2 cores)" >&2
    echo "  CMAKE_ARGS=$FLAGS" >&2
    tmp=$(mktemp -d "$ROOT.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$ROOT" && mktemp -d "$ROOT.tmp.XXXXXX"; })
    trap 'rm -rf "$tmp"' EXIT
    CMAKE_ARGS="$FLAGS" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-binary=llama-cpp-python \
        "llama-cpp-python==$VERSION" -w "$tmp" >&2
    # refuse a wheel that would crash on another CPU
    "$PY" "$HERE/check_portable_ggml.py" --wheel "$tmp"/llama_cpp_python-"$VERSION"-*.whl >&2
    printf '%s\n' "$FLAGS" > "$tmp/CMAKE_ARGS"
    mkdir -p "$ROOT"
    rm -rf "$DIR"
    mv "$tmp" "$DIR"
    trap - EXIT
fi
echo "$DIR"
