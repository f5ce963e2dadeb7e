"""Consolidation and prompt building with reviews (no Spark)."""
from pld_spark.config import ConsolidateConfig, load_config
from pld_spark.llm.types import ChatResponse
from pld_spark.pipeline.consolidate import fallback_per_label, medoid, sample_members, transform
from pld_spark.prompts.rules import build_prompt, canonical_label, rule_id
from pld_spark.prompts.student import approx_tokens
from tests.conftest import CONF
from tests.distill_fakes import CATEGORY, KEYWORDS, ScriptedTeacher

TASK = load_config(CONF / "stereoset.yaml").task


def clusters():
    out = {}
    for cid, (lab, words) in enumerate(KEYWORDS.items()):
        out[cid] = [{"micro_id": f"m-{lab}-{i}", "label": lab, "dist_to_centroid": 0.1 * (i + 1),
                     "rule": f"If the input mentions '{w}' ({CATEGORY[lab]}), the label is {lab}."}
                    for i, w in enumerate(words)]
    out[-1] = [{"micro_id": "m-noise", "label": "race", "dist_to_centroid": None, "rule": "noise rule race"}]
    return out


class Canned:
    backend, model_id = "fake", "canned"

    def __init__(self, answers):
        self.answers = answers
        self.seen = []

    def chat(self, reqs):
        self.seen.extend(reqs)
        return [self.answers[i % len(self.answers)] for i in range(len(reqs))]


def test_one_call_per_cluster_with_sampled_members():
    teacher = ScriptedTeacher()
    rules = transform(clusters(), TASK, teacher, ConsolidateConfig(max_members=3, seed=1))
    assert teacher.calls == 4 and len(rules) == 4  # noise cluster -1 is not consolidated
    for req in teacher.requests:
        assert req.messages[1]["content"].count("\n- [") == 3
    assert {r.label for r in rules} == set(KEYWORDS) and all(r.origin == "consolidate" and r.valid for r in rules)
    assert all(r.support == 6 and len(r.member_micro_ids) == 6 for r in rules)
    # the same input gives the same ids (reviews keep applying across re-runs)
    again = transform(clusters(), TASK, ScriptedTeacher(), ConsolidateConfig(max_members=3, seed=1))
    assert [r.rule_id for r in again] == [r.rule_id for r in rules]


def test_invalid_answers_fall_back_to_the_medoid():
    bad = [ChatResponse(data={"topic": "t", "instruction": "If job, the label is profession.", "label": "banana"}),
           ChatResponse(data={"topic": "t", "instruction": "be nice to everybody", "label": "race"}),
           ChatResponse(error="timeout", error_type="LLMTimeoutError"),
           ChatResponse(data={"topic": "faith", "instruction": "If a faith is named, the label is religion.",
                              "label": "Religion"})]
    rules = transform(clusters(), TASK, Canned(bad), ConsolidateConfig())
    origins = [r.origin for r in rules]
    assert origins == ["medoid", "medoid", "medoid", "consolidate"]
    assert "not in the label set" in rules[0].error and "names no label" in rules[1].error
    assert "LLMTimeoutError" in rules[2].error
    assert rules[0].instruction == clusters()[0][0]["rule"]  # nearest the centroid
    assert rules[3].label == "religion"
    no_fb = transform(clusters(), TASK, Canned(bad), ConsolidateConfig(fallback_to_medoid=False))
    assert [r.valid for r in no_fb] == [False, False, False, True] and no_fb[0].invalid_reason


def test_helpers():
    assert canonical_label(" Gender ", TASK.label_names) == "gender" and canonical_label("x", TASK.label_names) is None
    ms = [{"micro_id": f"m{i}", "dist_to_centroid": d} for i, d in enumerate([0.5, 0.1, float("nan"), 0.1])]
    assert medoid(ms)["micro_id"] == "m1"
    s1 = sample_members([{"micro_id": f"m{i}"} for i in range(20)], 5, seed=3, cluster_id=1)
    assert len(s1) == 5 and s1 == sample_members([{"micro_id": f"m{i}"} for i in reversed(range(20))], 5, 3, 1)
    assert rule_id("a", "b", "c", ["y", "x"]) == rule_id("a", "b", "c ", ["x", "y"])


def test_fallback_picks_one_central_rule_per_label():
    micro = [{"micro_id": f"m{i}", "label": lab, "rule": r} for i, (lab, r) in enumerate([
        ("gender", "If a mother is named, the label is gender."), ("gender", "If a mother or sister, gender."),
        ("gender", "Spaceships are fast, gender"), ("race", "If a nationality is named, the label is race.")])]
    rules = fallback_per_label(micro, TASK)
    assert [(r.label, r.origin, r.cluster_id) for r in rules] == [("gender", "medoid_label", -1),
                                                                  ("race", "medoid_label", -1)]
    assert "mother" in rules[0].instruction and rules[0].support == 3 and len(rules[0].member_micro_ids) == 1


def _rules(n=12):
    return [{"rule_id": f"r{i:02d}", "label": TASK.label_names[i % 4], "support": 20 - i, "topic": "",
             "instruction": f"If the input mentions thing number {i} in some detail, the label is "
                            f"{TASK.label_names[i % 4]}."} for i in range(n)]


def _review(rid, action, text=None, n=0):
    return {"review_id": f"rv{n}", "rule_id": rid, "action": action, "new_text": text}


def test_prompt_budget_with_pinned_disabled_and_edited_rules():
    reviews = {"r11": _review("r11", "pin", n=1), "r00": _review("r00", "disable", n=2),
               "r01": _review("r01", "edit", "If a job title appears, the label is profession.", n=3),
               "r02": _review("r02", "approve", n=4)}
    bare = build_prompt(TASK, [], {}, count_tokens=approx_tokens, token_budget=4000).assembled.token_count
    for budget in (bare + 30, bare + 80, bare + 200, 4000):
        b = build_prompt(TASK, _rules(), reviews, count_tokens=approx_tokens, token_budget=budget)
        a = b.assembled
        assert a.token_count <= budget and approx_tokens(a.text) == a.token_count
        assert "r11" in a.rule_ids  # pinned: kept even under the tightest budget (lowest support)
        assert "r00" not in a.rule_ids and "r00" not in b.dropped_rule_ids  # disabled: never offered
        assert "thing number 0 " not in a.text
        assert set(a.rule_ids) | set(b.dropped_rule_ids) == {r["rule_id"] for r in _rules()} - {"r00"}
        assert b.review_ids == ["rv1", "rv2", "rv3", "rv4"]
        if "r01" in a.rule_ids:
            assert "If a job title appears" in a.text and "thing number 1 " not in a.text


def test_max_rules_keeps_pinned_then_support_and_extra_pinned():
    reviews = {"r11": _review("r11", "pin"), "old": _review("old", "pin", n=9)}
    old = {"rule_id": "old", "label": "race", "support": 1, "topic": "", "instruction": "If a country, race."}
    b = build_prompt(TASK, _rules(), reviews, count_tokens=approx_tokens, token_budget=10_000, max_rules=4,
                     extra_pinned=[old])
    assert set(b.assembled.rule_ids) == {"r11", "old", "r00", "r01"}
    assert set(b.dropped_rule_ids) == {f"r{i:02d}" for i in range(2, 11)}


def test_the_medoid_fallback_skips_a_member_rule_that_fails_todays_checks():
    """A micro-instruction stored before the wrong-label check (Contract-NLI: an Entailment example
    whose rule concludes Contradiction) must not stand in for a rejected consolidation."""
    wrong = {"micro_id": "m-wrong", "label": "gender", "dist_to_centroid": 0.01,
             "rule": "If the input mentions 'mother', the label is profession."}
    cs = {0: [wrong, *clusters()[0]]}
    bad = [ChatResponse(data={"topic": "t", "instruction": "be nice to everybody", "label": "gender"})]
    rule, = transform(cs, TASK, Canned(bad), ConsolidateConfig())
    assert rule.origin == "medoid" and rule.valid and rule.label == "gender"
    assert rule.instruction == clusters()[0][0]["rule"]  # the next-nearest member, not m-wrong
    # when no member's rule passes, the cluster gets an invalid row that says why, not a wrong rule
    only_wrong, = transform({0: [wrong]}, TASK, Canned(bad), ConsolidateConfig())
    assert not only_wrong.valid and only_wrong.origin == "consolidate"
    assert "no member's rule passes the rule checks" in only_wrong.invalid_reason
