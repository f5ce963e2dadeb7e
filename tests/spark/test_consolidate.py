"""consolidate + reviews on local Spark + Delta with a scripted teacher and a fake student tokenizer."""
import pytest
from pyspark.sql import functions as F

from pld_spark.pipeline import cluster, consolidate, review
from pld_spark.prompts.student import approx_tokens
from tests.distill_fakes import KeywordStudent, ScriptedTeacher, seed_examples, seed_micro, synthetic_examples

pytestmark = pytest.mark.spark

CLUSTER = ["cluster.clusterer.min_samples=3"]


def _setup(make_ctx, *over):
    ctx = make_ctx("stereoset.yaml", [*CLUSTER, *over], teacher=ScriptedTeacher(), student=KeywordStudent())
    rows = synthetic_examples(4, "train")
    seed_examples(ctx, rows + synthetic_examples(1, "val"))
    seed_micro(ctx, rows)
    return ctx


def test_reviews_are_honoured_within_the_budget(make_ctx):
    ctx = _setup(make_ctx)
    cluster.run(ctx)
    first = consolidate.run(ctx)
    rules = {r.label: r.rule_id for r in ctx.store.read("rules").collect()}
    review.add_review(ctx, rules["religion"], "pin", reviewer="ann")
    review.add_review(ctx, rules["gender"], "disable", reviewer="bob", note="too broad")
    edit = review.add_review(ctx, rules["race"], "edit", "If a nationality such as 'somali' is named, the label is race.")
    assert edit["reviewer"]
    bare = consolidate.build_prompt(ctx.cfg.task, [], {}, count_tokens=approx_tokens, token_budget=9999)
    budget = bare.assembled.token_count + 40  # room for about one rule
    ctx2 = make_ctx("stereoset.yaml", [*CLUSTER, f"consolidate.prompt_token_budget={budget}"],
                    teacher=ScriptedTeacher(), student=KeywordStudent())
    second = consolidate.run(ctx2)
    assert second["prompt_version"] != first["prompt_version"]
    p = ctx2.store.read("prompts").where(F.col("prompt_version") == second["prompt_version"]).first()
    assert p.token_count <= budget and len(p.text) // 4 == p.token_count
    assert rules["religion"] in p.rule_ids  # pinned: kept under the tight budget
    assert rules["gender"] not in p.rule_ids and rules["gender"] not in p.dropped_rule_ids  # disabled
    assert set(p.rule_ids) | set(p.dropped_rule_ids) == set(rules.values()) - {rules["gender"]}
    assert len(p.review_ids) == 3
    # the same reviews with a roomy budget: the edit text is what the student sees
    ctx3 = make_ctx("stereoset.yaml", CLUSTER, teacher=ScriptedTeacher(), student=KeywordStudent())
    third = consolidate.run(ctx3)
    text = review.show_prompt(ctx3, third["prompt_version"])
    assert "such as 'somali'" in text and "'mother'" not in text
    # a pin survives a re-clustering that no longer produces the rule
    assert review.resolve_version(ctx3, "clustered") == third["prompt_version"]


def test_no_clusters_falls_back_to_one_rule_per_label(make_ctx):
    ctx = _setup(make_ctx, "cluster.clusterer.min_samples=50")
    assert cluster.run(ctx)["clusters"] == 0
    counts = consolidate.run(ctx)
    assert counts["teacher_calls"] == 0 and counts["by_origin"] == {"medoid_label": 4}
    p = ctx.store.read("prompts").where(F.col("prompt_version") == counts["prompt_version"]).first()
    assert len(p.rule_ids) == 4 and ctx.teacher.calls == 0
