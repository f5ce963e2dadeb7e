#!/usr/bin/env python3
"""Refuse a llama.cpp build that holds instructions beyond the portable x86-64-v3 baseline.

    python scripts/check_portable_ggml.py                  # the installed llama_cpp package
    python scripts/check_portable_ggml.py --wheel X.whl    # a built wheel
    python scripts/check_portable_ggml.py --lib path.so    # one library

Disassembles every shared library of llama.cpp (``objdump -d -w``) and counts, per library:

- ``amx``: AMX tile instructions (``ldtilecfg``, ``tileloadd``, ``tilezero``, ``tdpb*``, ...).
  A CPU may advertise AMX while the process is not allowed to use it (Linux needs an
  ``arch_prctl`` permission request first), so these crash with SIGILL even on AMX hardware.
- ``evex``: any EVEX-encoded instruction (first opcode byte 0x62 in 64-bit mode), i.e. any
  AVX-512 instruction, including AVX-512VL forms on xmm/ymm registers that a mnemonic check
  would miss.
- ``vex_extra``: VEX-encoded extensions newer than x86-64-v3 (AVX-VNNI ``vpdp*``, AVX-IFMA
  ``vpmadd52*``, AVX-NE-CONVERT), absent from e.g. AMD Zen 1-4 and Intel before Alder Lake.

Exit status 1 (with the counts and a sample of offending lines) if any count is non-zero, 0
otherwise; ``--json`` prints the counts as JSON. Needs only the standard library and binutils.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

AMX = re.compile(r"^(ldtilecfg|sttilecfg|tilerelease|tilezero|tileloadd\w*|tilestored|tdp\w+|tcmmi\w+|tcmmr\w+)$")
VEX_EXTRA = re.compile(r"^(vpdpb\w+|vpdpw\w+|vpmadd52\w+|vbcstne\w+|vcvtne\w+2\w+|vcvtneps2bf16)$")
# legacy prefixes that may precede an opcode byte (segment, operand/address size, lock, rep)
PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3}


def classify(line: str) -> str | None:
    """Return 'amx', 'evex' or 'vex_extra' for one ``objdump -d -w`` instruction line."""
    parts = line.split("\t")
    if len(parts) < 3 or not parts[0].strip().endswith(":"):
        return None
    raw = [int(b, 16) for b in parts[1].split() if re.fullmatch(r"[0-9a-f]{2}", b)]
    text = parts[2].strip()
    mnemonic = text.split()[0] if text else ""
    if mnemonic in {"{vex}", "{evex}"} and len(text.split()) > 1:
        mnemonic = text.split()[1]
    if AMX.match(mnemonic):
        return "amx"
    i = 0
    while i < len(raw) and raw[i] in PREFIXES:
        i += 1
    if i < len(raw) and raw[i] == 0x62:
        return "evex"
    if VEX_EXTRA.match(mnemonic) and i < len(raw) and raw[i] in (0xC4, 0xC5):
        return "vex_extra"
    return None


def scan_library(path: Path) -> tuple[dict[str, int], list[str]]:
    """Counts of non-portable instructions in one shared library, and up to 5 sample lines."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise SystemExit("objdump not found: install binutils (apt-get install binutils)")
    counts = {"amx": 0, "evex": 0, "vex_extra": 0, "instructions": 0}
    samples: list[str] = []
    proc = subprocess.Popen([objdump, "-d", "-w", str(path)], stdout=subprocess.PIPE, text=True,
                            errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        if "\t" not in line:
            continue
        counts["instructions"] += 1
        # cheap prefilter: AMX/VNNI mnemonics start with t/v/{, EVEX needs a 0x62 byte
        tab = line.find("\t", line.find("\t") + 1)
        head = line[tab + 1: tab + 2] if tab > 0 else ""
        if head not in ("t", "v", "l", "s", "{") and " 62" not in line[:tab] and "\t62" not in line[:tab]:
            continue
        kind = classify(line.rstrip("\n"))
        if kind:
            counts[kind] += 1
            if len(samples) < 5:
                samples.append(f"{path.name}: {line.strip()}")
    if proc.wait() != 0:
        raise SystemExit(f"objdump failed on {path}")
    return counts, samples


def libraries(root: Path) -> list[Path]:
    """llama.cpp's shared libraries under ``root``, one per content (wheels hold copies, not links)."""
    import hashlib

    libs = sorted((p for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink()),
                  key=lambda p: (len(p.name), p.name))
    seen, out = set(), []
    for p in libs:
        if not ("ggml" in p.name or "llama" in p.name or "mtmd" in p.name):
            continue
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(p)
    return out


def installed_lib_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise SystemExit("llama_cpp is not installed in this interpreter")
    return Path(spec.origin).parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", type=Path)
    ap.add_argument("--lib", type=Path, action="append")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.lib:
            libs = args.lib
        elif args.wheel:
            with zipfile.ZipFile(args.wheel) as zf:
                zf.extractall(tmp)
            libs = libraries(Path(tmp))
        else:
            libs = libraries(installed_lib_dir())
        if not any("ggml-cpu" in p.name for p in libs) and not args.lib:
            raise SystemExit(f"no libggml-cpu found among {[str(p) for p in libs]}")
        report, bad = {}, []
        for lib in libs:
            counts, samples = scan_library(lib)
            report[lib.name] = counts
            if counts["amx"] or counts["evex"] or counts["vex_extra"]:
                bad.extend(samples)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, c in report.items():
            print(f"{name}: {c['instructions']} instructions, amx={c['amx']} avx512(evex)={c['evex']} "
                  f"vex-beyond-v3={c['vex_extra']}")
    if bad:
        print("NOT PORTABLE: this llama.cpp build holds instructions beyond x86-64-v3; it will crash "
              "with SIGILL on CPUs without them. Rebuild with scripts/build_llama_cpp.sh.", file=sys.stderr)
        for s in bad:
            print("  " + s, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
