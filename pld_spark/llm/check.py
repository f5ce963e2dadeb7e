"""``pld llm check``: one real request to the teacher or student, with latency and tokens.

The client is built from ``ctx.cfg`` through the registry (not ``ctx.teacher``), so no Spark
session starts and no cache answers instead of the model.
"""
from __future__ import annotations

import time
from typing import Any

from pld_spark.llm.base import ChatRequest

DEFAULT_PROMPT = "Name one colour of the rainbow. Answer in one short sentence."


def check(ctx, role: str = "student", prompt: str | None = None) -> dict[str, Any]:
    """Send one request with the ``role`` model of ``ctx.cfg``; raise the typed LLMError on failure."""
    from pld_spark.llm.registry import build_client

    if role not in ("teacher", "student"):
        raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")
    llm_cfg = getattr(ctx.cfg, role).model_copy(update={"cache": False})
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
    return out
