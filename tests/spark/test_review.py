"""Rule review, prompt promotion and lookup on local Spark + Delta (no model).

The rules and the prompt come from consolidate's no-cluster fallback over seeded
micro-instructions, which needs neither a teacher nor a student.
"""
import pytest

from pld_spark.errors import DataError
from pld_spark.pipeline import consolidate, review
from pld_spark.prompts.student import approx_tokens
from pld_spark.prompts.versions import PromptNotFoundError
from tests.distill_fakes import seed_examples, seed_micro, synthetic_examples

pytestmark = pytest.mark.spark


def test_review_promote_show_and_list(make_ctx, monkeypatch):
    ctx = make_ctx("stereoset.yaml", ["cluster.clusterer.min_samples=50", "cluster.central_fallback=false"])
    with pytest.raises(PromptNotFoundError, match="task 'stereoset' has no prompt to use"):
        review.show_prompt(ctx, None)
    with pytest.raises(PromptNotFoundError, match="prompt 'nope' is neither a prompt version"):
        review.show_prompt(ctx, "nope")
    rows = synthetic_examples(3, "train")
    seed_examples(ctx, rows)
    seed_micro(ctx, rows)
    version = consolidate.run(ctx, count_tokens=approx_tokens)["prompt_version"]
    rules = ctx.store.read("rules").collect()
    rid = sorted(r.rule_id for r in rules)[0]

    with pytest.raises(DataError, match="unknown rule id 'r-nope'"):
        review.add_review(ctx, "r-nope", "pin")
    with pytest.raises(DataError, match="unknown review action"):
        review.add_review(ctx, rid, "delete")
    with pytest.raises(DataError, match="needs the new rule text"):
        review.add_review(ctx, rid, "edit", "  ")
    with pytest.raises(DataError, match="takes no text"):
        review.add_review(ctx, rid, "pin", "some text")
    monkeypatch.setenv("USER", "carol")
    row = review.add_review(ctx, rid, "approve", note="looks right")
    assert row["reviewer"] == "carol" and row["review_id"].startswith("rv-")
    stored = ctx.store.read("rule_reviews").collect()
    assert [(r.rule_id, r.action, r.reviewer, r.note) for r in stored] == [(rid, "approve", "carol", "looks right")]

    with pytest.raises(PromptNotFoundError, match="prompt 'pv-missing' is neither"):
        review.promote(ctx, "pv-missing")
    out = review.promote(ctx, version, by="dave", note="ship it")
    assert out == {"task": "stereoset", "alias": "live", "prompt_version": version, "promoted_by": "dave",
                   "note": "ship it"}
    history = ctx.store.read("prompt_aliases").where("alias = 'live'").collect()
    assert [(h.prompt_version, h.promoted_by, h.note) for h in history] == [(version, "dave", "ship it")]
    review.promote(ctx, "clustered", alias="canary")  # an alias is accepted where a version is
    text = review.show_prompt(ctx, None)  # live, the default
    assert text.startswith("Classify which social bias category") and review.show_prompt(ctx, "canary") == text
    with pytest.raises(DataError, match="bad alias name"):
        review.promote(ctx, version, alias="not an alias")

    listed = review.list_rules(ctx, "live").collect()
    assert [r.position for r in listed] == list(range(1, len(listed) + 1)) and len(listed) == 4
    assert {r.rule_id: r.review for r in listed}[rid] == "approve"
    assert review.list_rules(ctx).count() == ctx.store.read("rules").count() == 4
    assert not {"teacher", "student"} & set(ctx.__dict__)  # no model was built
