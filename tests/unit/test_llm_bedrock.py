"""Bedrock Converse request/response and error mapping with botocore's Stubber (no network)."""
from __future__ import annotations

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.stub import Stubber  # noqa: E402

from pld_spark.config import LLMConfig  # noqa: E402
from pld_spark.errors import (  # noqa: E402
    AuthError, BadRequestError, ContextLengthError, LLMTimeoutError, RateLimitError, ServerError)
from pld_spark.llm.base import ChatRequest  # noqa: E402
from pld_spark.llm.bedrock import BedrockLLM, to_converse  # noqa: E402

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


def converse_response(text="Hello there", tin=12, tout=3):
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": tin, "outputTokens": tout, "totalTokens": tin + tout},
        "metrics": {"latencyMs": 42},
    }


@pytest.fixture
def stubbed(monkeypatch):
    # Fake credentials so signing works offline; Stubber intercepts before any network I/O.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    stub = Stubber(client)
    cfg = LLMConfig(type="bedrock", model=MODEL, region="us-east-1", max_tokens=64, temperature=0.0, max_retries=2,
                    backoff_base_s=0, price_in_per_1k=0.25, price_out_per_1k=1.25)
    llm = BedrockLLM(cfg, role="teacher", client=client, sleep=lambda s: None)
    with stub:
        yield llm, stub


def test_request_and_response_mapping(stubbed):
    llm, stub = stubbed
    expected = {
        "modelId": MODEL,
        "system": [{"text": "You are terse."}],
        "messages": [{"role": "user", "content": [{"text": "Say hi"}]}],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.0},
    }
    stub.add_response("converse", converse_response(), expected)
    r = llm.chat_one(ChatRequest(messages=[{"role": "system", "content": "You are terse."},
                                           {"role": "user", "content": "Say hi"}]))
    stub.assert_no_pending_responses()
    assert r.text == "Hello there" and r.tokens_in == 12 and r.tokens_out == 3 and r.model == MODEL
    assert r.cost_usd == pytest.approx(12 / 1000 * 0.25 + 3 / 1000 * 1.25)
    assert llm.stats()["tokens_in"] == 12


def test_consecutive_roles_merged_and_json_schema_in_system():
    req = ChatRequest(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}],
                      json_schema={"type": "object", "required": ["rule"]}, max_tokens=5, temperature=0.2)
    kw = to_converse(req)
    assert kw["messages"] == [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
                              {"role": "assistant", "content": [{"text": "c"}]},
                              {"role": "user", "content": [{"text": "d"}]}]
    assert "JSON schema" in kw["system"][0]["text"] and '"required": ["rule"]' in kw["system"][0]["text"]
    assert kw["inferenceConfig"] == {"maxTokens": 5, "temperature": 0.2}


def test_json_answer_extracted_from_prose(stubbed):
    llm, stub = stubbed
    stub.add_response("converse", converse_response('Here: {"rule": "If a then b."} done'))
    r = llm.chat_one(ChatRequest(messages=[{"role": "user", "content": "rule?"}],
                                 json_schema={"type": "object", "required": ["rule"]}))
    assert r.data == {"rule": "If a then b."}


@pytest.mark.parametrize("code,status,exc", [
    ("AccessDeniedException", 403, AuthError),
    ("UnrecognizedClientException", 403, AuthError),
    ("ResourceNotFoundException", 404, BadRequestError),
    ("ValidationException", 400, BadRequestError),
])
def test_fatal_errors_map_and_are_not_retried(stubbed, code, status, exc):
    llm, stub = stubbed
    stub.add_client_error("converse", service_error_code=code, service_message="nope", http_status_code=status)
    with pytest.raises(exc):
        llm.chat_one(ChatRequest(messages=[{"role": "user", "content": "x"}]))
    stub.assert_no_pending_responses()
    assert llm.stats()["calls"] == 1


def test_context_length_validation_error(stubbed):
    llm, stub = stubbed
    stub.add_client_error("converse", service_error_code="ValidationException",
                          service_message="Input is too long for requested model.", http_status_code=400)
    with pytest.raises(ContextLengthError):
        llm.chat_one(ChatRequest(messages=[{"role": "user", "content": "x"}]))


@pytest.mark.parametrize("code,status,exc", [
    ("ThrottlingException", 429, RateLimitError),
    ("ServiceUnavailableException", 503, ServerError),
    ("InternalServerException", 500, ServerError),
    ("ModelTimeoutException", 408, LLMTimeoutError),
])
def test_retryable_errors_retried_then_succeed(stubbed, code, status, exc):
    llm, stub = stubbed
    stub.add_client_error("converse", service_error_code=code, service_message="busy", http_status_code=status)
    stub.add_response("converse", converse_response("ok after retry"))
    r = llm.chat_one(ChatRequest(messages=[{"role": "user", "content": "x"}]))
    assert r.text == "ok after retry" and r.attempts == 2
    assert llm.stats()["retries"] == 1


def test_throttling_exhausts_retry_budget(stubbed):
    llm, stub = stubbed
    for _ in range(3):  # max_retries=2 -> 3 attempts
        stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
    r = llm.chat([ChatRequest(messages=[{"role": "user", "content": "x"}])])[0]
    assert r.error_type == "RateLimitError" and r.attempts == 3
    stub.assert_no_pending_responses()


def test_malformed_response_is_typed(stubbed):
    llm, stub = stubbed
    # A response without content text: our mapper must not crash.
    stub.add_response("converse", {"output": {"message": {"role": "assistant", "content": []}},
                                   "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 0,
                                                                       "totalTokens": 1},
                                   "metrics": {"latencyMs": 1}})
    r = llm.chat_one(ChatRequest(messages=[{"role": "user", "content": "x"}]))
    assert r.text == "" and r.tokens_in == 1


def test_classify_falls_back_to_text_labels(stubbed):
    llm, stub = stubbed
    for t in ["race", "Religion.", "gender"]:
        stub.add_response("converse", converse_response(t))
    out = llm.classify("Pick the bias type.", ["a", "b", "c"], ["gender", "profession", "race", "religion"],
                       calibration="none")
    assert [r.label for r in out] == ["race", "religion", "gender"]
    assert all(abs(sum(r.probabilities.values()) - 1) < 1e-9 for r in out)
