"""Check, before llama.cpp is loaded, that this CPU runs the portable build.

The project builds llama-cpp-python for the x86-64-v3 baseline (AVX, AVX2, FMA, F16C, BMI2;
no AVX-512, no AMX: ``scripts/build_llama_cpp.sh``). On a CPU without one of those, the first
token would die with SIGILL; this check turns that into an :class:`UnsupportedCPUError` that says
what is missing and how to build for this CPU. ``PLD_SKIP_CPU_CHECK=1`` skips it (a build made
for an older baseline on purpose).
"""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

from pld_spark.errors import UnsupportedCPUError

#: /proc/cpuinfo flags the portable build executes (x86-64-v3 without MOVBE/LZCNT subtleties)
REQUIRED_X86_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2")
SKIP_ENV = "PLD_SKIP_CPU_CHECK"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` (empty off Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return platform.processor() or "unknown"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown"


def missing_flags(flags: set[str], machine: str | None = None) -> list[str]:
    """Required instruction-set flags this x86-64 CPU lacks ([] elsewhere or when unknown)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64") or not flags:
        return []
    return [f for f in REQUIRED_X86_FLAGS if f not in flags]


@functools.lru_cache(maxsize=1)
def require_supported_cpu() -> None:
    """Raise :class:`UnsupportedCPUError` if this CPU cannot run the portable llama.cpp build."""
    if os.environ.get(SKIP_ENV) == "1":
        return
    info = None
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return
    missing = missing_flags(cpu_flags(info))
    if missing:
        raise UnsupportedCPUError(
            f"this CPU ({cpu_model(info)}) lacks {', '.join(missing)}, which the portable llama.cpp build "
            f"(x86-64-v3: {', '.join(REQUIRED_X86_FLAGS)}) executes; the model would die with SIGILL. Build "
            f"llama-cpp-python for this CPU: PLD_LLAMA_CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF "
            f"-DGGML_F16C=OFF -DGGML_BMI2=OFF' scripts/build_llama_cpp.sh, install that wheel, and set "
            f"{SKIP_ENV}=1")
