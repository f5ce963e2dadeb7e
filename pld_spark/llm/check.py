"""``pld llm check``: one real request to the teacher or student, with latency and tokens.

The client is built from the config through the registry (not ``ctx.teacher``), so no Spark
session starts and no cache answers instead of the model. The command runs the check in a child
process (:func:`check_in_child`), so a model that crashes the process (SIGILL from a build for
another CPU, a segfault, the OOM killer) is reported with its signal and the likely fix instead
of ending ``pld`` with a bare exit code.
"""
from __future__ import annotations

import time
from typing import Any

from pld_spark.llm.types import ChatRequest

DEFAULT_PROMPT = "Name one colour of the rainbow. Answer in one short sentence."


def check(cfg, role: str = "student", prompt: str | None = None) -> dict[str, Any]:
    """Send one request with the ``role`` model of ``cfg`` (a PLDConfig) in this process; raise the
    typed LLMError on failure."""
    from pld_spark.llm.registry import build_client

    if role not in ("teacher", "student"):
        raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")
    llm_cfg = getattr(cfg, role).model_copy(update={"cache": False})
    t0 = time.perf_counter()
    client = build_client(llm_cfg, role=role)
    try:
        req = ChatRequest(messages=[{"role": "user", "content": prompt or DEFAULT_PROMPT}],
                          max_tokens=min(llm_cfg.max_tokens, 48) if prompt is None else llm_cfg.max_tokens,
                          template_version="llm-check")
        resp = client.chat_one(req)
    finally:
        client.close()
    total = time.perf_counter() - t0
    out = {
        "role": role, "backend": llm_cfg.type, "model": resp.model or llm_cfg.model, "reply": resp.text,
        "latency_s": round(resp.latency_s, 3), "total_s": round(total, 3), "tokens_in": resp.tokens_in,
        "tokens_out": resp.tokens_out, "attempts": resp.attempts, "cost_usd": round(resp.cost_usd, 6),
    }
    st = client.stats()
    if st.get("model_load_s") is not None:
        out["model_load_s"] = st["model_load_s"]
    if st.get("threads") is not None:
        out["threads"] = st["threads"]
        out["threads_source"] = st["threads_source"]
    return out


def _check_from_files(config: str, overrides: list[str], role: str, prompt: str | None) -> dict[str, Any]:
    from pld_spark.config import load_config

    return check(load_config(config, overrides), role, prompt)


def check_in_child(config: str, overrides: list[str], role: str, prompt: str | None = None,
                   model: str | None = None) -> dict[str, Any]:
    """:func:`check` in a fresh child process; a crash there raises ModelCrashError naming ``model``."""
    from pld_spark.supervisor import run_in_child

    return run_in_child(_check_from_files, str(config), list(overrides), role, prompt,
                        what=f"{role} model {model}" if model else f"{role} model")
