"""Condition extraction, the condition_only option and the embedder registry (no model, no Spark)."""
import numpy as np
import pytest

from pld_spark.config import ClusterConfig, EmbedderConfig
from pld_spark.pipeline.embedders import (EMBEDDERS, ConditionOnly, TfidfSvdEmbedder, build_embedder, describe,
                                          extract_condition)

JOB = "the sentence mentions a job or occupation"


@pytest.mark.parametrize("rule, condition", [
    # If <cond>, (then) <consequent>
    ("If the sentence mentions a job or occupation, the label is profession.", JOB),
    ("If the sentence mentions a job or occupation, then the label is profession", JOB),
    ("if the sentence mentions a job or occupation then the label is profession.", JOB),
    ("If the sentence mentions a job or occupation, then profession.", JOB),
    ("If the sentence mentions a job or occupation, then: profession.", JOB),
    ("When the sentence mentions a job or occupation, label it as profession.", JOB),
    ("Whenever the sentence mentions a job or occupation, classify it as 'profession'.", JOB),
    ("If the sentence mentions a job or occupation, the answer should be profession.", JOB),
    ("If the sentence mentions a job or occupation, it is profession.", JOB),
    ("If the sentence mentions a job or occupation, the sentence is classified as profession.", JOB),
    ("If the sentence mentions a job or occupation, label=profession", JOB),
    ('If the sentence mentions a job or occupation, the label is "profession".', JOB),
    ("If the sentence mentions a job or occupation, the label is NotMentioned.", JOB),
    ("If the sentence mentions a job or occupation, the label is anti-stereotype.", JOB),
    # label first
    ("Label profession when the sentence mentions a job or occupation.", JOB),
    ("Label as 'profession' if the sentence mentions a job or occupation.", JOB),
    ("The label is profession if the sentence mentions a job or occupation.", JOB),
    ("The label should be profession, when the sentence mentions a job or occupation", JOB),
    ("Classify as profession whenever the sentence mentions a job or occupation.", JOB),
    # arrows and trailing labels
    ("the sentence mentions a job or occupation -> profession", JOB),
    ("the sentence mentions a job or occupation => label: profession.", JOB),
    ("If the sentence mentions a job or occupation \u2192 profession", JOB),
    ("the sentence mentions a job or occupation (label: profession)", JOB),
    ("the sentence mentions a job or occupation [label=profession].", JOB),
    ("If the sentence mentions a job or occupation (label: profession)", JOB),
    ("the sentence mentions a job or occupation; label: profession", JOB),
    ("the sentence mentions a job or occupation, so the label is profession.", JOB),
    # whitespace is collapsed; the condition keeps its own words, parentheses and quotes
    ("If   the sentence\nmentions a job or occupation,\tthe label is profession.", JOB),
    ("If the input mentions 'nurse' (occupation), the label is profession.", "the input mentions 'nurse' (occupation)"),
    ("If the label mentions a job, the label is profession.", "the label mentions a job"),
    ("If a tag is shown, the label is race.", "a tag is shown"),
    ("If the clause restricts disclosure to third parties, the hypothesis is entailed.",
     "the clause restricts disclosure to third parties"),
])
def test_extract_condition_strips_the_frame(rule, condition):
    assert extract_condition(rule) == condition


@pytest.mark.parametrize("text", [
    "Weather reports about hail storms and sunny beaches.",  # no frame
    "The label is important.",  # a label clause but no condition
    "If A, the label is X. Otherwise, the label is Y.",  # two rules in one: left whole
    "If x, the label is profession, not race.",  # label part is not a short phrase
    "x -> y",  # almost nothing would be left
    "If the sentence relabels a job, ok.",
    "",
    "   ",
])
def test_extract_condition_leaves_unparsed_text_unchanged(text):
    assert extract_condition(text) == text


def test_extract_condition_is_pure_and_tolerates_non_strings():
    rule = "If the sentence mentions a job, the label is profession."
    assert extract_condition(rule) == extract_condition(rule) == "the sentence mentions a job"
    assert extract_condition(None) is None


class Recorder:
    name = "recorder"

    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen.append(list(texts))
        return np.ones((len(texts), 2)) / np.sqrt(2)


def test_condition_only_wraps_every_embedder_type(monkeypatch):
    rec = Recorder()
    monkeypatch.setitem(EMBEDDERS, "recorder", lambda cfg, client=None, seed=0: rec)
    assert EmbedderConfig().condition_only is False  # opt-in until measured on real rules
    cfg = EmbedderConfig.model_validate({"type": "recorder", "condition_only": True})
    emb = build_embedder(cfg)
    assert isinstance(emb, ConditionOnly) and emb.name == "recorder"
    out = emb(["If the sentence names a job, the label is profession.", "Sourdough needs flour."])
    assert rec.seen == [["the sentence names a job", "Sourdough needs flour."]] and out.shape == (2, 2)
    raw = build_embedder(EmbedderConfig.model_validate({"type": "recorder"}))
    assert raw is rec
    raw(["If the sentence names a job, the label is profession."])
    assert rec.seen[-1] == ["If the sentence names a job, the label is profession."]


def test_condition_only_changes_what_tfidf_sees():
    rules = ["If the sentence names a job, the label is profession.",
             "If the sentence names a religion, the label is profession."]
    plain = build_embedder(EmbedderConfig(type="tfidf_svd"))
    cond = build_embedder(EmbedderConfig(type="tfidf_svd", condition_only=True))
    assert isinstance(plain, TfidfSvdEmbedder) and isinstance(cond, ConditionOnly)
    assert cond(rules).shape[0] == plain(rules).shape[0] == 2


def test_registry_and_descriptions():
    assert {"auto", "tfidf_svd", "llamacpp", "minilm", "sentence_transformers", "openai"} <= set(EMBEDDERS)
    assert EmbedderConfig().type == "auto"  # minilm when installed, else tfidf_svd (test_embedders_minilm.py)
    assert describe(EmbedderConfig(type="tfidf_svd")) == "tfidf_svd(dims=64)"
    assert describe(EmbedderConfig(type="tfidf_svd", condition_only=True)) == "tfidf_svd(dims=64)+condition"
    assert describe(EmbedderConfig(type="minilm")) == "minilm(all-minilm-l6-v2)"
    assert describe(EmbedderConfig(type="sentence_transformers")) == "sentence_transformers(all-minilm-l6-v2)"
    with pytest.raises(ValueError, match="unknown embedder"):
        EmbedderConfig(type="nope")
    with pytest.raises(ValueError, match="condition_only"):
        ClusterConfig.model_validate({"embedder": {"condition_only": "maybe"}})
