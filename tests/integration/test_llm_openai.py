"""The openai backend against a real OpenAI-compatible server on 127.0.0.1:
``python -m llama_cpp.server`` with the embedded SmolLM2 model (started by the fixture)."""
from __future__ import annotations

import pytest

from pld_spark.config import LLMConfig
from pld_spark.llm.base import ChatRequest
from pld_spark.llm.openai import OpenAILLM
from tests.integration.servers import FaultServer

pytestmark = pytest.mark.integration

LABELS = ["gender", "profession", "race", "religion"]
SYSTEM = ("Classify which social bias category a sentence is about.\nLabels: gender, profession, race, religion.\n"
          "Answer with exactly one label. Output only the label.")


def make(url: str, **cfg) -> OpenAILLM:
    base = dict(type="openai", model="smollm2", base_url=url, max_tokens=24, timeout_s=120, max_retries=2,
                backoff_base_s=0.01)
    base.update(cfg)
    return OpenAILLM(LLMConfig(**base), role="teacher")


def test_plain_chat(llama_server):
    c = make(llama_server.url)
    r = c.chat_one(ChatRequest(messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8))
    assert r.ok and r.text.strip() and 0 < r.tokens_out <= 8 and r.tokens_in > 5
    assert r.attempts == 1 and r.latency_s > 0


def test_json_answer_constrained_by_schema(llama_server):
    schema = {"type": "object", "properties": {"colour": {"type": "string"}, "reason": {"type": "string"}},
              "required": ["colour", "reason"]}
    c = make(llama_server.url, max_tokens=48)
    r = c.chat_one(ChatRequest(messages=[
        {"role": "system", "content": "Reply with a JSON object with keys colour and reason."},
        {"role": "user", "content": "What colour is the sky on a clear day?"}], json_schema=schema))
    assert r.ok, r.error
    assert isinstance(r.data, dict) and set(schema["required"]) <= set(r.data)
    assert isinstance(r.data["colour"], str)


def test_classify_with_server_logprobs(llama_server):
    c = make(llama_server.url)
    xs = ["The nurse was very caring.", "The Muslim man prayed at the mosque.", "My mother cooks dinner.",
          "Ethiopian runners are fast."]
    out = c.classify(SYSTEM, xs, LABELS, calibration="batch")
    assert len(out) == 4
    for r in out:
        assert r.label in LABELS and abs(sum(r.probabilities.values()) - 1) < 1e-6
        assert r.error is None
    assert c._logprobs_ok is True  # the server offered logprobs: no text fallback needed
    assert c.stats()["label_unmapped"] == 0
    calls = c.stats()["calls"]
    raw = c.classify(SYSTEM, xs, LABELS, calibration="none")
    assert c.stats()["calls"] == calls  # same requests: answered (with their logprobs) from the cache
    # real first-token log-probabilities, not the 0.98/0.02 pattern of the text fallback
    assert any(abs(max(r.probabilities.values()) - 0.98) > 1e-3 for r in raw)
    assert all(len(set(r.raw_logprobs.values())) > 1 for r in raw)


def test_real_model_behind_fault_server(llama_server):
    """The fault server proxies healthy requests to the real model (reused by the extract tests)."""
    with FaultServer(["500", "429", "malformed"], retry_after="0", upstream=llama_server.url) as srv:
        c = make(srv.url, max_retries=3)
        r = c.chat_one(ChatRequest(messages=[{"role": "user", "content": "Say hello."}], max_tokens=6))
        assert r.ok and r.text.strip() and r.attempts == 4 and srv.requests == 4
        assert srv.counts["ok"] == 1
