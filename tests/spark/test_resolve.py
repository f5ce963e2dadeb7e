"""The conflict-resolution loop with a scripted teacher and a keyword-following student."""
import json
import re

import pytest
from pyspark.sql import functions as F

from pld_spark.pipeline import cluster, consolidate, resolve, review
from tests.distill_fakes import KEYWORDS, KeywordStudent, ScriptedTeacher, seed_examples, seed_micro, synthetic_examples

pytestmark = pytest.mark.spark


def _rule_ids(user_text):
    return re.findall(r"^(r-[0-9a-f]+): ", user_text, re.M)


def delete_all(user_text):
    """A worse rule set: drop every rule, add a vague one."""
    return [{"op": "delete", "rule_id": rid} for rid in _rule_ids(user_text)] + [
        {"op": "add", "instruction": "If the input mentions 'window', the label is gender.", "label": "gender"}]


def add_missing(user_text):
    """A better rule set: one rule per label naming every keyword."""
    return [{"op": "add", "label": lab, "instruction": "If the input mentions "
             + ", ".join(f"'{w}'" for w in words) + f", the label is {lab}."} for lab, words in KEYWORDS.items()]


def _setup(make_ctx, teacher, *over):
    ctx = make_ctx("stereoset.yaml", ["cluster.clusterer.min_samples=3", "resolve.max_rounds=2",
                                      "resolve.train_sample=16", *over], teacher=teacher, student=KeywordStudent())
    # the clustered rules know only the first 2 keywords per label; val uses all 6
    rows = synthetic_examples(6, "train")
    seed_examples(ctx, rows + synthetic_examples(6, "val", offset=2))
    seed_micro(ctx, [r for r in rows if int(r["example_id"].rsplit("-", 1)[1]) % 6 < 2])
    cluster.run(ctx)
    consolidate.run(ctx)
    return ctx


def _f1_of(ctx, version):
    rows = ctx.store.read("resolution_rounds").collect()
    vals = [r.val_macro_f1 for r in rows if r.prompt_version == version and r.val_macro_f1 is not None]
    vals += [r.candidate_val_macro_f1 for r in rows if r.candidate_version == version and r.candidate_val_macro_f1]
    return max(vals)


def test_worse_rule_set_is_never_shipped(make_ctx):
    ctx = _setup(make_ctx, ScriptedTeacher(resolve_ops=delete_all))
    start = review.resolve_version(ctx, "clustered")
    counts = resolve.run(ctx)
    assert counts["accepted_rounds"] == 0 and counts["final_version"] == start
    assert counts["final_val_macro_f1"] == counts["start_val_macro_f1"] > 0
    assert review.resolve_version(ctx, "distilled") == start
    rounds = sorted(ctx.store.read("resolution_rounds").collect(), key=lambda r: r.round)
    assert [r.round for r in rounds] == [0, 1] and rounds[1].accepted is False
    assert rounds[1].candidate_val_macro_f1 < rounds[1].val_macro_f1
    assert rounds[1].failures_sampled > 0 and rounds[1].successes_sampled > 0
    assert len(rounds[1].sampled_example_ids) == rounds[1].failures_sampled + rounds[1].successes_sampled
    diff = json.loads(rounds[1].rule_diff)
    assert len(diff["deleted"]) == 4 and len(diff["added"]) == 1
    cand = ctx.store.read("prompts").where(F.col("prompt_version") == rounds[1].candidate_version).first()
    assert cand.kind == "pld_rejected" and cand.parent_version == start
    assert _f1_of(ctx, review.resolve_version(ctx, "distilled")) >= _f1_of(ctx, start)

    # max_rounds=0: no teacher call, 'distilled' is the clustered prompt, round 0 records its scores
    ctx0 = make_ctx("stereoset.yaml", ["resolve.max_rounds=0"], teacher=ctx.teacher, student=KeywordStudent())
    before = ctx.teacher.calls
    counts0 = resolve.run(ctx0)
    assert counts0["rounds"] == 0 and counts0["teacher_calls"] == 0 and ctx.teacher.calls == before
    assert counts0["final_version"] == start == review.resolve_version(ctx0, "distilled")
    assert ctx0.store.read("resolution_rounds").where(f"run_id = '{ctx0.run_id}'").count() == 1


def test_better_rule_set_is_accepted_and_marked_distilled(make_ctx):
    ctx = _setup(make_ctx, ScriptedTeacher(resolve_ops=add_missing))
    start = review.resolve_version(ctx, "clustered")
    counts = resolve.run(ctx)
    assert counts["accepted_rounds"] >= 1 and counts["final_val_macro_f1"] > counts["start_val_macro_f1"]
    final = review.resolve_version(ctx, "distilled")
    assert final == counts["final_version"] != start
    p = ctx.store.read("prompts").where(F.col("prompt_version") == final).first()
    assert p.kind == "pld_resolved" and p.parent_version == start
    new_rules = ctx.store.read("rules").where("origin = 'resolve'").collect()
    assert len(new_rules) == 4 and all(r.source_example_ids for r in new_rules)
    # round 2: the new rules fix every train example, so the loop stops for lack of failures
    rounds = sorted(ctx.store.read("resolution_rounds").collect(), key=lambda r: r.round)
    assert [r.accepted for r in rounds] == [True, True, False] and rounds[2].note == "no train failures"
    assert rounds[2].prompt_version == final and counts["stop_reason"] == "no train failures"
