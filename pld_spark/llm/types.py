"""The model contract's types: requests, results and the :class:`LLMClient` protocol.

No backend, no heavy import: prompt templates (:mod:`pld_spark.prompts`), engines and stages
import these without pulling llama.cpp, vLLM, boto3 or HTTP clients. Backends implement the
protocol by subclassing :class:`pld_spark.llm.base.BaseLLM`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ChatRequest:
    """One chat call. ``json_schema`` asks for a JSON object with that schema (constrained
    decoding where the backend can, validated parsing where it cannot)."""

    messages: list[dict[str, str]]
    json_schema: dict[str, Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    template_version: str = ""
    request_id: str = ""
    #: backend options that change the answer (e.g. {"logprobs": True, "top_logprobs": 20}); part of the cache key
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatResponse:
    """One result. A failed call is a response with ``error`` set (per-row failures are data)."""

    request_id: str = ""
    text: str = ""
    data: dict[str, Any] | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    model: str = ""
    attempts: int = 0
    cached: bool = False
    cost_usd: float = 0.0
    error: str | None = None
    error_type: str | None = None  # exception class name when error is set
    #: per generated token {"token", "logprob", "top_logprobs": [{"token", "logprob"}]} when asked for
    logprobs: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ClassifyResult:
    """Student output for one input: a label from the label set, always."""

    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    raw_logprobs: dict[str, float] = field(default_factory=dict)
    latency_s: float | None = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    prefix_reused_tokens: int = 0
    calibration: str = "none"
    error: str | None = None
    #: served from the label-score cache: no model call, so ``latency_s`` is None (not measured)
    cached: bool = False


@runtime_checkable
class LLMClient(Protocol):
    """What stages and engines may use of a teacher or student. Everything a caller needs is
    declared here; nobody reads a client's config or probes it with ``getattr``."""

    backend: str
    model_id: str
    role: str
    #: label-score calibration used when ``classify`` is not told one ("none" | "batch" | ...)
    calibration: str
    #: requests worth keeping in flight at once (1 for in-process engines)
    max_concurrency: int
    #: whether :meth:`embed` works for this backend/model
    can_embed: bool

    def chat(self, requests: list[ChatRequest], max_in_flight: int = 1) -> list[ChatResponse]:
        """Answer a batch; never raises for a per-row failure (see ``ChatResponse.error``)."""

    def chat_one(self, request: ChatRequest) -> ChatResponse:
        """Answer one request; raises the typed :class:`pld_spark.errors.LLMError` on failure."""

    def classify(self, system: str, inputs: list[str], labels: list[str],
                 calibration: Any = None) -> list[ClassifyResult]:
        """Constrained label choice with per-label probabilities; ``system`` is the shared prefix.

        ``calibration``: "none" | "content_free" | "batch", a fixed
        :class:`pld_spark.llm.calibrate.Calibration`, or ``None`` for the client's config."""

    def count_tokens(self, text: str) -> int:
        """Token count with this model's tokenizer (or a documented estimate)."""

    def stats(self) -> dict[str, Any]:
        """Cumulative calls, cache hits, tokens in/out, cost, prefix reuse for this client."""

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """USD for the given tokens at this client's prices."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        """L2-normalised embeddings (only when ``can_embed``)."""

    def close(self) -> None:
        """Release resources; safe to call twice."""


@dataclass
class LabelScores:
    """A backend's raw answer for one classify input: per-label log-probabilities (any scale)."""

    logprobs: dict[str, float] | None
    tokens_in: int = 0
    tokens_out: int = 0
    prefix_reused_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    error_type: str | None = None
    cached: bool = False


def approx_token_count(text: str) -> int:
    """About 4 characters per token: the estimate used where no tokenizer is loaded."""
    return max(1, (len(text or "") + 3) // 4)


