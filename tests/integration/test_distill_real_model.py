"""`pld ingest` + `pld distill` on the embedded SmolLM2-135M (teacher and student), tiny sample.

The tiny model writes weak rules; the point is that the whole pipeline runs on a real model
(Spark workers loading it through the registry, JSON-constrained extraction, validation,
clustering, consolidation or its fallbacks, the student's calibrated scoring in the loop)
and leaves a prompt version whose every rule traces back to example ids.
"""
import json

import pytest

from pld_spark.cli import main
from tests.conftest import CONF

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]


def test_pld_distill_on_the_embedded_model(spark, tmp_path, capsys):
    sets = [f"lakehouse.path={tmp_path / 'lakehouse'}", "dataset.sample.train=12", "dataset.sample.val=8",
            "dataset.sample.test=4", "resolve.max_rounds=1", "resolve.train_sample=12", "extract.batch_size=6",
            "teacher.max_tokens=96", "spark.master=local[2]"]
    args = ["--config", str(CONF / "stereoset.yaml")] + [x for s in sets for x in ("--set", s)]
    assert main(["ingest", *args]) == 0
    capsys.readouterr()
    assert main(["distill", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    ex, cons, res = out["extract"], out["consolidate"], out["resolve"]
    assert ex["sent"] == ex["train_examples"] >= 8 and ex["errors"] == 0
    assert ex["ok"] - ex["invalid"] >= 1, "the embedded teacher produced no valid rule at all"
    assert cons["prompt_version"].startswith("pv-") and cons["prompt_tokens"] <= cons["token_budget"]
    assert res["final_version"].startswith("pv-") and res["final_val_macro_f1"] >= res["start_val_macro_f1"]

    # a second extract pays nothing
    capsys.readouterr()
    assert main(["extract", *args]) == 0
    assert json.loads(capsys.readouterr().out)["extract"]["sent"] == 0

    # lineage: every rule of the distilled prompt reaches example ids
    final = res["final_version"]
    q = (f"SELECT rule_id, example_id FROM rule_lineage WHERE prompt_version = '{final}'")
    assert main(["sql", "query", q, "--limit", "200", *args]) == 0
    from pld_spark.config import load_config
    from pld_spark.context import RunContext
    from pld_spark.storage.views import create_views

    ctx = RunContext(load_config(CONF / "stereoset.yaml", sets)).replace(spark=spark)
    create_views(ctx.store)
    prompt = ctx.store.read("prompts").where(f"prompt_version = '{final}'").first()
    assert prompt.rule_ids, "the distilled prompt has no rules"
    rows = ctx.store.sql(q).collect()
    for rid in prompt.rule_ids:
        ids = {r.example_id for r in rows if r.rule_id == rid}
        assert ids and None not in ids, rid
    train = {r.example_id for r in ctx.store.read("examples").where("split = 'train'").collect()}
    assert {r.example_id for r in rows} <= train
    runs = ctx.store.sql("SELECT status FROM run_status WHERE command = 'distill'").collect()
    assert [r.status for r in runs] == ["succeeded"]
