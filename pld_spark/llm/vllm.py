"""In-process vLLM engine for GPU nodes (optional extra ``pld_spark[vllm]``).

Same contract as every backend. The engine is built once per process (module cache keyed by
the load parameters) with ``enable_prefix_caching=True``, so the shared rule prompt's KV
blocks are computed once and reused by every request (vLLM automatic prefix caching).

- chat: one ``LLM.chat`` call per batch of cache misses (vLLM batches internally); JSON
  schemas use structured outputs (``StructuredOutputsParams(json=...)`` on vLLM >= 0.11,
  ``GuidedDecodingParams(json=...)`` before), then the base class validation and one repair.
- classify: the label is constrained to the label set (structured-output ``choice``), and
  per-label probabilities come from the first generated token's top log-probabilities
  (raw, before the constraint), mapped onto the labels; the constrained text decides when
  the top tokens name no label. ``prefix_reused_tokens`` is the request's
  ``num_cached_tokens``; ``stats()["engine_prefix_cache_hit_rate"]`` reads the engine's
  ``prefix_cache_hits / prefix_cache_queries`` counters when the engine keeps stats.

``vllm`` is imported only when a client is built.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from pld_spark.errors import ConfigError, ContextLengthError, FatalLLMError, LLMError, MalformedResponseError
from pld_spark.llm.base import BaseLLM, ChatRequest, ChatResponse, LabelScores, label_logprobs_from_top

log = logging.getLogger(__name__)

_ENGINES: dict[tuple, Any] = {}
_ENGINES_LOCK = threading.Lock()
_ENGINE_KWARGS = ("tensor_parallel_size", "gpu_memory_utilization", "dtype", "quantization", "tokenizer",
                  "max_num_seqs", "enforce_eager", "trust_remote_code", "download_dir", "kv_cache_dtype")


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"backend 'vllm' needs the vllm package (pip install 'pld_spark[vllm]'): {e}") from e
    return vllm


def structured_params(choice: list[str] | None = None, json_schema: dict | None = None) -> dict[str, Any]:
    """SamplingParams keyword(s) for a choice/JSON constraint across vLLM versions."""
    try:
        from vllm.sampling_params import StructuredOutputsParams  # vLLM >= 0.11

        return {"structured_outputs": StructuredOutputsParams(choice=choice, json=json_schema)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams  # older releases

        return {"guided_decoding": GuidedDecodingParams(choice=choice, json=json_schema)}


def get_engine(model: str, n_ctx: int, seed: int, extra: dict[str, Any]):
    """The process-wide ``vllm.LLM`` for these parameters."""
    vllm = _import_vllm()
    kw = {k: extra[k] for k in _ENGINE_KWARGS if k in extra}
    key = (model, n_ctx, seed, tuple(sorted((k, repr(v)) for k, v in kw.items())))
    with _ENGINES_LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            t0 = time.perf_counter()
            eng = vllm.LLM(model=model, max_model_len=n_ctx, seed=seed, enable_prefix_caching=True,
                           disable_log_stats=False, **kw)
            log.info("vLLM engine for %s ready in %.1fs", model, time.perf_counter() - t0)
            _ENGINES[key] = eng
        return eng


class VLLMLLM(BaseLLM):
    """vLLM engine client. See the module docstring."""

    backend = "vllm"

    def __init__(self, cfg, role: str = "student", cache=None, **kw):
        _import_vllm()
        super().__init__(cfg, role, cache, **kw)
        self.top_logprobs = int(cfg.extra.get("top_logprobs", 20))
        self._engine = None
        self._engine_lock = threading.RLock()

    @property
    def engine(self):
        if self._engine is None:
            model = self.cfg.model
            from pld_spark.llm.models import MODEL_REGISTRY, resolve_model_path

            if model.lower() in MODEL_REGISTRY or model.lower().endswith(".gguf"):
                model = str(resolve_model_path(model))
            self._engine = get_engine(model, self.cfg.n_ctx, self.cfg.seed, self.cfg.extra)
        return self._engine

    def count_tokens(self, text: str) -> int:
        return len(self.engine.get_tokenizer().encode(text or "", add_special_tokens=False))

    def _sampling(self, req: ChatRequest, **more):
        from vllm import SamplingParams

        kw: dict[str, Any] = {"max_tokens": req.max_tokens, "temperature": req.temperature, "seed": self.cfg.seed}
        if req.json_schema is not None:
            kw.update(structured_params(json_schema=req.json_schema))
        kw.update(more)
        return SamplingParams(**kw)

    def _generate(self, convs: list[list[dict[str, str]]], params) -> list[Any]:
        try:
            with self._engine_lock:
                return self.engine.chat(convs, params, use_tqdm=False)
        except ValueError as e:
            # vLLM rejects over-long prompts with a ValueError naming the model length.
            if "max_model_len" in str(e) or "longer than" in str(e):
                raise ContextLengthError(f"vLLM: {e}") from e
            raise FatalLLMError(f"vLLM: {e}") from e

    def _to_response(self, out, req: ChatRequest, dt: float) -> ChatResponse:
        if not out.outputs:
            raise MalformedResponseError("vLLM returned no output")
        o = out.outputs[0]
        return ChatResponse(request_id=req.request_id, text=o.text or "", tokens_in=len(out.prompt_token_ids or []),
                            tokens_out=len(o.token_ids or []), latency_s=dt, model=self.model_id)

    def _chat_once(self, req: ChatRequest) -> ChatResponse:
        t0 = time.perf_counter()
        outs = self._generate([req.messages], [self._sampling(req)])
        return self._to_response(outs[0], req, time.perf_counter() - t0)

    def _answer_many(self, reqs: list[ChatRequest], max_in_flight: int = 1) -> list[ChatResponse]:
        """One engine batch for all misses; rows that need a JSON repair go through the base path."""
        from pld_spark.llm.jsonparse import JSONAnswerError, parse_json_answer

        if len(reqs) <= 1:
            return super()._answer_many(reqs, max_in_flight)
        t0 = time.perf_counter()
        try:
            outs = self._generate([r.messages for r in reqs], [self._sampling(r) for r in reqs])
        except LLMError:
            return super()._answer_many(reqs, max_in_flight)  # isolate the failing row(s)
        dt = (time.perf_counter() - t0) / len(reqs)
        answers: list[ChatResponse] = []
        for r, out in zip(reqs, outs):
            resp = self._to_response(out, r, dt)
            resp.attempts = 1
            resp.cost_usd = self.cost(resp.tokens_in, resp.tokens_out)
            self._bump(calls=1, tokens_in=resp.tokens_in, tokens_out=resp.tokens_out, cost_usd=resp.cost_usd,
                       latency_s=dt, prefix_tokens=resp.tokens_in,
                       prefix_reused_tokens=int(getattr(out, "num_cached_tokens", 0) or 0))
            if r.json_schema is not None:
                try:
                    resp.data = parse_json_answer(resp.text, r.json_schema)
                except JSONAnswerError:
                    resp = self._answer_as_data(r)  # the base path re-asks and repairs once
            answers.append(resp)
        return answers

    def _label_logprobs(self, system: str, inputs: list[str], labels: list[str]) -> list[LabelScores]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max(8, max(len(lab) for lab in labels)), temperature=0.0,
                                seed=self.cfg.seed, logprobs=self.top_logprobs, **structured_params(choice=labels))
        convs = [[{"role": "system", "content": system}, {"role": "user", "content": x}] for x in inputs]
        t0 = time.perf_counter()
        try:
            # the first request alone, then the rest: requests scheduled in the same engine step
            # cannot reuse each other's blocks, so this computes the shared rule prompt once and
            # every later request of the batch finds it in the prefix cache
            outs = self._generate(convs[:1], params)
            if len(convs) > 1:
                outs = list(outs) + list(self._generate(convs[1:], params))
        except LLMError as e:
            return [LabelScores(None, 0, 0, 0, 0.0, str(e), type(e).__name__) for _ in inputs]
        dt = (time.perf_counter() - t0) / max(1, len(inputs))
        tok = self.engine.get_tokenizer()
        res = []
        for out in outs:
            o = out.outputs[0]
            reused = int(getattr(out, "num_cached_tokens", 0) or 0)
            n_in = len(out.prompt_token_ids or [])
            lp = None
            if o.logprobs:
                top = [{"token": (getattr(v, "decoded_token", None) or tok.decode([tid])), "logprob": v.logprob}
                       for tid, v in o.logprobs[0].items()]
                lp = label_logprobs_from_top(top, labels)
            text = (o.text or "").strip()
            if lp is None:
                chosen = text if text in labels else None
                rest = math.log(0.02 / (len(labels) - 1))
                lp = {x: (math.log(0.98) if x == chosen else rest) for x in labels} if chosen else \
                    {x: 0.0 for x in labels}
            res.append(LabelScores(lp, n_in, len(o.token_ids or []), reused, dt))
            self._bump(calls=1, tokens_in=n_in, tokens_out=len(o.token_ids or []), prefix_tokens=n_in,
                       prefix_reused_tokens=reused, latency_s=dt)
        return res

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["engine_prefix_cache_hit_rate"] = self.engine_prefix_cache_hit_rate()
        return s

    def engine_prefix_cache_hit_rate(self) -> float | None:
        """hits / queries from the engine's metrics (``None`` if the engine keeps no stats)."""
        if self._engine is None or not hasattr(self._engine, "get_metrics"):
            return None
        try:
            hits = queries = 0.0
            for m in self._engine.get_metrics():
                name = getattr(m, "name", "")
                if name.startswith("vllm:prefix_cache_hits"):
                    hits += float(getattr(m, "value", 0) or 0)
                elif name.startswith("vllm:prefix_cache_queries"):
                    queries += float(getattr(m, "value", 0) or 0)
            return hits / queries if queries else None
        except Exception:  # noqa: BLE001 - metrics are best effort
            return None


__all__ = ["VLLMLLM", "structured_params", "get_engine"]
