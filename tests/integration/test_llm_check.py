"""``pld llm check``: one real request with the embedded model, no Spark, no network."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _pld_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "pld"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("pld")
    return [found] if found else [sys.executable, "-m", "pld_spark.cli"]


def test_cli_llm_check_student_with_embedded_model():
    env = {**os.environ, "PLD_LLAMA_THREADS": "1"}
    out = subprocess.run(_pld_cmd() + ["llm", "check", "--role", "student", "--config", "conf/stereoset.yaml"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["backend"] == "llamacpp" and res["role"] == "student" and res["model"] == "smollm2-135m-instruct"
    assert res["reply"].strip() and res["tokens_in"] > 0 and 0 < res["tokens_out"] <= 8
    assert res["latency_s"] > 0 and res["attempts"] == 1
    assert "pyspark" not in out.stderr.lower()


def test_check_builds_from_config_without_spark():
    from pld_spark.config import load_config
    from pld_spark.llm.check import check

    cfg = load_config(REPO / "conf" / "stereoset.yaml", ["student.n_threads=1", "student.max_tokens=6"])
    res = check(cfg, "student", prompt="Say yes.")
    assert res["reply"].strip() and res["tokens_out"] <= 6
    assert res["threads"] == 1 and res["threads_source"].startswith("1 thread(s) (config")
    with pytest.raises(ValueError):
        check(cfg, "judge")
