"""The installed llama.cpp holds no instruction beyond x86-64-v3 (no AMX, no AVX-512), and the
check that says so can tell: it flags a library that does hold them."""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "scripts" / "check_portable_ggml.py"

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not shutil.which("objdump"),
                                reason="x86-64 with binutils only")


def test_installed_libggml_cpu_has_no_amx_or_avx512():
    out = subprocess.run([sys.executable, str(CHECK), "--json"], capture_output=True, text=True, timeout=600)
    report = json.loads(out.stdout)
    cpu = {k: v for k, v in report.items() if "ggml-cpu" in k}
    assert cpu, f"no libggml-cpu among {list(report)}"
    for name, counts in report.items():
        assert counts["instructions"] > 0
        assert counts["amx"] == 0, f"{name}: {counts['amx']} AMX instructions"
        assert counts["evex"] == 0, f"{name}: {counts['evex']} AVX-512 instructions"
        assert counts["vex_extra"] == 0, f"{name}: {counts['vex_extra']} AVX-VNNI/IFMA instructions"
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(not shutil.which("as"), reason="needs the GNU assembler")
def test_check_flags_amx_avx512_and_vnni(tmp_path):
    src = tmp_path / "bad.s"
    src.write_text(".text\n"
                   "vaddps %ymm1, %ymm2, %ymm3\n"          # AVX: allowed
                   "vfmadd231ps %ymm1, %ymm2, %ymm3\n"     # FMA: allowed
                   "tilezero %tmm0\n"                      # AMX
                   "tileloadd (%rax,%rbx,1), %tmm1\n"      # AMX
                   "vpaddd %zmm1, %zmm2, %zmm3\n"          # AVX-512
                   "vpternlogd $0xff, %ymm1, %ymm2, %ymm3\n"  # AVX-512VL on ymm: still EVEX
                   "{vex} vpdpbusd %ymm1, %ymm2, %ymm3\n")    # AVX-VNNI
    obj = tmp_path / "bad.o"
    subprocess.run(["as", "-o", str(obj), str(src)], check=True)
    out = subprocess.run([sys.executable, str(CHECK), "--lib", str(obj), "--json"], capture_output=True, text=True)
    counts = json.loads(out.stdout)["bad.o"]
    assert (counts["amx"], counts["evex"], counts["vex_extra"]) == (2, 2, 1)
    assert out.returncode == 1 and "NOT PORTABLE" in out.stderr
