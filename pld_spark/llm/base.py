"""The one small contract every model backend implements (batch in, batch out).

Teacher and student are both :class:`LLMClient` instances built from their own config
(``teacher:`` / ``student:``) by :func:`pld_spark.llm.registry.build_client` and passed to
stages explicitly. Backends subclass :class:`BaseLLM` and implement ``_chat_once`` (one
request, raising the typed errors of :mod:`pld_spark.errors`) and, for students,
``_label_logprobs``. Retries, rate limits, caching and accounting live in the base class so
every backend behaves the same.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable

from pld_spark.errors import FatalLLMError, LLMError, MalformedResponseError, RetryableLLMError
from pld_spark.llm.labels import LabelScorer, label_logprobs_from_top, map_to_label  # noqa: F401 - re-exported
from pld_spark.llm.types import (  # noqa: F401 - the contract's types, re-exported for backends
    ChatRequest, ChatResponse, ClassifyResult, LabelScores, LLMClient, approx_token_count)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared machinery
class BaseLLM(LabelScorer):
    """Shared behaviour of every backend: cache, retries, rate limit, accounting, JSON, classify.

    Subclasses implement :meth:`_chat_once` (one request; raise the typed errors of
    :mod:`pld_spark.errors`) and, when they can score labels, :meth:`_label_logprobs`. The
    default :meth:`_label_logprobs` asks for the label as text and maps it to the label set.
    ``sleep``/``rand`` are injectable so retry behaviour is testable without waiting.
    """

    backend: str = "base"
    #: I/O-bound backends (HTTP) may run a batch with several requests in flight.
    concurrent_requests: bool = False
    #: backends that implement :meth:`embed` set this
    can_embed: bool = False
    #: Output tokens a text-mode label answer may use.
    label_answer_tokens: int = 12

    def __init__(self, cfg, role: str = "student", cache=None, *, sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random, limiter=None):
        from pld_spark.llm.cache import MemoryCache
        from pld_spark.llm.ratelimit import shared_limiter
        from pld_spark.llm.retry import RetryPolicy

        self.cfg = cfg
        self.role = role
        self.model_id: str = cfg.model
        self.policy = RetryPolicy.from_config(cfg)
        self.memory_cache = MemoryCache() if cfg.cache else None
        self.persistent_cache = cache if cfg.cache else None
        self.limiter = limiter if limiter is not None else shared_limiter(
            (self.backend, cfg.model, cfg.base_url or "", cfg.region or ""), cfg.requests_per_minute,
            cfg.tokens_per_minute)
        self._sleep = sleep
        self._rand = rand
        self._lock = threading.Lock()
        self._stats: dict[str, float] = {}
        self.reset_stats()

    @property
    def calibration(self) -> str:
        """The calibration ``classify`` uses when not told one (``student.calibration``)."""
        return self.cfg.calibration

    @property
    def max_concurrency(self) -> int:
        """Requests worth keeping in flight at once: 1 for in-process engines (they serialise on
        one model), ``cfg.extra["max_in_flight"]`` (default 64) for HTTP backends."""
        return int(self.cfg.extra.get("max_in_flight", 64)) if self.concurrent_requests else 1

    # ------------------------------------------------------------------ backend hooks
    def _chat_once(self, req: ChatRequest) -> ChatResponse:
        """One model call for a request whose defaults are filled in. Raise typed LLMErrors."""
        raise NotImplementedError

    def _label_logprobs(self, system: str, inputs: list[str], labels: list[str]) -> list[LabelScores]:
        """Per-label log-probabilities per input. Default: ask for the label as text and map it."""
        return self._label_logprobs_by_text(system, inputs, labels)

    def count_tokens(self, text: str) -> int:
        """Token count; the base class estimates (about 4 characters per token)."""
        return approx_token_count(text)

    def close(self) -> None:
        """Release backend resources (HTTP sessions, engines). Safe to call twice."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        from pld_spark.errors import ConfigError

        raise ConfigError(f"backend {self.backend!r} does not embed; choose another cluster.embedder")

    # ------------------------------------------------------------------ stats
    _ZERO = ("requests", "calls", "cache_hits", "persistent_cache_hits", "errors", "retries", "repairs",
             "tokens_in", "tokens_out", "cost_usd", "latency_s", "rate_limit_wait_s", "classify_inputs",
             "classify_errors", "label_unmapped", "prefix_tokens", "prefix_reused_tokens")

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = {k: 0 for k in self._ZERO}
            self._stats["cost_usd"] = 0.0
            self._stats["latency_s"] = 0.0
            self._stats["rate_limit_wait_s"] = 0.0

    def _bump(self, **delta: float) -> None:
        with self._lock:
            for k, v in delta.items():
                self._stats[k] = self._stats.get(k, 0) + v

    def stats(self) -> dict[str, Any]:
        """Cumulative counters for this client.

        ``calls`` counts model calls made (retries and repair attempts included; cache hits
        excluded); tokens and cost count what those calls spent. ``prefix_reuse_rate`` is the
        share of classify prompt tokens served from a reused KV prefix.
        """
        with self._lock:
            s = dict(self._stats)
        s["cost_usd"] = round(float(s["cost_usd"]), 8)
        s["prefix_reuse_rate"] = (s["prefix_reused_tokens"] / s["prefix_tokens"]) if s["prefix_tokens"] else 0.0
        s["backend"] = self.backend
        s["model"] = self.model_id
        s["role"] = self.role
        return s

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """USD for one call from the configured prices per 1k tokens."""
        return tokens_in / 1000.0 * self.cfg.price_in_per_1k + tokens_out / 1000.0 * self.cfg.price_out_per_1k

    # ------------------------------------------------------------------ requests
    def effective(self, req: ChatRequest) -> ChatRequest:
        """The request with config defaults filled in (max_tokens, temperature)."""
        return replace(req, messages=[dict(m) for m in req.messages],
                       max_tokens=req.max_tokens if req.max_tokens is not None else self.cfg.max_tokens,
                       temperature=req.temperature if req.temperature is not None else self.cfg.temperature)

    def sampling_params(self, req: ChatRequest) -> dict[str, Any]:
        return {"temperature": req.temperature, "max_tokens": req.max_tokens, "seed": self.cfg.seed,
                **({"extra": req.extra} if req.extra else {})}

    def cache_key(self, req: ChatRequest) -> str:
        """Content address of an (effective) request; see :func:`pld_spark.llm.cache.cache_key`."""
        from pld_spark.llm.cache import cache_key

        return cache_key(self.backend, self.model_id, req.messages, req.json_schema, self.sampling_params(req),
                         req.template_version)

    def attach_cache(self, cache) -> None:
        """Use ``cache`` (e.g. a DeltaCache) as the persistent layer from now on."""
        self.persistent_cache = cache if self.cfg.cache else None

    def flush_cache(self) -> int:
        """Write what the persistent layer buffers (a no-op for layers without a buffer); -> rows written."""
        flush = getattr(self.persistent_cache, "flush", None)
        return flush() if flush is not None else 0

    def chat(self, requests: list[ChatRequest], max_in_flight: int = 1) -> list[ChatResponse]:
        """Answer a batch; per-row failures come back as responses with ``error`` set.

        Cache order: memory, then the persistent layer (one ``get_many`` per batch); new
        successes are stored in both (one ``put_many``). Identical requests in one batch are
        sent once. ``max_in_flight`` > 1 overlaps requests for HTTP backends.
        """
        from pld_spark.llm.cache import CacheEntry

        reqs = [self.effective(r) for r in requests]
        out: list[ChatResponse | None] = [None] * len(reqs)
        keys = [self.cache_key(r) for r in reqs] if self.cfg.cache else [""] * len(reqs)
        if self.cfg.cache:
            self._fill_from_cache(reqs, keys, out)
        # Unique misses, first occurrence computes.
        todo: dict[str, int] = {}
        for i, r in enumerate(reqs):
            if out[i] is None:
                k = keys[i] or f"nocache-{i}"
                todo.setdefault(k, i)
        idx = list(todo.values())
        answers = self._answer_many([reqs[i] for i in idx], max_in_flight) if idx else []
        new_entries = []
        for i, resp in zip(idx, answers):
            out[i] = resp
            if resp.ok and self.cfg.cache:
                payload = {"text": resp.text, "data": resp.data, "model": resp.model}
                if resp.logprobs is not None:
                    payload["logprobs"] = resp.logprobs
                e = CacheEntry(key=keys[i], response=payload,
                               tokens_in=resp.tokens_in, tokens_out=resp.tokens_out, backend=self.backend,
                               model=self.model_id, template_version=reqs[i].template_version)
                new_entries.append(e)
                self.memory_cache.put(e)
        # Duplicates inside the batch share the first answer.
        for i, r in enumerate(reqs):
            if out[i] is None:
                first = out[todo[keys[i] or f"nocache-{i}"]]
                out[i] = replace(first, request_id=r.request_id, cached=first.ok, attempts=0, cost_usd=0.0)
                if first.ok:
                    self._bump(cache_hits=1)
        if new_entries and self.persistent_cache is not None:
            try:
                self.persistent_cache.put_many(new_entries)
            except Exception:  # noqa: BLE001 - a cache write failure must not lose the answers
                log.exception("could not store %d responses in the persistent cache", len(new_entries))
        self._bump(requests=len(reqs))
        return [o for o in out]  # type: ignore[misc]

    def _answer_many(self, reqs: list[ChatRequest], max_in_flight: int = 1) -> list[ChatResponse]:
        """Answer cache misses (never raises per row). Engines that batch natively override this."""
        if len(reqs) > 1 and max_in_flight > 1 and self.concurrent_requests:
            with ThreadPoolExecutor(max_workers=min(max_in_flight, len(reqs))) as pool:
                return list(pool.map(self._answer_as_data, reqs))
        return [self._answer_as_data(r) for r in reqs]

    def chat_one(self, request: ChatRequest) -> ChatResponse:
        """Answer one request (cache included); raises the typed LLMError on failure."""
        resp = self.chat([request])[0]
        if not resp.ok:
            raise getattr(resp, "_exception", None) or LLMError(resp.error or "unknown error")
        return resp

    def _fill_from_cache(self, reqs: list[ChatRequest], keys: list[str], out: list) -> None:
        for i, k in enumerate(keys):
            e = self.memory_cache.get(k)
            if e is not None:
                out[i] = self._from_entry(e, reqs[i])
        missing = sorted({keys[i] for i in range(len(reqs)) if out[i] is None})
        if missing and self.persistent_cache is not None:
            found = self._persistent_get(missing)
            for i, k in enumerate(keys):
                if out[i] is None and k in found:
                    out[i] = self._from_entry(found[k], reqs[i])
                    self._bump(persistent_cache_hits=1)

    def _persistent_get(self, keys: list[str]) -> dict:
        """Entries of the persistent cache layer for ``keys`` (also put in memory); an unreadable
        cache means "miss", never a failed stage."""
        try:
            found = self.persistent_cache.get_many(keys)
        except Exception:  # noqa: BLE001 - an unreadable cache means "miss", not a failed stage
            log.exception("persistent cache lookup failed; treating %d keys as misses", len(keys))
            return {}
        for e in found.values():
            self.memory_cache.put(e)
        return found

    def _from_entry(self, e, req: ChatRequest) -> ChatResponse:
        self._bump(cache_hits=1)
        r = e.response
        return ChatResponse(request_id=req.request_id, text=r.get("text", ""), data=r.get("data"),
                            tokens_in=e.tokens_in, tokens_out=e.tokens_out, latency_s=0.0,
                            model=r.get("model") or e.model, attempts=0, cached=True, cost_usd=0.0,
                            logprobs=r.get("logprobs"))

    def _answer_as_data(self, req: ChatRequest) -> ChatResponse:
        try:
            return self._answer(req)
        except LLMError as e:
            resp = ChatResponse(request_id=req.request_id, model=self.model_id,
                                attempts=int(getattr(e, "attempts", 0) or 0),
                                tokens_in=int(getattr(e, "tokens_in", 0) or 0),
                                tokens_out=int(getattr(e, "tokens_out", 0) or 0),
                                error=str(e)[:2000] or type(e).__name__, error_type=type(e).__name__)
            resp.cost_usd = self.cost(resp.tokens_in, resp.tokens_out)
            object.__setattr__(resp, "_exception", e)
            self._bump(errors=1)
            return resp

    def _answer(self, req: ChatRequest) -> ChatResponse:
        """Call (with retries), then parse/validate JSON with one repair attempt if asked."""
        from pld_spark.llm.jsonparse import JSONAnswerError, parse_json_answer, repair_message

        resp, attempts = self._call(req)
        resp.attempts = attempts
        if req.json_schema is None:
            return resp
        try:
            resp.data = parse_json_answer(resp.text, req.json_schema)
            return resp
        except JSONAnswerError as first_err:
            err = first_err
        self._bump(repairs=1)
        repair = replace(req, messages=req.messages + [
            {"role": "assistant", "content": resp.text},
            {"role": "user", "content": repair_message(str(err), req.json_schema)}])
        try:
            resp2, attempts2 = self._call(repair)
        except LLMError as e:
            e.attempts = attempts + int(getattr(e, "attempts", 1) or 1)  # type: ignore[attr-defined]
            e.tokens_in = resp.tokens_in  # type: ignore[attr-defined]
            e.tokens_out = resp.tokens_out  # type: ignore[attr-defined]
            raise
        total = replace(resp2, attempts=attempts + attempts2, tokens_in=resp.tokens_in + resp2.tokens_in,
                        tokens_out=resp.tokens_out + resp2.tokens_out, latency_s=resp.latency_s + resp2.latency_s,
                        cost_usd=resp.cost_usd + resp2.cost_usd)
        try:
            total.data = parse_json_answer(resp2.text, req.json_schema)
            return total
        except JSONAnswerError as e2:
            exc = MalformedResponseError(f"JSON answer invalid after one repair attempt: {e2}")
            exc.attempts = total.attempts  # type: ignore[attr-defined]
            exc.tokens_in = total.tokens_in  # type: ignore[attr-defined]
            exc.tokens_out = total.tokens_out  # type: ignore[attr-defined]
            raise exc from None

    def estimate_tokens(self, req: ChatRequest) -> int:
        """Prompt + output token estimate for the token rate limit (no tokenizer needed)."""
        prompt = sum(approx_token_count(m.get("content", "")) + 4 for m in req.messages)
        return prompt + int(req.max_tokens or 0)

    def _call(self, req: ChatRequest) -> tuple[ChatResponse, int]:
        """One logical call: rate limit + ``_chat_once`` under the retry policy."""
        from pld_spark.llm.retry import call_with_retry

        est = self.estimate_tokens(req) if self.limiter.enabled else 0

        def once() -> ChatResponse:
            waited = self.limiter.acquire(est) if self.limiter.enabled else 0.0
            self._bump(calls=1, rate_limit_wait_s=waited)
            t0 = time.perf_counter()
            try:
                r = self._chat_once(req)
            except LLMError:
                raise
            except Exception as e:  # noqa: BLE001 - a backend library error becomes a typed per-row failure
                log.warning("%s backend raised %s: %s", self.backend, type(e).__name__, e)
                raise FatalLLMError(f"{self.backend} backend error: {type(e).__name__}: {e}") from e
            r.latency_s = r.latency_s or (time.perf_counter() - t0)
            r.request_id = req.request_id
            r.model = r.model or self.model_id
            r.cost_usd = self.cost(r.tokens_in, r.tokens_out)
            if self.limiter.enabled:
                self.limiter.settle(est, r.tokens_in + r.tokens_out)
            self._bump(tokens_in=r.tokens_in, tokens_out=r.tokens_out, cost_usd=r.cost_usd, latency_s=r.latency_s)
            return r

        def on_retry(attempt: int, exc: BaseException, wait: float) -> None:
            self._bump(retries=1)

        return call_with_retry(once, self.policy, sleep=self._sleep, rand=self._rand, on_retry=on_retry)

__all__ = ["ChatRequest", "ChatResponse", "ClassifyResult", "LLMClient", "BaseLLM", "LabelScores", "map_to_label",
           "approx_token_count", "label_logprobs_from_top", "RetryableLLMError"]
