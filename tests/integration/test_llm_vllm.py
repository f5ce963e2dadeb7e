"""The in-process vLLM backend, where vLLM is importable (GPU nodes; optional extra).

Set ``PLD_VLLM_TEST_MODEL`` to a local model folder or a model id the node can load
(e.g. ``HuggingFaceTB/SmolLM2-135M-Instruct``); the test is skipped otherwise.
"""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration

vllm = pytest.importorskip("vllm", reason="vllm is not installed (optional extra pld_spark[vllm], GPU nodes)")
MODEL = os.environ.get("PLD_VLLM_TEST_MODEL")
if not MODEL:
    pytest.skip("set PLD_VLLM_TEST_MODEL to a model vLLM can load on this node", allow_module_level=True)

from pld_spark.config import LLMConfig  # noqa: E402
from pld_spark.llm.base import ChatRequest  # noqa: E402
from pld_spark.llm.registry import build_client  # noqa: E402

LABELS = ["gender", "profession", "race", "religion"]
# a rule prompt of a few hundred tokens, like a PLD prompt: longer than one KV block (vLLM's CPU
# backend uses large blocks), so the prefix cache has whole blocks to reuse
RULES = [f"{i + 1}. If the sentence is about {w}, the label is {lab}." for i, (w, lab) in enumerate(
    [("a job, a trade or a workplace", "profession"), ("men, women, mothers or fathers", "gender"),
     ("a nationality, a country or an ethnic group", "race"), ("a faith, a holy book or a priest", "religion")] * 6)]
SYSTEM = ("Classify the bias type of the sentence. Answer with one of: gender, profession, race, religion.\n"
          "Rules:\n" + "\n".join(RULES))


@pytest.fixture(scope="module")
def client():
    return build_client(LLMConfig(type="vllm", model=MODEL, n_ctx=2048, max_tokens=32,
                                  extra={"gpu_memory_utilization": 0.5}), role="student")


def test_chat_and_json(client):
    r = client.chat_one(ChatRequest(messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8))
    assert r.ok and r.text.strip() and r.tokens_out > 0
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    j = client.chat_one(ChatRequest(messages=[{"role": "user", "content": "A colour as JSON."}], json_schema=schema))
    assert isinstance(j.data.get("colour"), str)


def test_classify_constrained_with_prefix_cache(client):
    xs = ["The nurse was kind.", "The Muslim man prayed.", "My mother cooks.", "Ethiopians run fast."] * 3
    out = client.classify(SYSTEM, xs, LABELS, calibration="batch")
    assert all(r.label in LABELS and abs(sum(r.probabilities.values()) - 1) < 1e-6 for r in out)
    assert sum(r.prefix_reused_tokens for r in out) > 0
    rate = client.stats()["engine_prefix_cache_hit_rate"]
    assert rate is None or rate > 0
