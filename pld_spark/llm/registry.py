"""Backends by config type, imported lazily.

``import pld_spark.llm.registry`` imports no model library (llama_cpp, vllm, boto3,
requests): the backend module is imported when a client of that type is built, so the
package imports on a CPU-only cluster without the optional extras.

- :func:`build_client` makes a new client from an :class:`~pld_spark.config.LLMConfig`.
- :func:`get_or_build` returns the process-wide client for a config (keyed by the config's
  canonical JSON). Module state survives across tasks in a reused Spark Python worker or a
  Ray actor, so each worker loads a model once, not once per task.
"""
from __future__ import annotations

import importlib
import json
import threading
from typing import Any

from pld_spark.errors import ConfigError

#: config ``type`` -> "module:Class" (imported on first use)
BACKENDS: dict[str, str] = {
    "llamacpp": "pld_spark.llm.llamacpp:LlamaCppLLM",
    "openai": "pld_spark.llm.openai:OpenAILLM",
    "bedrock": "pld_spark.llm.bedrock:BedrockLLM",
    "vllm": "pld_spark.llm.vllm:VLLMLLM",
}

_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def backend_class(type_: str):
    """The client class for a backend type (imports its module now)."""
    target = BACKENDS.get(type_)
    if target is None:
        raise ConfigError(f"unknown LLM backend type {type_!r}; known: {sorted(BACKENDS)}")
    mod_name, cls_name = target.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"LLM backend {type_!r} needs a package that is not installed: {e}") from e
    return getattr(mod, cls_name)


def build_client(llm_cfg, role: str = "student", cache=None, **kwargs):
    """A new client for ``llm_cfg``. ``cache``: the persistent response-cache layer (a
    :class:`pld_spark.llm.cache.DeltaCache`), or None for the in-memory cache only."""
    if role not in ("teacher", "student"):
        raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")
    cls = backend_class(llm_cfg.type)
    return cls(llm_cfg, role=role, cache=cache, **kwargs)


def config_key(llm_cfg) -> str:
    """Canonical JSON of the config: equal configs share one process-wide client."""
    return json.dumps(llm_cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def get_or_build(llm_cfg, role: str = "student"):
    """The process-wide client for this config (built on first call; no persistent cache).

    Use this inside Spark tasks and Ray actors; the driver passes a DeltaCache through
    :func:`build_client` instead.
    """
    key = f"{role}|{config_key(llm_cfg)}"
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = build_client(llm_cfg, role=role)
            _CLIENTS[key] = client
        return client


def clear_clients() -> None:
    """Forget the process-wide clients (tests)."""
    with _CLIENTS_LOCK:
        for c in _CLIENTS.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001 - best effort
                pass
        _CLIENTS.clear()
