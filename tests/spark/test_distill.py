"""extract -> cluster -> consolidate -> resolve with scripted models, then the SQL views."""
import pytest

from pld_spark.pipeline import cluster, consolidate, extract, resolve, review
from pld_spark.storage.views import VIEW_SQL, create_views, view_sql
from tests.distill_fakes import (KEYWORDS, KeywordStudent, ScriptedTeacher, TeacherFactory, seed_examples,
                                 synthetic_examples)

pytestmark = pytest.mark.spark


def add_missing(user_text):
    return [{"op": "add", "label": lab, "instruction": "If the input mentions "
             + ", ".join(f"'{w}'" for w in words) + f", the label is {lab}."} for lab, words in KEYWORDS.items()]


def test_distill_then_lineage_reaches_every_example(make_ctx, tmp_path):
    ctx = make_ctx("stereoset.yaml", ["extract.batch_size=12", "cluster.clusterer.min_samples=2",
                                      "resolve.max_rounds=1", "resolve.train_sample=24"],
                   teacher=ScriptedTeacher(resolve_ops=add_missing), student=KeywordStudent())
    train = synthetic_examples(6, "train")
    seed_examples(ctx, train + synthetic_examples(3, "val", offset=3))
    # the teacher writes junk for keywords 3-5: the clustered prompt misses them, the loop adds them
    junk = [f"train-{lab}-{i}" for lab in KEYWORDS for i in (3, 4, 5)]
    with ctx:  # writes the runs rows (running, succeeded)
        out = {"extract": extract.run(ctx, client_factory=TeacherFactory(str(tmp_path / "calls.txt"), junk_ids=junk))}
        for name, stage in (("cluster", cluster), ("consolidate", consolidate), ("resolve", resolve)):
            out[name] = stage.run(ctx)
    assert out["extract"]["ok"] == 24 and out["extract"]["invalid"] == 12 and out["cluster"]["clusters"] >= 1
    final = out["resolve"]["final_version"]
    assert final == review.resolve_version(ctx, "distilled") and out["resolve"]["accepted_rounds"] == 1
    review.promote(ctx, "distilled", by="test")

    names = create_views(ctx.store)
    assert names == list(VIEW_SQL)
    prompt = ctx.store.read("prompts").where(f"prompt_version = '{final}'").first()
    lineage = ctx.store.sql(f"SELECT * FROM rule_lineage WHERE prompt_version = '{final}'").collect()
    train_ids = {r["example_id"] for r in train}
    for rid in prompt.rule_ids:  # every rule reaches example ids
        rows = [r for r in lineage if r.rule_id == rid]
        assert rows and all(r.example_id for r in rows), rid
        assert {r.example_id for r in rows} <= train_ids
    assert {r.via for r in lineage} == {"cluster", "resolve_round"}  # clustered rules and loop-added rules
    clustered = review.resolve_version(ctx, "clustered")
    cl = ctx.store.sql(f"SELECT * FROM rule_lineage WHERE prompt_version = '{clustered}'").collect()
    assert cl and all(r.via == "cluster" and r.micro_id and r.micro_rule and r.example_label for r in cl)

    live = ctx.store.sql("SELECT * FROM live_prompt_rules ORDER BY position").collect()
    assert [r.rule_id for r in live] == list(prompt.rule_ids) and all(r.instruction for r in live)
    metrics = {r.prompt_version: r for r in ctx.store.sql("SELECT * FROM prompt_metrics").collect()}
    assert metrics[final].loop_val_macro_f1 == out["resolve"]["final_val_macro_f1"] or abs(
        metrics[final].loop_val_macro_f1 - out["resolve"]["final_val_macro_f1"]) < 1e-3
    status = ctx.store.sql(f"SELECT * FROM run_status WHERE run_id = '{ctx.run_id}'").collect()
    assert len(status) == 1 and status[0].status == "succeeded"
    assert ctx.store.sql("SELECT * FROM predictions_per_label_day").count() == 0
    assert ctx.store.sql("SELECT * FROM prompt_reviews").count() == 0
    assert "FROM prompts p" in view_sql("rule_lineage")
