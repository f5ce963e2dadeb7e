"""evaluate on a tiny sample with the real embedded student (SmolLM2-135M, one thread): one
``evaluations`` row per condition, predictions per scored condition, stored baseline prompts,
report files.

The conflict loop kept the clustered prompt here (the aliases of ``pld_cluster`` and
``pld_resolved`` name the same version), so ``pld_resolved`` is scored once, as ``pld_cluster``, and reported as reused
from it, never with a latency it did not measure. The pure parts (conditions, metrics rows,
report text) are tests/unit/test_evaluate.py and test_report.py.
"""
import json

import pytest

from pld_spark.llm.calibrate import FIXED_METHODS
from pld_spark.pipeline import evaluate
from pld_spark.prompts.conditions import PLD_ALIASES
from pld_spark.prompts.versions import PromptVersion, PromptVersions
from pld_spark.storage import readers
from tests.distill_fakes import seed_examples, synthetic_examples

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

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


def test_evaluate_conditions_on_tiny_sample(make_ctx, tmp_path):
    ctx = make_ctx("stereoset.yaml", [
        "evaluate.few_shot_k=3", "evaluate.bootstrap=200", "evaluate.cot_max_tokens=12", "student.n_threads=1",
        f"evaluate.report_dir={tmp_path / 'reports'}",
        "evaluate.conditions=[zero_shot, few_shot, pld_cluster, pld_resolved, cot]"])
    # stored examples as ingest leaves them (ingest itself is tests/spark/test_ingest.py)
    seed_examples(ctx, synthetic_examples(3, "test") + synthetic_examples(2, "train") + synthetic_examples(2, "val"))
    n = readers.current_examples(ctx, "test").count()
    assert n == 12
    versions = PromptVersions(ctx.store, "stereoset")
    pv, = versions.write(PromptVersion("stereoset", "pld_cluster", PLD_TEXT, rule_ids=("r1", "r2", "r3", "r4"),
                                       token_budget=1500, run_id="earlier"))
    for cond in ("pld_cluster", "pld_resolved"):  # the loop accepted no candidate: both aliases name pv
        versions.set_alias(PLD_ALIASES[cond], pv, by="test")

    out = evaluate.run(ctx)

    assert list(out["conditions"]) == ["zero_shot", "few_shot", "pld_cluster", "pld_resolved", "cot"]
    assert out["skipped"] == {}
    evals = {r.condition: r for r in ctx.store.read("evaluations").collect()}
    assert set(evals) == set(out["conditions"])
    for name, r in evals.items():
        assert r.run_id == ctx.run_id and r.n == n and 0.0 <= r.macro_f1 <= 1.0
        assert r.ci_low <= r.macro_f1 <= r.ci_high
        # student.calibration auto: chosen per condition on val; cot is batch-centred; pld_resolved is
        # pld_cluster's scores reused
        chosen = {"cot": ("batch",), "pld_resolved": (*FIXED_METHODS, "batch")}.get(name, FIXED_METHODS)
        assert r.engine == "local" and r.calibration in chosen
        assert sum(sum(row) for row in json.loads(r.confusion)["matrix"]) + r.errors == n
        assert set(json.loads(r.per_class)) == set(ctx.cfg.task.label_names)
        if name != "pld_resolved":
            assert r.latency_p50 > 0 and r.latency_p95 >= r.latency_p50
    assert evals["pld_cluster"].prompt_version == evals["pld_resolved"].prompt_version == pv
    # scored once: pld_resolved copies pld_cluster's quality figures and measured no latency
    rs = out["conditions"]["pld_resolved"]
    assert rs["reused_from"] == "pld_cluster" and rs["macro_f1"] == out["conditions"]["pld_cluster"]["macro_f1"]
    assert evals["pld_resolved"].latency_p50 is None and evals["pld_resolved"].latency_first is None
    assert "same prompt as pld_cluster; figures reused" in evals["pld_resolved"].note
    # PLD sends the longer prompt, and reuses its prefix after the first request
    assert evals["pld_cluster"].prompt_tokens_mean > evals["zero_shot"].prompt_tokens_mean
    assert evals["pld_cluster"].prefix_hit_rate >= (n - 1) / n
    # chain of thought spends output tokens, so it is slower than zero-shot
    assert evals["cot"].output_tokens_mean > 0 and evals["cot"].latency_p50 > evals["zero_shot"].latency_p50

    preds = ctx.store.read("predictions").collect()
    by_cond = {}
    for p in preds:
        by_cond.setdefault(p.condition, []).append(p)
    assert {k: len(v) for k, v in by_cond.items()} == {c: n for c in evals if c != "pld_resolved"}
    labels = set(ctx.cfg.task.label_names)
    assert all(p.label in labels and set(p.probabilities) == labels for p in preds if p.error is None)
    # zero/few-shot/cot prompts are stored so every prediction's prompt_version resolves
    prompts = {r.prompt_version: r.kind for r in ctx.store.read("prompts").collect()}
    assert all(p.prompt_version in prompts for p in preds)
    assert sorted(prompts.values()) == ["cot", "few_shot", "pld_cluster", "zero_shot"]
    usage = ctx.record.counts["evaluate"]["usage"]["student"]
    assert usage["calls"] >= 4 * n and usage["tokens_in"] > 0  # four conditions on test (and val), cot chats too

    html = open(out["report_html"]).read()
    assert "zero_shot" in html and "pld_cluster" in html and html.count("data:image/png") == 2 + 4
    table = evaluate.summary_table(out)
    assert all(c in table for c in evals) and "pld_resolved: same prompt as pld_cluster" in table
