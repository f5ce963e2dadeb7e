"""Consolidation that generalises: keyword triggers, diverse samples, one retry, exemplars (no Spark)."""
from pld_spark.config import ConsolidateConfig, load_config
from pld_spark.llm.types import ChatResponse
from pld_spark.pipeline.consolidate import sample_members, transform
from pld_spark.prompts.rules import build_prompt
from pld_spark.prompts.student import approx_tokens
from pld_spark.prompts.keywords import keyword_triggers
from tests.conftest import CONF

TASK = load_config(CONF / "stereoset.yaml").task

RACE_INPUTS = ["Context: The Yemeni man walked home.\nSentence: He was poor.",
               "Context: My neighbour is from Ghana.\nSentence: She loves music.",
               "Context: The Korean student studied.\nSentence: He was smart.",
               "Context: Iraqi people are often seen on TV.\nSentence: They are dangerous."]


def _members(inputs, label="race"):
    return [{"micro_id": f"m{i}", "example_id": f"e{i}", "label": label, "input_text": t,
             "rule": f"If the context names a country, the label is {label}.", "dist_to_centroid": 0.1 * (i + 1)}
            for i, t in enumerate(inputs)]


def test_a_phrase_from_one_input_is_a_keyword_trigger_and_a_category_is_not():
    inputs = [m["input_text"] for m in _members(RACE_INPUTS)]
    assert keyword_triggers("If the context mentions Yemeni people, the label is race.", inputs, TASK) == ["yemeni"]
    assert keyword_triggers("If the context names a country or a nationality, the label is race.", inputs, TASK) == []
    # words of the task's own label descriptions are never triggers, and tiny clusters are not checked
    assert keyword_triggers("If a Muslim is named, the label is religion.", inputs, TASK) == []
    assert keyword_triggers("If the context mentions Yemeni people, the label is race.", inputs[:2], TASK) == []


class Teacher:
    """Answers each consolidation request from a queue of instructions (a scripted client, unit tier)."""

    backend, model_id, role, calibration, max_concurrency, can_embed = "fake", "fake", "teacher", "none", 1, False

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []

    def chat(self, reqs):
        self.requests.extend(reqs)
        return [ChatResponse(data={"topic": "nationality", "instruction": self.answers.pop(0), "label": "race"})
                for _ in reqs]


def test_a_keyword_answer_is_retried_once_with_feedback_then_kept_if_general():
    t = Teacher(["If the context mentions Yemeni people, the label is race.",
                 "If the context names a country or a nationality, the label is race."])
    rules = transform({0: _members(RACE_INPUTS)}, TASK, t, ConsolidateConfig())
    assert len(t.requests) == 2 and "yemeni" in t.requests[1].messages[1]["content"]
    assert "Some of the inputs behind these rules" in t.requests[0].messages[1]["content"]
    (r,) = rules
    assert r.origin == "consolidate" and "nationality" in r.instruction and r.error is None
    # the exemplar is the input of the member nearest the centroid
    assert r.example_id == "e0" and r.example_text.startswith("Context: The Yemeni man") and r.example_label == "race"


def test_a_keyword_answer_twice_falls_back_to_the_medoid_with_the_reason():
    t = Teacher(["If the context mentions Yemeni people, the label is race."] * 2)
    (r,) = transform({0: _members(RACE_INPUTS)}, TASK, t, ConsolidateConfig())
    assert r.origin == "medoid" and "keyword trigger: 'yemeni'" in r.error and "after one retry" in r.error
    off = Teacher(["If the context mentions Yemeni people, the label is race."])
    (r2,) = transform({0: _members(RACE_INPUTS)}, TASK, off, ConsolidateConfig(keyword_check=False))
    assert r2.origin == "consolidate" and len(off.requests) == 1


def test_member_sample_is_core_plus_spread():
    members = [{"micro_id": f"m{i:02d}", "dist_to_centroid": i / 100} for i in range(30)]
    got = [m["micro_id"] for m in sample_members(members, 6, seed=1, cluster_id=0)]
    assert got[:3] == ["m00", "m01", "m02"] and "m29" in got and len(got) == 6
    assert sample_members(members[:4], 6, 1, 0) == sorted(members[:4], key=lambda m: m["micro_id"])


def test_exemplars_are_shown_under_their_rule_only_when_asked():
    rule = {"rule_id": "r1", "label": "race", "instruction": "If a nationality is named, the label is race.",
            "support": 4, "topic": "", "example_text": "Context: The Korean student.\nSentence: He was smart.",
            "example_label": "race"}
    with_ex = build_prompt(TASK, [rule], {}, count_tokens=approx_tokens, token_budget=2000, exemplars=True)
    without = build_prompt(TASK, [rule], {}, count_tokens=approx_tokens, token_budget=2000)
    assert "Example: Context: The Korean student. Sentence: He was smart. -> race" in with_ex.assembled.text
    assert "Example:" not in without.assembled.text
    assert with_ex.assembled.version != without.assembled.version
