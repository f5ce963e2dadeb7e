"""Any OpenAI-compatible chat-completions endpoint over plain HTTP (``requests``, no SDK).

Works with vLLM's server, Databricks Model Serving, OpenAI, and ``python -m llama_cpp.server``.

- The API key is read from the environment variable named by ``api_key_env`` when the client
  is built; it is sent only in the ``Authorization`` header and never appears in logs, error
  messages or stored text.
- HTTP status -> typed error: 429 :class:`RateLimitError` (``Retry-After`` seconds kept),
  5xx :class:`ServerError`, 401/403 :class:`AuthError`, 400/404/422 :class:`BadRequestError`
  (context-length messages -> :class:`ContextLengthError`), timeouts
  :class:`LLMTimeoutError`, connection failures :class:`LLMConnectionError`, a body that is not
  JSON or has no choices :class:`MalformedResponseError`.
- JSON answers: ``response_format`` (``cfg.extra["response_format"]``: ``json_object_schema``
  (default: ``{"type": "json_object", "schema": ...}``, llama.cpp / vLLM), ``json_schema``
  (OpenAI structured outputs), ``json_object`` or ``none``), always followed by the base
  class's extraction + validation + one repair attempt.
- classify: first-token ``logprobs``/``top_logprobs`` mapped onto the labels when the server
  offers them; otherwise a JSON answer constrained to ``{"label": <enum>}``, then strict
  text mapping. Never unparseable.
"""
from __future__ import annotations

import email.utils
import logging
import os
import time
from typing import Any

from pld_spark.errors import (
    AuthError, BadRequestError, ConfigError, ContextLengthError, LLMConnectionError, LLMError, LLMTimeoutError,
    MalformedResponseError, RateLimitError, ServerError)
from pld_spark.llm.base import (
    BaseLLM, ChatRequest, ChatResponse, LabelScores, approx_token_count, label_logprobs_from_top)

log = logging.getLogger(__name__)

_CONTEXT_MARKERS = ("context_length_exceeded", "maximum context length", "context window", "context length",
                    "too many tokens", "exceeds the context", "prompt is too long")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date. ``None`` if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if dt is None:
        return None
    return max(0.0, dt.timestamp() - (now if now is not None else time.time()))


class OpenAILLM(BaseLLM):
    """OpenAI-compatible chat completions client. See the module docstring."""

    backend = "openai"
    concurrent_requests = True
    label_answer_tokens = 8

    def __init__(self, cfg, role: str = "student", cache=None, **kw):
        super().__init__(cfg, role, cache, **kw)
        if not cfg.base_url:
            raise ConfigError(f"{role}.base_url is required for type 'openai' (e.g. http://127.0.0.1:8000/v1)")
        self.base_url = cfg.base_url.rstrip("/")
        self._api_key = None
        if cfg.api_key_env:
            self._api_key = os.environ.get(cfg.api_key_env)
            if not self._api_key:
                raise ConfigError(f"environment variable {cfg.api_key_env} (named by {role}.api_key_env) is not set")
        self.response_format_mode = str(cfg.extra.get("response_format", "json_object_schema"))
        self.top_logprobs = int(cfg.extra.get("top_logprobs", 20))
        self.max_in_flight = int(cfg.extra.get("max_in_flight", 4))
        self.connect_timeout_s = float(cfg.extra.get("connect_timeout_s", min(10.0, cfg.timeout_s)))
        self._logprobs_ok: bool | None = None if cfg.extra.get("logprobs", True) else False
        self._session = None

    # ------------------------------------------------------------------ http
    @property
    def session(self):
        if self._session is None:
            import requests
            from requests.adapters import HTTPAdapter

            self._session = requests.Session()
            # keep a pooled connection per concurrent request (requests' default pool is 10; at
            # 16 or 64 in flight the rest were opened and dropped per call, a TLS handshake each)
            pool = max(10, self.max_concurrency)
            for scheme in ("http://", "https://"):
                self._session.mount(scheme, HTTPAdapter(pool_connections=4, pool_maxsize=pool))
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _scrub(self, text: str) -> str:
        """Never let the key leak into an error message (a server may echo headers)."""
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "***")
        return text

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        import requests

        url = f"{self.base_url}{path}"
        try:
            r = self.session.post(url, json=payload, headers=self._headers(),
                                  timeout=(self.connect_timeout_s, self.cfg.timeout_s))
        except requests.exceptions.Timeout as e:
            raise LLMTimeoutError(f"no answer from {url} within {self.cfg.timeout_s}s ({type(e).__name__})") from None
        except requests.exceptions.ConnectionError as e:
            raise LLMConnectionError(f"cannot reach {url}: {type(e).__name__}") from None
        except requests.exceptions.RequestException as e:
            raise LLMConnectionError(f"request to {url} failed: {type(e).__name__}") from None
        if r.status_code >= 400:
            raise self._http_error(r, url)
        try:
            body = r.json()
        except ValueError:
            raise MalformedResponseError(
                f"{url}: HTTP {r.status_code} body is not JSON: {self._scrub(r.text)[:200]!r}") from None
        if not isinstance(body, dict):
            raise MalformedResponseError(f"{url}: HTTP {r.status_code} body is not a JSON object")
        return body

    def _http_error(self, r, url: str) -> LLMError:
        status = r.status_code
        detail = self._scrub(r.text or "")[:500]  # scrub first: a cut could keep part of the key
        msg = f"{url}: HTTP {status}: {detail}"
        if status == 429:
            return RateLimitError(msg, status=status, retry_after=parse_retry_after(r.headers.get("Retry-After")))
        if status >= 500:
            return ServerError(msg, status=status, retry_after=parse_retry_after(r.headers.get("Retry-After")))
        if status in (401, 403):
            return AuthError(f"{url}: HTTP {status}: not authorised (check the key in "
                             f"{self.cfg.api_key_env or 'the api_key_env variable'})", status=status)
        if status == 408:
            return LLMTimeoutError(msg, status=status)
        low = detail.lower()
        if any(m in low for m in _CONTEXT_MARKERS):
            return ContextLengthError(msg, status=status)
        return BadRequestError(msg, status=status)

    # ------------------------------------------------------------------ chat
    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any] | None:
        mode = self.response_format_mode
        if mode == "none":
            return None
        if mode == "json_object":
            return {"type": "json_object"}
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        return {"type": "json_object", "schema": schema}

    def payload(self, req: ChatRequest) -> dict[str, Any]:
        """The JSON body for one request (public for tests and debugging; holds no secret)."""
        p: dict[str, Any] = {"model": self.cfg.model, "messages": req.messages, "max_tokens": req.max_tokens,
                             "temperature": req.temperature, "seed": self.cfg.seed, "stream": False}
        if req.json_schema is not None:
            rf = self._response_format(req.json_schema)
            if rf is not None:
                p["response_format"] = rf
        for k, v in (req.extra or {}).items():
            p[k] = v
        return p

    def _chat_once(self, req: ChatRequest) -> ChatResponse:
        t0 = time.perf_counter()
        body = self._post("/chat/completions", self.payload(req))
        dt = time.perf_counter() - t0
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise MalformedResponseError(f"{self.base_url}/chat/completions: response has no choices")
        msg = choices[0].get("message")
        if not isinstance(msg, dict):
            raise MalformedResponseError(f"{self.base_url}/chat/completions: first choice has no message")
        text = msg.get("content") or ""
        usage = body.get("usage") or {}
        tin = usage.get("prompt_tokens")
        tout = usage.get("completion_tokens")
        lp = None
        lp_body = choices[0].get("logprobs")
        if isinstance(lp_body, dict) and isinstance(lp_body.get("content"), list):
            lp = [{"token": c.get("token", ""), "logprob": c.get("logprob"),
                   "top_logprobs": [{"token": t.get("token", ""), "logprob": t.get("logprob")}
                                    for t in (c.get("top_logprobs") or []) if isinstance(t, dict)]}
                  for c in lp_body["content"] if isinstance(c, dict)]
        return ChatResponse(
            text=text,
            tokens_in=int(tin) if tin is not None else sum(approx_token_count(m.get("content", ""))
                                                           for m in req.messages),
            tokens_out=int(tout) if tout is not None else approx_token_count(text),
            latency_s=dt, model=str(body.get("model") or self.cfg.model), logprobs=lp)

    # ------------------------------------------------------------------ classify
    label_logprobs_from_top = staticmethod(label_logprobs_from_top)

    def _label_logprobs(self, system: str, inputs: list[str], labels: list[str]) -> list[LabelScores]:
        if self._logprobs_ok is not False:
            reqs = [ChatRequest(messages=[{"role": "system", "content": system}, {"role": "user", "content": x}],
                                max_tokens=self.label_answer_tokens, temperature=0.0,
                                template_version="classify-logprobs",
                                extra={"logprobs": True, "top_logprobs": self.top_logprobs})
                    for x in inputs]
            resps = self.chat(reqs, max_in_flight=self.max_in_flight)
            if any(r.error_type == BadRequestError.__name__ for r in resps) and not any(r.ok for r in resps):
                log.warning("%s rejects logprobs; classifying with constrained answers instead", self.base_url)
                self._logprobs_ok = False
            else:
                self._logprobs_ok = True
                out = []
                for x, r in zip(inputs, resps):
                    lp = None
                    if r.ok and r.logprobs:
                        lp = self.label_logprobs_from_top(r.logprobs[0].get("top_logprobs") or [], labels)
                    if lp is not None:
                        out.append(LabelScores(lp, r.tokens_in, r.tokens_out, 0, r.latency_s))
                    elif r.ok:
                        out.append(self._scores_from_text(r, labels))
                    else:
                        out.append(LabelScores(None, r.tokens_in, r.tokens_out, 0, r.latency_s, r.error,
                                               r.error_type))
                return out
        return self._label_logprobs_constrained(system, inputs, labels)

    def _label_logprobs_constrained(self, system: str, inputs: list[str], labels: list[str]) -> list[LabelScores]:
        schema = {"type": "object", "properties": {"label": {"type": "string", "enum": list(labels)}},
                  "required": ["label"]}
        instr = f"\n\nAnswer with a JSON object {{\"label\": <one of {', '.join(labels)}>}}."
        reqs = [ChatRequest(messages=[{"role": "system", "content": system + instr}, {"role": "user", "content": x}],
                            json_schema=schema, max_tokens=24, temperature=0.0, template_version="classify-json")
                for x in inputs]
        out = []
        for r in self.chat(reqs, max_in_flight=self.max_in_flight):
            chosen = (r.data or {}).get("label") if r.ok else None
            if r.ok:
                out.append(self._scores_from_text(r, labels, chosen=chosen if chosen in labels else None))
            elif r.error_type == MalformedResponseError.__name__:
                # Invalid JSON twice: no information, so a uniform distribution (never unparseable).
                self._bump(label_unmapped=1)
                out.append(LabelScores({lab: 0.0 for lab in labels}, r.tokens_in, r.tokens_out, 0, r.latency_s))
            else:
                out.append(LabelScores(None, r.tokens_in, r.tokens_out, 0, r.latency_s, r.error, r.error_type))
        return out
