from pld_spark.config import LabelSpec, TaskConfig
from pld_spark.prompts.student import FewShot, PromptRule, approx_tokens, assemble

TASK = TaskConfig(name="t", description="Classify.", labels=[LabelSpec(name="a", description="A things"),
                                                              LabelSpec(name="b", description="B things")])


def rules(n):
    return [PromptRule(rule_id=f"r{i}", label="ab"[i % 2], instruction=f"if the input mentions thing {i} answer", support=i)
            for i in range(n)]


def test_assembly_is_deterministic_and_ordered():
    p1 = assemble(TASK, rules(6))
    p2 = assemble(TASK, list(reversed(rules(6))))
    assert p1.text == p2.text and p1.version == p2.version
    # label a first, then support desc
    assert p1.rule_ids == ["r4", "r2", "r0", "r5", "r3", "r1"]
    assert p1.text.rstrip().endswith("Output only the label.")


def test_budget_never_exceeded_and_dropped_recorded():
    for budget in (40, 60, 80, 120, 400):
        p = assemble(TASK, rules(20), count_tokens=approx_tokens, token_budget=budget)
        assert p.token_count <= budget or not p.rule_ids
        assert set(p.rule_ids) | set(p.dropped_rule_ids) == {f"r{i}" for i in range(20)}


def test_pinned_rule_survives_tight_budget():
    rs = rules(10)
    pinned = PromptRule(rule_id="pin", label="b", instruction="pinned rule text", support=0, pinned=True)
    p = assemble(TASK, rs + [pinned], token_budget=approx_tokens(assemble(TASK).text) + 12)
    assert "pin" in p.rule_ids


def test_few_shot_block():
    p = assemble(TASK, shots=[FewShot("Input: x", "a")])
    assert "Examples:" in p.text and "Label: a" in p.text
