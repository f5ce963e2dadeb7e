"""`pld compare` where one prompt has no stored predictions: the real embedded student
(SmolLM2-135M, one thread, in-process) scores the missing rows with the prompt's stored calibration,
they are stored with condition 'compare', and a second comparison pays nothing."""
import pytest
from pyspark.sql import functions as F

from pld_spark.llm.calibrate import Calibration
from pld_spark.monitor import compare
from pld_spark.monitor.stats import compare_stats
from pld_spark.prompts.versions import PromptVersion, PromptVersions
from pld_spark.storage.catalog import PREDICTIONS
from pld_spark.storage.writers import frame
from tests.distill_fakes import seed_examples, synthetic_examples

pytestmark = [pytest.mark.integration, pytest.mark.spark]

PROMPT_A = "Classify the bias category. Labels: gender, profession, race, religion."
PROMPT_B = "Classify the social bias category of the sentence: gender, profession, race or religion."


def test_compare_scores_the_missing_prompt_with_the_real_student(make_ctx, tmp_path):
    ctx = make_ctx("stereoset.yaml", ["student.n_threads=1", f"evaluate.report_dir={tmp_path / 'reports'}"])
    test = synthetic_examples(2, "test")  # 8 rows
    seed_examples(ctx, test)
    versions = PromptVersions(ctx.store, "stereoset")
    a, b = versions.write([PromptVersion("stereoset", "pld_cluster", PROMPT_A),
                           PromptVersion("stereoset", "zero_shot", PROMPT_B)])
    # B's calibration chosen on validation for this student: an offset no raw score outweighs, so
    # every B answer is 'religion' exactly when this calibration (not batch centring) is applied
    student_id = f"{ctx.student.backend}:{ctx.student.model_id}"
    versions.set_calibration(b, student_id, Calibration("fitted", {"religion": 50.0}))
    # A has stored predictions for every row (as evaluate leaves them); B has none
    gold = {r["example_id"]: r["label"] for r in test}
    ctx.store.merge("predictions", frame(ctx.spark, PREDICTIONS, [
        {"doc_id": d, "prompt_version": a, "condition": "pld", "label": lab, "run_id": "eval"}
        for d, lab in gold.items()]))

    res = compare.run(ctx, a, b)
    assert res["scored"] == {"a": 0, "b": 8} and res["n"] == 8 and res["split"] == "test"
    stored = ctx.store.read("predictions").where((F.col("prompt_version") == b)).collect()
    assert len(stored) == 8 and {r.condition for r in stored} == {"compare"}
    assert {r.label for r in stored} == {"religion"} and {r.calibration for r in stored} == {"fitted"}
    assert all(r.error is None and r.run_id == ctx.run_id and r.tokens_in > 0 for r in stored)
    ids = sorted(gold)
    want = compare_stats([gold[d] for d in ids], [gold[d] for d in ids], ["religion"] * 8, ctx.cfg.task.label_names,
                         n_resamples=ctx.cfg.evaluate.bootstrap, seed=ctx.cfg.evaluate.seed)
    assert (res["macro_f1_a"], res["macro_f1_b"], res["delta"]) == pytest.approx(
        (1.0, want["macro_f1_b"], want["delta"]))
    assert res["mcnemar"] == {"a_only": 6, "b_only": 0, "p_value": pytest.approx(want["mcnemar"]["p_value"])}
    assert ctx.record.counts["compare"]["usage"]["student"]["calls"] > 0

    again = compare.run(ctx, a, b)  # everything is stored now: no student call
    assert again["scored"] == {"a": 0, "b": 0} and again["macro_f1_b"] == res["macro_f1_b"]
    # the same run comparing the same pair on the same rows is the same comparison (MERGE on its id)
    assert again["comparison_id"] == res["comparison_id"] and ctx.store.read("comparisons").count() == 1
