"""evaluate on a tiny sample with the real embedded student: one ``evaluations`` row per
available condition, predictions per condition, stored baseline prompts, report files."""
import json
from datetime import datetime, timezone

import pandas as pd
import pytest

from pld_spark.pipeline import evaluate, ingest

pytestmark = [pytest.mark.spark, pytest.mark.integration]

PLD_TEXT = """Classify which social bias category a sentence is about.

Labels:
- gender: men, women, mothers, fathers, girls, boys
- profession: an occupation or job
- race: a nationality, ethnicity, country or race
- religion: a religion or its followers

Rules:
1. [gender] A sentence about a mother, father, sister, brother, wife, husband, girl or boy is gender.
2. [profession] A sentence about a job title (nurse, engineer, chess player, plumber) is profession.
3. [race] A sentence about a country, nationality or ethnic group is race.
4. [religion] A sentence about Muslims, Christians, Hindus, the Bible or a church is religion.

Answer with exactly one label from: gender, profession, race, religion. Output only the label."""


def test_select_shots_stratified_and_seeded():
    train = pd.DataFrame({"example_id": [f"e{i}" for i in range(12)], "input_text": [f"t{i}" for i in range(12)],
                          "label": ["a"] * 6 + ["b"] * 4 + ["c"] * 2})
    shots = evaluate.select_shots(train, 5, ["a", "b", "c"], seed=3)
    assert len(shots) == 5 and len({s["example_id"] for s in shots}) == 5
    assert {s["label"] for s in shots} == {"a", "b", "c"}  # every label when k allows
    assert shots == evaluate.select_shots(train, 5, ["a", "b", "c"], seed=3)
    assert [s["example_id"] for s in shots] != [s["example_id"] for s in evaluate.select_shots(train, 5, ["a", "b", "c"], seed=4)]
    two = evaluate.select_shots(train, 2, ["a", "b", "c"], seed=3)
    assert len({s["label"] for s in two}) == 2  # k < labels: distinct labels as far as k allows
    assert len(evaluate.select_shots(train, 50, ["a", "b", "c"], seed=3)) == 12


def test_evaluate_conditions_on_tiny_sample(make_ctx, tmp_path):
    from pld_spark.storage.catalog import PROMPT_ALIASES, PROMPTS

    ctx = make_ctx("stereoset.yaml", [
        "dataset.sample.test=12", "dataset.sample.train=8", "evaluate.few_shot_k=3", "evaluate.bootstrap=200",
        "evaluate.cot_max_tokens=12", f"evaluate.report_dir={tmp_path / 'reports'}",
        "evaluate.conditions=[zero_shot, few_shot, pld_cluster, pld_resolved, cot]"])
    ingest.run(ctx)
    n = ingest.current_examples(ctx, "test").count()
    now = datetime.now(timezone.utc)
    rec = {"prompt_version": "pv-cluster", "task": "stereoset", "kind": "consolidated", "text": PLD_TEXT,
           "sha256": "x", "parent_version": None, "rule_ids": ["r1", "r2", "r3", "r4"], "dropped_rule_ids": [],
           "review_ids": [], "token_count": 0, "token_budget": 1500, "run_id": "earlier", "created_at": now}
    ctx.store.merge("prompts", ctx.spark.createDataFrame([tuple(rec[c] for c in PROMPTS.columns)], PROMPTS.ddl))
    ctx.store.append("prompt_aliases", ctx.spark.createDataFrame(
        [("stereoset", "clustered", "pv-cluster", "consolidate", "", now)], PROMPT_ALIASES.ddl))

    out = evaluate.run(ctx)

    assert list(out["conditions"]) == ["zero_shot", "few_shot", "pld_cluster", "cot"]
    assert "alias 'distilled'" in out["skipped"]["pld_resolved"]
    evals = {r.condition: r for r in ctx.store.read("evaluations").collect()}
    assert set(evals) == {"zero_shot", "few_shot", "pld_cluster", "cot"}
    for name, r in evals.items():
        assert r.run_id == ctx.run_id and r.n == n and 0.0 <= r.macro_f1 <= 1.0
        assert r.ci_low <= r.macro_f1 <= r.ci_high
        assert r.latency_p50 > 0 and r.latency_p95 >= r.latency_p50
        assert r.engine == "local" and r.calibration == "batch"
        assert sum(sum(row) for row in json.loads(r.confusion)["matrix"]) + r.errors == n
        assert set(json.loads(r.per_class)) == set(ctx.cfg.task.label_names)
    assert evals["pld_cluster"].prompt_version == "pv-cluster"
    # PLD sends the longer prompt, and reuses its prefix after the first request
    assert evals["pld_cluster"].prompt_tokens_mean > evals["zero_shot"].prompt_tokens_mean
    assert evals["pld_cluster"].prefix_hit_rate >= (n - 1) / n
    # chain of thought spends output tokens, so it is slower than zero-shot
    assert evals["cot"].output_tokens_mean > 0 and evals["cot"].latency_p50 > evals["zero_shot"].latency_p50

    preds = ctx.store.read("predictions").collect()
    by_cond = {}
    for p in preds:
        by_cond.setdefault(p.condition, []).append(p)
    assert {k: len(v) for k, v in by_cond.items()} == {c: n for c in evals}
    labels = set(ctx.cfg.task.label_names)
    assert all(p.label in labels and set(p.probabilities) == labels for p in preds if p.error is None)
    # zero/few-shot/cot prompts are stored so every prediction's prompt_version resolves
    prompts = {r.prompt_version: r.kind for r in ctx.store.read("prompts").collect()}
    assert all(p.prompt_version in prompts for p in preds)
    assert sorted(prompts.values()) == ["consolidated", "cot", "few_shot", "zero_shot"]

    html = open(out["report_html"]).read()
    assert "zero_shot" in html and "pld_cluster" in html and html.count("data:image/png") == 2 + 4
    table = evaluate.summary_table(out)
    assert all(c in table for c in evals) and "skipped pld_resolved" in table
