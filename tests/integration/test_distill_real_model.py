"""`pld ingest` + `pld distill` on the embedded SmolLM2-135M (teacher and student, one thread
each), tiny sample, then what a person does next: the tables and views, the run record,
promoting the distilled prompt and evaluating it.

The tiny model writes weak rules; the point is that the whole pipeline runs on a real model
(Spark workers loading it through the registry, JSON-constrained extraction, validation,
clustering, consolidation or its fallbacks, the student's calibrated scoring in the loop) and
leaves a prompt version whose every rule traces back to example ids. What the model answers
varies, so the checks are the invariants that hold whatever it wrote: the loop never ships a
prompt worse on val than the one it started from, every round and candidate is stored, every
paid call is in the run record (resolve's student calls included). The decisions themselves
are unit-tested on scripted inputs (tests/unit/test_resolve*.py, test_consolidate.py).

All commands run in this process through ``pld_spark.cli.main`` on the test's Spark session;
ingest + distill run once for the module (``distilled``).
"""
import contextlib
import io
import json
from types import SimpleNamespace

import pytest

from pld_spark.cli import main
from tests.conftest import CONF

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]


def _args(sets, *extra_sets):
    return ["--config", str(CONF / "stereoset.yaml")] + [x for s in [*sets, *extra_sets] for x in ("--set", s)]


@pytest.fixture(scope="module")
def distilled(spark, tmp_path_factory):
    from pld_spark.config import load_config
    from pld_spark.context import RunContext
    from pld_spark.storage.views import create_views

    tmp = tmp_path_factory.mktemp("distill")
    sets = [f"lakehouse.path={tmp / 'lakehouse'}", "dataset.sample.train=12", "dataset.sample.val=8",
            "dataset.sample.test=4", "resolve.max_rounds=1", "resolve.train_sample=12", "extract.batch_size=6",
            "teacher.max_tokens=96", "teacher.n_threads=1", "student.n_threads=1", "spark.master=local[2]",
            "evaluate.engine=local", "evaluate.bootstrap=100", f"evaluate.report_dir={tmp / 'reports'}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ingest", *_args(sets)]) == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["distill", *_args(sets)]) == 0
    result = json.loads(out.getvalue())
    ctx = RunContext(load_config(CONF / "stereoset.yaml", sets)).replace(spark=spark)
    views = create_views(ctx.store)
    return SimpleNamespace(sets=sets, out=result, run_id=result["run_id"], ctx=ctx, views=views)


def test_distill_leaves_a_prompt_whose_rules_trace_back_to_examples(distilled):
    from pld_spark.prompts.versions import PromptVersions
    from pld_spark.storage.views import VIEW_SQL

    ex, cons, res = distilled.out["extract"], distilled.out["consolidate"], distilled.out["resolve"]
    store = distilled.ctx.store
    assert ex["sent"] == ex["train_examples"] >= 8 and ex["errors"] == 0
    assert ex["ok"] - ex["invalid"] >= 1, "the embedded teacher produced no valid rule at all"
    # consolidate: one teacher call per cluster, rules that keep their members, an immutable prompt
    assert cons["prompt_version"].startswith("pv-") and cons["prompt_tokens"] <= cons["token_budget"]
    assert cons["teacher_calls"] == cons["clusters"] and sum(cons["by_origin"].values()) == cons["rules"]
    clustered = store.read("prompts").where(f"prompt_version = '{cons['prompt_version']}'").first()
    assert clustered.kind == "pld_cluster" and clustered.sha256.startswith(clustered.prompt_version[3:])
    for r in store.read("rules").where("origin IN ('consolidate', 'medoid')").collect():
        assert r.cluster_run_id == cons["cluster_run_id"] and len(r.member_micro_ids) == r.support >= 1
    versions = PromptVersions(store, "stereoset")
    aliases = versions.aliases()
    assert aliases["clustered"] == cons["prompt_version"]
    # the loop starts from the selected prompt (select ran after consolidate)
    assert res["start_version"] == aliases.get("selected", cons["prompt_version"])

    # resolve: never worse than where it started, every round stored; 'resolved' names the best,
    # 'distilled' only if that beat zero-shot on val
    final = res["final_version"]
    assert final.startswith("pv-") and res["final_val_macro_f1"] >= res["start_val_macro_f1"]
    assert aliases["resolved"] == final
    assert aliases.get("distilled") == (final if res["promoted"] else None), res["promotion"]
    if res["accepted_rounds"] == 0:
        assert final == res["start_version"]
    rounds = sorted(store.read("resolution_rounds").where(f"run_id = '{distilled.run_id}'").collect(),
                    key=lambda r: r.round)
    assert [r.round for r in rounds] == list(range(res["rounds"] + 1)) and rounds[0].accepted
    assert rounds[0].prompt_version == res["start_version"] and rounds[0].val_macro_f1 == pytest.approx(
        res["start_val_macro_f1"], abs=1e-4)
    for r in rounds[1:]:
        assert r.failures_sampled + r.successes_sampled == len(r.sampled_example_ids)
        if r.candidate_version and r.candidate_version != r.prompt_version:  # a scored candidate is stored
            cand = store.read("prompts").where(f"prompt_version = '{r.candidate_version}'").first()
            assert cand.kind == ("pld_resolved" if r.accepted else "pld_rejected")
            assert cand.parent_version == r.prompt_version
    for r in store.read("rules").where("origin = 'resolve'").collect():
        assert r.source_example_ids, r.rule_id

    # lineage: every rule of the distilled prompt reaches train example ids
    assert distilled.views == list(VIEW_SQL)
    prompt = store.read("prompts").where(f"prompt_version = '{final}'").first()
    assert prompt.rule_ids, "the distilled prompt has no rules"
    rows = store.sql(f"SELECT * FROM rule_lineage WHERE prompt_version = '{final}'").collect()
    train = {r.example_id for r in store.read("examples").where("split = 'train'").collect()}
    for rid in prompt.rule_ids:
        ids = {r.example_id for r in rows if r.rule_id == rid}
        assert ids and None not in ids and ids <= train, rid
    assert {r.via for r in rows} <= {"cluster", "resolve_round"}
    cl = store.sql(f"SELECT * FROM rule_lineage WHERE prompt_version = '{cons['prompt_version']}'").collect()
    assert cl and all(r.via == "cluster" and r.micro_id and r.micro_rule and r.example_label for r in cl)
    # label examples (on by default): train rows, a label's first before its second, and every prompt
    # that select and the loop re-assembled (accepted or rejected) shows the clustered prompt's examples
    shown = clustered.example_ids
    labels = {r.example_id: r.label for r in store.read("examples").where("split = 'train'").collect()}
    assert shown and set(shown) <= set(labels) and len(shown) <= 3 * len(set(labels.values()))
    order = distilled.ctx.cfg.task.label_names
    assert [labels[i] for i in shown] == sorted((labels[i] for i in shown), key=order.index)
    for p in store.read("prompts").where("kind IN ('pld_selected', 'pld_resolved', 'pld_rejected')").collect():
        assert list(p.example_ids) == list(shown), p.prompt_version
    listed = store.sql(f"SELECT example_id FROM prompt_examples WHERE prompt_version = '{final}' ORDER BY position")
    assert [r.example_id for r in listed.collect()] == list(shown)
    metrics = {r.prompt_version: r for r in store.sql("SELECT * FROM prompt_metrics").collect()}
    assert metrics[final].loop_val_macro_f1 == pytest.approx(res["final_val_macro_f1"], abs=1e-3)
    status = store.sql(f"SELECT * FROM run_status WHERE run_id = '{distilled.run_id}'").collect()
    assert len(status) == 1 and status[0].status == "succeeded" and status[0].command == "distill"


def test_the_run_record_counts_every_stage_including_resolve_student_calls(distilled):
    ex = distilled.out["extract"]
    row = next(r for r in distilled.ctx.store.read("runs").where(f"run_id = '{distilled.run_id}'").collect()
               if r.status == "succeeded")
    counts = json.loads(row.counts)
    student = counts["resolve"]["usage"]["student"]
    assert student["calls"] > 0 and student["tokens_in"] > 0, counts["resolve"]
    assert counts["extract"]["usage"]["teacher"]["calls"] == ex["sent"]
    if distilled.out["consolidate"]["clusters"]:
        assert counts["consolidate"]["usage"]["teacher"]["calls"] >= distilled.out["consolidate"]["clusters"]
    per_stage = {s: c["usage"]["all"] for s, c in counts.items() if "usage" in c}
    assert {"extract", "resolve"} <= set(per_stage)
    assert row.llm_calls >= sum(u["calls"] for u in per_stage.values()) > 0
    assert row.tokens_in >= sum(u["tokens_in"] for u in per_stage.values()) > 0
    assert row.tokens_out >= sum(u["tokens_out"] for u in per_stage.values())


def test_champion_gate_and_mlflow_after_the_first_distill(distilled):
    """The first distill of a task: its distilled prompt (if any) becomes live ("no champion", a
    promotions row); the real MLflow client (local SQLite store) lists the distill run with its
    metrics and every prompt version with our aliases."""
    from mlflow import MlflowClient

    from pld_spark.prompts.versions import PromptVersions
    from pld_spark.tracking import settings

    store, res = distilled.ctx.store, distilled.out["resolve"]
    aliases = PromptVersions(store, "stereoset").aliases()
    rows = store.read("promotions").where(f"run_id = '{distilled.run_id}'").collect()
    if res["promoted"]:
        assert res["champion"]["decision"] == "promoted" and res["champion"]["reason"].startswith("no champion")
        assert [(r.decision, r.challenger_version, r.decided_by) for r in rows] == [
            ("promoted", res["final_version"], "pld resolve")]
    else:
        assert res["champion"]["decision"] is None and rows == []

    s = settings(distilled.ctx.cfg, databricks=False)
    client = MlflowClient(tracking_uri=s["tracking_uri"], registry_uri=s["registry_uri"])
    exp = client.get_experiment_by_name(s["experiment"])
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == distilled.run_id)
    assert run.data.tags["pld.run_id"] == distilled.run_id and run.data.tags["pld.command"] == "distill"
    assert run.data.metrics["resolve.final_val_macro_f1"] == pytest.approx(res["final_val_macro_f1"])
    assert run.data.params["config_hash"] == distilled.ctx.cfg.hash
    registered = {v.tags["pld.prompt_version"]: v.version for v in client.search_prompt_versions(s["prompt_name"])}
    assert {r.prompt_version for r in store.read("prompts").collect()} <= set(registered)
    for alias in ("clustered", "resolved", "distilled", "live"):
        if alias in aliases:  # moved by a later test's manual promotion too: compare at the same moment
            got = client.get_prompt_version_by_alias(s["prompt_name"], alias)
            assert got.tags["pld.prompt_version"] == aliases[alias], alias


def test_a_second_extract_pays_nothing(distilled, capsys):
    capsys.readouterr()
    assert main(["extract", *_args(distilled.sets)]) == 0
    got = json.loads(capsys.readouterr().out)["extract"]
    assert got["sent"] == 0 and got["already_done"] == got["train_examples"]


def test_promote_the_distilled_prompt_then_evaluate_it_as_live(distilled, capsys):
    final = distilled.out["resolve"]["final_version"]
    store = distilled.ctx.store
    capsys.readouterr()
    assert main(["prompt", "promote", final, "--alias", "live", "--by", "tester", *_args(distilled.sets)]) == 0
    promoted = json.loads(capsys.readouterr().out)
    assert (promoted["alias"], promoted["prompt_version"], promoted["promoted_by"]) == ("live", final, "tester")
    assert main(["prompt", "show", "live", *_args(distilled.sets)]) == 0
    text = store.read("prompts").where(f"prompt_version = '{final}'").first().text
    assert capsys.readouterr().out == text + "\n"
    from pld_spark.storage.views import create_views

    create_views(store)  # a view reads the tables as of its creation: after the promotion
    live = store.sql("SELECT * FROM live_prompt_rules ORDER BY position").collect()
    assert [r.prompt_version for r in live] == [final] * len(live) and all(r.instruction for r in live)

    only_pld = _args(distilled.sets, "evaluate.conditions=[pld_cluster]")  # --prompt-version: it becomes `pld`
    assert main(["evaluate", "--prompt-version", "live", *only_pld]) == 0
    out = json.loads(capsys.readouterr().out)
    run_id, ev = out["run_id"], out["evaluate"]
    assert list(ev["conditions"]) == ["pld"] and ev["skipped"] == {}
    pld = ev["conditions"]["pld"]
    assert pld["prompt_version"] == final and pld["n"] == 4 and pld["note"] == "alias 'live'"
    rows = store.read("evaluations").where(f"run_id = '{run_id}'").collect()
    assert [(r.condition, r.prompt_version, r.n) for r in rows] == [("pld", final, 4)]
    preds = store.read("predictions").where(f"run_id = '{run_id}'").collect()
    assert len(preds) == 4 and {(p.condition, p.prompt_version) for p in preds} == {("pld", final)}
    usage = json.loads(next(r for r in store.read("runs").where(f"run_id = '{run_id}'").collect()
                            if r.status == "succeeded").counts)["evaluate"]["usage"]["student"]
    assert usage["calls"] > 0
