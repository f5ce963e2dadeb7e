"""AWS Bedrock through the Converse API (boto3 ``bedrock-runtime``).

Credentials come from the usual AWS chain (environment, profile, instance role); the region
from ``cfg.region`` (else the chain's default). botocore's own retries are switched off so
the one retry policy of :class:`~pld_spark.llm.base.BaseLLM` applies.

Mapping: system messages -> ``system=[{"text"}]``; user/assistant turns -> ``messages`` with
``content=[{"text"}]`` (consecutive turns of one role are merged, as Converse requires
alternation); ``max_tokens``/``temperature`` -> ``inferenceConfig``; ``usage.inputTokens`` /
``outputTokens`` -> tokens. Converse has no JSON mode: a schema request adds the schema to the
system prompt and the base class extracts, validates and repairs once. Errors:
``ThrottlingException``/``ServiceQuotaExceededException`` -> RateLimitError;
``InternalServerException``/``ServiceUnavailableException``/``ModelNotReadyException`` ->
ServerError; ``ModelTimeoutException`` and read timeouts -> LLMTimeoutError;
``AccessDeniedException``/``UnrecognizedClientException``/``ExpiredTokenException``/missing
credentials -> AuthError; ``ValidationException`` -> BadRequestError (ContextLengthError when
the input is too long); ``ResourceNotFoundException`` -> BadRequestError.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from pld_spark.errors import (
    AuthError, BadRequestError, ContextLengthError, LLMConnectionError, LLMError, LLMTimeoutError,
    MalformedResponseError, RateLimitError, ServerError)
from pld_spark.llm.base import BaseLLM, ChatRequest, ChatResponse

log = logging.getLogger(__name__)

_RATE = {"ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException"}
_SERVER = {"InternalServerException", "ServiceUnavailableException", "ModelNotReadyException",
           "ModelErrorException", "InternalFailure", "ServiceUnavailable"}
_TIMEOUT = {"ModelTimeoutException", "RequestTimeout", "RequestTimeoutException"}
_AUTH = {"AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException",
         "InvalidSignatureException", "MissingAuthenticationTokenException"}
_NOT_FOUND = {"ResourceNotFoundException"}
_CONTEXT_MARKERS = ("too long", "too many tokens", "context length", "context window", "maximum context",
                    "input length")


def to_converse(req: ChatRequest) -> dict[str, Any]:
    """Converse keyword arguments for a request (without ``modelId``)."""
    system: list[dict[str, str]] = []
    messages: list[dict[str, Any]] = []
    for m in req.messages:
        role, text = m.get("role", "user"), m.get("content", "") or ""
        if role == "system":
            system.append({"text": text})
            continue
        role = "assistant" if role == "assistant" else "user"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].append({"text": text})
        else:
            messages.append({"role": role, "content": [{"text": text}]})
    if req.json_schema is not None:
        system.append({"text": "Reply with only one JSON object that follows this JSON schema, and nothing else:\n"
                               + json.dumps(req.json_schema, sort_keys=True)})
    kw: dict[str, Any] = {"messages": messages}
    if system:
        kw["system"] = system
    inf: dict[str, Any] = {}
    if req.max_tokens is not None:
        inf["maxTokens"] = int(req.max_tokens)
    if req.temperature is not None:
        inf["temperature"] = float(req.temperature)
    if inf:
        kw["inferenceConfig"] = inf
    return kw


def from_converse(body: dict[str, Any]) -> tuple[str, int, int]:
    """(text, input tokens, output tokens) of a Converse response; MalformedResponseError if unusable."""
    try:
        content = body["output"]["message"]["content"]
    except (KeyError, TypeError):
        raise MalformedResponseError("Bedrock Converse response has no output.message.content") from None
    if not isinstance(content, list):
        raise MalformedResponseError("Bedrock Converse output.message.content is not a list")
    text = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict) and "text" in c)
    usage = body.get("usage") or {}
    return text, int(usage.get("inputTokens", 0) or 0), int(usage.get("outputTokens", 0) or 0)


def map_client_error(exc) -> LLMError:
    """A botocore ``ClientError`` as the typed error of :mod:`pld_spark.errors`."""
    err = (getattr(exc, "response", None) or {}).get("Error", {}) or {}
    code = str(err.get("Code", ""))
    message = str(err.get("Message", "")) or str(exc)
    status = ((getattr(exc, "response", None) or {}).get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
    text = f"Bedrock {code or 'error'}: {message}"[:1000]
    if code in _RATE or status == 429:
        return RateLimitError(text, status=status)
    if code in _TIMEOUT or status == 408:
        return LLMTimeoutError(text, status=status)
    if code in _SERVER or (status is not None and status >= 500):
        return ServerError(text, status=status)
    if code in _AUTH or status in (401, 403):
        return AuthError(text, status=status)
    if code == "ValidationException" and any(m in message.lower() for m in _CONTEXT_MARKERS):
        return ContextLengthError(text, status=status)
    if code in _NOT_FOUND:
        return BadRequestError(text, status=status)
    return BadRequestError(text, status=status)


class BedrockLLM(BaseLLM):
    """Bedrock Converse client. ``client`` may be passed in (tests use a Stubber-wrapped one)."""

    backend = "bedrock"
    concurrent_requests = True

    def __init__(self, cfg, role: str = "student", cache=None, client=None, **kw):
        super().__init__(cfg, role, cache, **kw)
        self._client = client

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "bedrock-runtime", region_name=self.cfg.region,
                config=Config(read_timeout=self.cfg.timeout_s, connect_timeout=min(10.0, self.cfg.timeout_s),
                              retries={"max_attempts": 0, "mode": "standard"}))
        return self._client

    def _chat_once(self, req: ChatRequest) -> ChatResponse:
        from botocore.exceptions import (
            ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError)

        kw = to_converse(req)
        t0 = time.perf_counter()
        try:
            body = self.client.converse(modelId=self.cfg.model, **kw)
        except ClientError as e:
            raise map_client_error(e) from None
        except (ReadTimeoutError, ConnectTimeoutError) as e:
            raise LLMTimeoutError(f"Bedrock call timed out after {self.cfg.timeout_s}s: {type(e).__name__}") from None
        except EndpointConnectionError as e:
            raise LLMConnectionError(f"cannot reach Bedrock: {e}") from None
        except NoCredentialsError:
            raise AuthError("no AWS credentials found in the default chain (env, profile, role)") from None
        dt = time.perf_counter() - t0
        text, tin, tout = from_converse(body)
        return ChatResponse(text=text, tokens_in=tin, tokens_out=tout, latency_s=dt, model=self.cfg.model)
