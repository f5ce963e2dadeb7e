"""Rule review, prompt promotion and lookup on local Spark + Delta."""
import pytest
from pyspark.sql import functions as F

from pld_spark.errors import DataError
from pld_spark.pipeline import cluster, consolidate, review
from tests.distill_fakes import KeywordStudent, ScriptedTeacher, seed_examples, seed_micro, synthetic_examples

pytestmark = pytest.mark.spark


def test_review_promote_show_and_list(make_ctx, monkeypatch):
    ctx = make_ctx("stereoset.yaml", ["cluster.clusterer.min_samples=3"], teacher=ScriptedTeacher(),
                   student=KeywordStudent())
    with pytest.raises(DataError, match="has no prompt yet"):
        review.resolve_version(ctx, None)
    with pytest.raises(DataError, match="unknown prompt version or alias 'nope'"):
        review.resolve_version(ctx, "nope")
    rows = synthetic_examples(3, "train")
    seed_examples(ctx, rows)
    seed_micro(ctx, rows)
    cluster.run(ctx)
    counts = consolidate.run(ctx)
    version = counts["prompt_version"]
    # consolidate: one teacher call per cluster, rules with lineage, an immutable prompt, the 'clustered' alias
    assert counts["clusters"] == 4 and counts["teacher_calls"] == 4 and counts["by_origin"] == {"consolidate": 4}
    rules = ctx.store.read("rules").collect()
    assert len(rules) == 4 and all(r.task == "stereoset" and r.cluster_run_id == ctx.run_id for r in rules)
    assert all(len(r.member_micro_ids) == r.support == 3 for r in rules)
    p = ctx.store.read("prompts").where(F.col("prompt_version") == version).first()
    assert p.kind == "pld_cluster" and sorted(p.rule_ids) == sorted(r.rule_id for r in rules)
    assert p.token_count <= p.token_budget == 1500 and p.sha256.startswith(p.prompt_version[3:])
    assert "'nurse'" in p.text and p.text.rstrip().endswith("Output only the label.")
    rid = rules[0].rule_id

    with pytest.raises(DataError, match="unknown rule id 'r-nope'"):
        review.add_review(ctx, "r-nope", "pin")
    with pytest.raises(DataError, match="unknown review action"):
        review.add_review(ctx, rid, "delete")
    with pytest.raises(DataError, match="needs the new rule text"):
        review.add_review(ctx, rid, "edit", "  ")
    monkeypatch.setenv("USER", "carol")
    row = review.add_review(ctx, rid, "approve", note="looks right")
    assert row["reviewer"] == "carol" and row["review_id"].startswith("rv-")
    stored = ctx.store.read("rule_reviews").collect()
    assert [(r.rule_id, r.action, r.reviewer, r.note) for r in stored] == [(rid, "approve", "carol", "looks right")]

    with pytest.raises(DataError, match="unknown prompt version or alias 'pv-missing'"):
        review.promote(ctx, "pv-missing")
    out = review.promote(ctx, version, by="dave", note="ship it")
    assert out == {"task": "stereoset", "alias": "live", "prompt_version": version, "promoted_by": "dave",
                   "note": "ship it"}
    assert review.resolve_version(ctx, "live") == version == review.resolve_version(ctx, None)
    review.promote(ctx, "clustered", alias="canary")  # an alias is accepted where a version is
    assert review.resolve_version(ctx, "canary") == version
    assert review.show_prompt(ctx, "live").startswith("Classify which social bias category")

    listed = review.list_rules(ctx, "live").collect()
    assert [r.position for r in listed] == list(range(1, len(listed) + 1)) and len(listed) >= 1
    assert {r.rule_id: r.review for r in listed}[rid] == "approve"
    assert review.list_rules(ctx).count() == ctx.store.read("rules").count()
