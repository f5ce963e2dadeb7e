"""BaseLLM logic around a scripted backend: cache, JSON extraction/repair, retries, accounting,
classify. (A fake backend is fine here: this tests the shared machinery, not a model.)"""
from __future__ import annotations

import pytest

from pld_spark.config import LLMConfig
from pld_spark.errors import AuthError, ContextLengthError, MalformedResponseError, RateLimitError, ServerError
from pld_spark.llm.base import BaseLLM, ChatRequest, ChatResponse, LabelScores, LLMClient, map_to_label
from pld_spark.llm.cache import CacheEntry, MemoryCache, cache_key
from pld_spark.llm.jsonparse import JSONAnswerError, extract_json, first_json_object, parse_json_answer


class ScriptedLLM(BaseLLM):
    """Answers from a script: each item is a text (returned) or an exception (raised)."""

    backend = "scripted"

    def __init__(self, script=(), cfg=None, label_scores=None, **kw):
        super().__init__(cfg or LLMConfig(type="openai", model="scripted", max_retries=2, backoff_base_s=0,
                                          price_in_per_1k=1.0, price_out_per_1k=2.0),
                         sleep=lambda s: None, **kw)
        self.script = list(script)
        self.seen: list[ChatRequest] = []
        self.label_scores = label_scores

    def _chat_once(self, req):
        self.seen.append(req)
        item = self.script.pop(0) if self.script else "default answer"
        if isinstance(item, BaseException):
            raise item
        return ChatResponse(text=item, tokens_in=100, tokens_out=10)

    def _label_logprobs(self, system, inputs, labels):
        if self.label_scores is None:
            return super()._label_logprobs(system, inputs, labels)
        return [self.label_scores(x, labels) for x in inputs]


def req(text="hello", **kw):
    return ChatRequest(messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": text}], **kw)


# ---------------------------------------------------------------- contract
def test_base_llm_satisfies_protocol():
    assert isinstance(ScriptedLLM(), LLMClient)


# ---------------------------------------------------------------- cache key
def test_cache_key_is_stable_and_content_addressed():
    msgs = [{"role": "user", "content": "x"}]
    k1 = cache_key("llamacpp", "m", msgs, {"type": "object", "required": ["a"]}, {"temperature": 0.0, "max_tokens": 5},
                   "v1")
    # same content, different dict order -> same key
    k2 = cache_key("llamacpp", "m", [{"content": "x", "role": "user"}], {"required": ["a"], "type": "object"},
                   {"max_tokens": 5, "temperature": 0.0}, "v1")
    assert k1 == k2 and len(k1) == 64
    # a fixed value pins the canonical form across versions/processes
    assert k1 == cache_key("llamacpp", "m", msgs, {"type": "object", "required": ["a"]},
                           {"temperature": 0.0, "max_tokens": 5}, "v1")
    variants = [
        cache_key("openai", "m", msgs, {"type": "object", "required": ["a"]}, {"temperature": 0.0, "max_tokens": 5}, "v1"),
        cache_key("llamacpp", "m2", msgs, {"type": "object", "required": ["a"]}, {"temperature": 0.0, "max_tokens": 5}, "v1"),
        cache_key("llamacpp", "m", [{"role": "user", "content": "y"}], {"type": "object", "required": ["a"]},
                  {"temperature": 0.0, "max_tokens": 5}, "v1"),
        cache_key("llamacpp", "m", msgs, None, {"temperature": 0.0, "max_tokens": 5}, "v1"),
        cache_key("llamacpp", "m", msgs, {"type": "object", "required": ["a"]}, {"temperature": 0.7, "max_tokens": 5}, "v1"),
        cache_key("llamacpp", "m", msgs, {"type": "object", "required": ["a"]}, {"temperature": 0.0, "max_tokens": 6}, "v1"),
        cache_key("llamacpp", "m", msgs, {"type": "object", "required": ["a"]}, {"temperature": 0.0, "max_tokens": 5}, "v2"),
    ]
    assert len(set(variants + [k1])) == len(variants) + 1


def test_cache_key_ignores_request_id_but_not_defaults():
    c = ScriptedLLM()
    a = c.cache_key(c.effective(req(request_id="r1")))
    b = c.cache_key(c.effective(req(request_id="r2")))
    assert a == b
    # config defaults are part of the key (max_tokens filled from cfg)
    assert a != c.cache_key(c.effective(req(request_id="r1", max_tokens=3)))


def test_repeated_request_served_from_cache_with_zero_model_calls():
    c = ScriptedLLM(["first"])
    r1 = c.chat_one(req())
    calls = c.stats()["calls"]
    r2 = c.chat_one(req(request_id="again"))
    assert calls == 1 and c.stats()["calls"] == 1 and len(c.seen) == 1
    assert r2.cached and not r1.cached and r2.text == "first" and r2.request_id == "again"
    assert r2.cost_usd == 0.0 and c.stats()["cache_hits"] == 1


def test_cache_off_calls_every_time():
    c = ScriptedLLM(["a", "b"], cfg=LLMConfig(type="openai", model="s", cache=False, backoff_base_s=0))
    assert [c.chat_one(req()).text for _ in range(2)] == ["a", "b"]
    assert c.stats()["calls"] == 2


def test_duplicates_in_one_batch_are_sent_once():
    c = ScriptedLLM(["x"])
    out = c.chat([req(request_id="1"), req(request_id="2"), req("other", request_id="3")])
    assert [o.request_id for o in out] == ["1", "2", "3"]
    assert out[0].text == out[1].text == "x" and out[1].cached
    assert c.stats()["calls"] == 2


class DictCache:
    """A persistent layer stand-in (the Delta one is tested in integration)."""

    def __init__(self):
        self.data = {}
        self.gets = 0

    def get_many(self, keys):
        self.gets += 1
        return {k: self.data[k] for k in keys if k in self.data}

    def put_many(self, entries):
        for e in entries:
            self.data[e.key] = e
        return len(self.data)


def test_persistent_layer_shared_between_clients():
    store = DictCache()
    a = ScriptedLLM(["from a"], cache=store)
    a.chat([req()])
    assert len(store.data) == 1
    b = ScriptedLLM(["from b"], cache=store)  # a new process would start with an empty memory layer
    r = b.chat([req()])[0]
    assert r.cached and r.text == "from a" and b.stats()["calls"] == 0
    assert b.stats()["persistent_cache_hits"] == 1


def test_failed_answers_are_not_cached():
    store = DictCache()
    c = ScriptedLLM([AuthError("no")], cache=store)
    r = c.chat([req()])[0]
    assert not r.ok and r.error_type == "AuthError"
    assert store.data == {} and len(c.memory_cache) == 0


def test_memory_cache_is_bounded_lru():
    m = MemoryCache(max_entries=2)
    for k in "abc":
        m.put(CacheEntry(key=k, response={"text": k}))
    assert m.get("a") is None and m.get("c").response["text"] == "c" and len(m) == 2


# ---------------------------------------------------------------- retries through the client
def test_client_retries_retryable_and_counts_attempts():
    c = ScriptedLLM([ServerError("500"), RateLimitError("429", retry_after=0), "fine"])
    r = c.chat_one(req())
    assert r.text == "fine" and r.attempts == 3
    s = c.stats()
    assert s["calls"] == 3 and s["retries"] == 2


def test_client_fatal_error_raises_typed_at_once():
    c = ScriptedLLM([ContextLengthError("too long"), "never"])
    with pytest.raises(ContextLengthError):
        c.chat_one(req())
    assert c.stats()["calls"] == 1


def test_chat_turns_failures_into_data():
    c = ScriptedLLM([ServerError("a"), ServerError("b"), ServerError("c"), "next row ok"])
    out = c.chat([req("row1"), req("row2")])
    assert out[0].error_type == "ServerError" and out[0].attempts == 3 and out[0].text == ""
    assert out[1].ok and out[1].text == "next row ok"


def test_unexpected_backend_exception_becomes_fatal_row_error():
    c = ScriptedLLM([ZeroDivisionError("bug in a library")])
    r = c.chat([req()])[0]
    assert r.error_type == "FatalLLMError" and "ZeroDivisionError" in r.error


# ---------------------------------------------------------------- accounting
def test_tokens_and_cost_accounting():
    c = ScriptedLLM(["a", "b"])
    c.chat([req("1"), req("2")])
    s = c.stats()
    assert s["tokens_in"] == 200 and s["tokens_out"] == 20
    # price_in 1.0 / 1k, price_out 2.0 / 1k -> 2 * (0.1 + 0.02)
    assert s["cost_usd"] == pytest.approx(0.24)
    assert s["requests"] == 2 and s["calls"] == 2


# ---------------------------------------------------------------- JSON
SCHEMA = {"type": "object", "properties": {"reasoning": {"type": "string"}, "rule": {"type": "string"}},
          "required": ["reasoning", "rule"]}


def test_extract_json_variants():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Sure! Here it is:\n```json\n{"a": 2}\n```\nBye') == {"a": 2}
    assert extract_json('The answer is {"a": "x {not} y", "b": {"c": 3}} and more {"z": 1}') == \
        {"a": "x {not} y", "b": {"c": 3}}
    assert first_json_object('junk {bad json} then {"ok": true}') == '{"ok": true}'
    with pytest.raises(JSONAnswerError):
        extract_json("no json here")
    with pytest.raises(JSONAnswerError):
        extract_json("")


def test_validate_required_types_enum():
    with pytest.raises(JSONAnswerError, match="missing required keys"):
        parse_json_answer('{"rule": "r"}', SCHEMA)
    with pytest.raises(JSONAnswerError, match="type"):
        parse_json_answer('{"rule": 3, "reasoning": "x"}', SCHEMA)
    enum = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}
    with pytest.raises(JSONAnswerError, match="one of"):
        parse_json_answer('{"label": "c"}', enum)
    assert parse_json_answer('{"label": "b"}', enum) == {"label": "b"}


def test_json_from_prose_needs_no_repair():
    c = ScriptedLLM(['Here you go: {"reasoning": "because", "rule": "If X then Y."} Hope it helps'])
    r = c.chat_one(req(json_schema=SCHEMA))
    assert r.data == {"reasoning": "because", "rule": "If X then Y."}
    assert c.stats()["repairs"] == 0 and r.attempts == 1


def test_json_one_repair_attempt_succeeds():
    c = ScriptedLLM(['{"rule": "only rule"}', '{"reasoning": "r", "rule": "fixed"}'])
    r = c.chat_one(req(json_schema=SCHEMA))
    assert r.ok and r.data["rule"] == "fixed" and r.attempts == 2
    # the repair request shows the model its answer and the error
    repair = c.seen[1].messages
    assert repair[-2] == {"role": "assistant", "content": '{"rule": "only rule"}'}
    assert "reasoning" in repair[-1]["content"] and repair[-1]["role"] == "user"
    assert r.tokens_in == 200 and c.stats()["repairs"] == 1


def test_json_fails_after_one_repair_as_malformed_error_row():
    c = ScriptedLLM(["not json", "still not json", "never asked"])
    r = c.chat([req(json_schema=SCHEMA)])[0]
    assert not r.ok and r.error_type == "MalformedResponseError" and r.attempts == 2
    assert len(c.seen) == 2  # exactly one repair, no retry loop on content errors
    assert r.tokens_in == 200  # spent tokens stay visible on the error row
    with pytest.raises(MalformedResponseError):
        ScriptedLLM(["x", "y"]).chat_one(req(json_schema=SCHEMA))


# ---------------------------------------------------------------- classify
LABELS = ["gender", "profession", "race", "religion"]


def biased_scores(x, labels):
    """Prefers the label named in the input, plus a strong prior for 'gender'."""
    lp = {lab: (0.0 if lab in x else -3.0) for lab in labels}
    lp["gender"] += 4.0
    return LabelScores(lp, tokens_in=50, prefix_reused_tokens=40, latency_s=0.01)


def test_classify_probabilities_and_calibration_recorded():
    c = ScriptedLLM(label_scores=biased_scores)
    xs = ["about race", "about religion", "about profession", "about gender"]
    raw = c.classify("sys", xs, LABELS, calibration="none")
    assert all(r.label == "gender" for r in raw)  # the prior wins uncalibrated
    cal = c.classify("sys", xs, LABELS, calibration="batch")
    assert [r.label for r in cal] == ["race", "religion", "profession", "gender"]
    for r in raw + cal:
        assert r.label in LABELS and sum(r.probabilities.values()) == pytest.approx(1.0)
        assert set(r.probabilities) == set(LABELS)
    assert {r.calibration for r in cal} == {"batch"} and {r.calibration for r in raw} == {"none"}
    assert cal[0].prefix_reused_tokens == 40


def test_classify_content_free_makes_one_extra_scoring_input():
    seen = []

    def scorer(x, labels):
        seen.append(x)
        return biased_scores(x, labels)

    c = ScriptedLLM(label_scores=scorer)
    out = c.classify("sys", ["about race", "about religion"], LABELS, calibration="content_free")
    assert seen == ["about race", "about religion", "N/A"]
    assert [r.label for r in out] == ["race", "religion"] and out[0].calibration == "content_free"


def test_classify_default_calibration_from_config():
    c = ScriptedLLM(label_scores=biased_scores,
                    cfg=LLMConfig(type="openai", model="s", calibration="batch", backoff_base_s=0))
    assert c.classify("sys", ["about race", "x"], LABELS)[0].calibration == "batch"


def test_classify_row_error_is_data():
    def scorer(x, labels):
        if x == "bad":
            return LabelScores(None, error="prompt too long", error_type="ContextLengthError")
        return biased_scores(x, labels)

    c = ScriptedLLM(label_scores=scorer)
    out = c.classify("sys", ["about race", "bad", "about religion"], LABELS, calibration="batch")
    assert out[1].label is None and "too long" in out[1].error
    assert out[0].label == "race" and out[2].label == "religion"


def test_classify_rejects_bad_label_sets():
    from pld_spark.errors import BadRequestError

    c = ScriptedLLM(label_scores=biased_scores)
    with pytest.raises(BadRequestError):
        c.classify("sys", ["x"], ["only"])
    with pytest.raises(BadRequestError):
        c.classify("sys", ["x"], ["a", "a"])
    assert c.classify("sys", [], LABELS) == []


def test_text_fallback_maps_free_text_to_labels():
    c = ScriptedLLM(["Race.", "I think it's about religion", "PROFESSION", "{\"label\": \"gender\"}", "banana"])
    out = c.classify("sys", ["1", "2", "3", "4", "5"], LABELS, calibration="none")
    assert [r.label for r in out[:4]] == ["race", "religion", "profession", "gender"]
    # unmappable: uniform probabilities, still a label from the set
    assert out[4].label in LABELS and out[4].probabilities == pytest.approx({x: 0.25 for x in LABELS})
    assert c.stats()["label_unmapped"] == 1


def test_map_to_label_rules():
    assert map_to_label("  Religion\n", LABELS) == "religion"
    assert map_to_label("the answer: race, not gender", LABELS) == "race"
    assert map_to_label("professon", LABELS) == "profession"  # close spelling
    assert map_to_label("", LABELS) is None
    assert map_to_label("nothing relevant", LABELS) is None


def test_max_concurrency_hint():
    from pld_spark.llm.openai import OpenAILLM

    assert ScriptedLLM().max_concurrency == 1  # not an HTTP backend
    o = OpenAILLM(LLMConfig(type="openai", model="m", base_url="http://h/v1", extra={"max_in_flight": 8}))
    assert o.max_concurrency == 8
