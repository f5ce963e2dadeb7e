"""OpenAI backend helpers without a server: Retry-After parsing, payloads, logprob mapping."""
from __future__ import annotations

import math
import time
from email.utils import formatdate

import pytest

from pld_spark.config import LLMConfig
from pld_spark.llm.base import ChatRequest, label_logprobs_from_top
from pld_spark.llm.openai import OpenAILLM, parse_retry_after

LABELS = ["gender", "profession", "race", "religion"]


def test_parse_retry_after_seconds_and_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    d = parse_retry_after(formatdate(now + 30, usegmt=True), now=now)
    assert 28 <= d <= 31


def test_payload_response_formats():
    schema = {"type": "object", "required": ["a"]}
    req = ChatRequest(messages=[{"role": "user", "content": "x"}], json_schema=schema, max_tokens=5, temperature=0.0)
    default = OpenAILLM(LLMConfig(type="openai", model="m", base_url="http://h/v1"))
    assert default.payload(req)["response_format"] == {"type": "json_object", "schema": schema}
    strict = OpenAILLM(LLMConfig(type="openai", model="m", base_url="http://h/v1",
                                 extra={"response_format": "json_schema"}))
    assert strict.payload(req)["response_format"]["type"] == "json_schema"
    none = OpenAILLM(LLMConfig(type="openai", model="m", base_url="http://h/v1", extra={"response_format": "none"}))
    assert "response_format" not in none.payload(req)
    p = default.payload(ChatRequest(messages=[], extra={"logprobs": True, "top_logprobs": 5}))
    assert p["logprobs"] is True and p["top_logprobs"] == 5


def test_key_only_in_header_never_in_payload(monkeypatch):
    monkeypatch.setenv("PLD_TEST_KEY", "sk-secret-123")
    c = OpenAILLM(LLMConfig(type="openai", model="m", base_url="http://h/v1", api_key_env="PLD_TEST_KEY"))
    assert c._headers()["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in repr(c.payload(ChatRequest(messages=[{"role": "user", "content": "x"}])))
    assert "sk-secret-123" not in repr(c.cfg.model_dump())
    assert c._scrub("echo sk-secret-123 back") == "echo *** back"


def test_label_logprobs_from_top_tokens():
    top = [{"token": " race", "logprob": math.log(0.5)}, {"token": "gender", "logprob": math.log(0.2)},
           {"token": "prof", "logprob": math.log(0.1)}, {"token": "Prof", "logprob": math.log(0.05)},
           {"token": "The", "logprob": math.log(0.1)}]
    lp = label_logprobs_from_top(top, LABELS)
    assert lp["race"] == pytest.approx(math.log(0.5))
    assert lp["profession"] == pytest.approx(math.log(0.15))  # two prefix tokens summed
    assert lp["religion"] < math.log(0.05)  # unseen: below everything seen
    assert label_logprobs_from_top([{"token": "The", "logprob": -0.1}], LABELS) is None


def test_connection_pool_holds_every_concurrent_request():
    """requests' default pool keeps 10 connections; at 64 in flight the rest were dropped per call."""
    from pld_spark.config import LLMConfig
    from pld_spark.llm.registry import build_client

    for n, want in ((64, 64), (4, 10)):
        c = build_client(LLMConfig(type="openai", model="m", base_url="http://127.0.0.1:9/v1",
                                   extra={"max_in_flight": n}), role="teacher")
        assert c.session.get_adapter("http://127.0.0.1:9/v1")._pool_maxsize == want
        assert c.session.get_adapter("https://example.com/v1")._pool_maxsize == want
        c.close()
