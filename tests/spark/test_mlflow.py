"""MLflow tracking and Prompt Registry against a real local MLflow store (SQLite under the test's
lakehouse), read back through ``mlflow.MlflowClient``; no model.

- prompt versions written through the run context's store are registered once each (our version id,
  kind and parent in the version tags, the prompt text as the template), and our alias moves
  (clustered, resolved, distilled, live) are the MLflow prompt aliases;
- a run's outputs (an evaluation result with a report, resolve's champion decision) become one MLflow
  run with params (config hash), metrics with CIs, tags (run id, prompt version) and artifacts;
- an MLflow store that cannot be opened costs a WARNING, never the stage: the alias still moves.
"""
import json
import logging
from pathlib import Path

import pytest

from pld_spark.prompts.versions import PromptVersion, PromptVersions

pytestmark = pytest.mark.spark

mlflow = pytest.importorskip("mlflow")


def _client(ctx):
    from pld_spark.tracking import settings

    s = settings(ctx.cfg, databricks=False)
    return mlflow.MlflowClient(tracking_uri=s["tracking_uri"], registry_uri=s["registry_uri"]), s


def _evaluation(tmp_path, versions):
    """An evaluate result as the stage returns it (the parts MLflow logs), with its report files."""
    report = tmp_path / "reports" / "run"
    report.mkdir(parents=True)
    (report / "report.html").write_text("<html>report</html>")
    (report / "summary.md").write_text("# summary")
    cond = {"zero_shot": {"prompt_version": versions["zero"], "macro_f1": 0.41, "ci_low": 0.3, "ci_high": 0.52,
                          "accuracy": 0.45, "n": 40, "val_macro_f1": 0.4},
            "pld_resolved": {"prompt_version": versions["resolved"], "macro_f1": 0.63, "ci_low": 0.51,
                             "ci_high": 0.74, "accuracy": 0.65, "n": 40, "val_macro_f1": 0.6}}
    return {"conditions": cond, "paired": {"pld_vs_zero_shot": {
        "a": "pld_resolved", "b": "zero_shot", "delta": 0.22, "ci_low": 0.08, "ci_high": 0.35, "p_a_better": 0.99,
        "mcnemar_p": 0.02, "n": 40}}, "meta": {"pld_condition": "pld_resolved"},
        "report_html": str(report / "report.html"), "summary_md": str(report / "summary.md")}


def test_prompt_versions_aliases_and_a_run_read_back_from_mlflow(make_ctx, tmp_path):
    ctx = make_ctx(overrides=["mlflow.enabled=true"])
    client, s = _client(ctx)
    assert s["tracking_uri"] == f"sqlite:///{(tmp_path / 'lakehouse').resolve() / 'mlflow.db'}"
    pv = PromptVersions(ctx.store, "stereoset")
    clustered = PromptVersion("stereoset", "pld_cluster", "Rules:\n1. a job -> profession", rule_ids=("r1",))
    resolved = PromptVersion("stereoset", "pld_resolved", "Rules:\n1. a job or a workplace -> profession",
                             rule_ids=("r1x",), parent_version=clustered.prompt_version, run_id="run-1")
    zero = PromptVersion("stereoset", "zero_shot", "Labels: gender, profession, race, religion")
    pv.write([clustered, resolved])
    pv.write([clustered, zero])  # clustered again: registered once
    for alias, v in [("clustered", clustered), ("resolved", resolved), ("distilled", resolved), ("live", resolved)]:
        pv.set_alias(alias, v.prompt_version, by="test")

    registered = {v.tags["pld.prompt_version"]: v for v in client.search_prompt_versions("pld_stereoset")}
    assert set(registered) == {clustered.prompt_version, resolved.prompt_version, zero.prompt_version}
    r = client.get_prompt_version("pld_stereoset", registered[resolved.prompt_version].version)
    assert r.template == resolved.text
    assert (r.tags["pld.kind"], r.tags["pld.parent_version"], json.loads(r.tags["pld.rule_ids"]),
            r.tags["pld.run_id"]) == ("pld_resolved", clustered.prompt_version, ["r1x"], "run-1")

    def by_alias(alias):
        return client.get_prompt_version_by_alias("pld_stereoset", alias).tags["pld.prompt_version"]

    assert {a: by_alias(a) for a in ("clustered", "resolved", "distilled", "live")} == {
        "clustered": clustered.prompt_version, "resolved": resolved.prompt_version,
        "distilled": resolved.prompt_version, "live": resolved.prompt_version}
    pv.set_alias("live", clustered.prompt_version, by="rollback")  # an alias move is mirrored
    assert by_alias("live") == clustered.prompt_version
    assert len(client.search_prompt_versions("pld_stereoset")) == 3

    # a run: params, metrics with CIs, tags, artifacts
    outputs = {"evaluate": _evaluation(tmp_path, {"zero": zero.prompt_version, "resolved": resolved.prompt_version}),
               "resolve": {"final_val_macro_f1": 0.6, "rounds": 1, "champion": {
                   "decision": "candidate", "statistic": -0.02, "ci_low": -0.1, "ci_high": 0.05,
                   "worst_label_drop": 0.08, "reason": "the CI lower bound -0.1000 is not above promotion.margin 0.0"}}}
    ctx.record.add_usage("evaluate", 120, 8, 3, 0.0, role="student")
    mlflow_run_id = ctx.tracker.log_run(ctx, outputs)
    assert mlflow_run_id and ctx.record.counts["mlflow"]["run_id"] == mlflow_run_id  # our runs row names it
    exp = client.get_experiment_by_name("pld_spark-stereoset")
    runs = client.search_runs([exp.experiment_id])
    assert [x.info.run_id for x in runs] == [mlflow_run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == ctx.run_id
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    assert (m["pld_resolved.macro_f1"], m["pld_resolved.ci_low"], m["pld_resolved.ci_high"]) == (0.63, 0.51, 0.74)
    assert (m["zero_shot.macro_f1"], m["paired.pld_vs_zero_shot.delta"], m["paired.pld_vs_zero_shot.ci_low"]) == (
        0.41, 0.22, 0.08)
    assert m["resolve.final_val_macro_f1"] == 0.6 and m["promotion.ci_low"] == -0.1 and m["promotion.promoted"] == 0
    assert m["usage.tokens_in"] == 120
    assert p["config_hash"] == ctx.cfg.hash and p["task"] == "stereoset" and p["student.model"] == ctx.cfg.student.model
    assert t["pld.run_id"] == ctx.run_id and t["pld.prompt_version"] == resolved.prompt_version
    assert t["pld.alias.live"] == clustered.prompt_version and t["pld.promotion.decision"] == "candidate"
    assert t["pld.config_hash"] == ctx.cfg.hash and t["pld.code_version"]
    arts = {a.path for a in client.list_artifacts(mlflow_run_id)} | {
        a.path for a in client.list_artifacts(mlflow_run_id, "report")}
    assert {"config.yaml", "result.json", "report/report.html", "report/summary.md"} <= arts
    local = Path(client.download_artifacts(mlflow_run_id, "result.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text())["evaluate"]["conditions"]["pld_resolved"]["macro_f1"] == 0.63


def test_an_mlflow_failure_is_a_warning_never_a_failed_stage(make_ctx, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the database folder should be")
    ctx = make_ctx(overrides=["mlflow.enabled=true", f"mlflow.tracking_uri=sqlite:///{blocker}/mlflow.db"])
    pv = PromptVersions(ctx.store, "stereoset")
    v, = pv.write(PromptVersion("stereoset", "pld_resolved", "rules"))
    pv.set_alias("live", v, by="test")
    assert pv.aliases() == {"live": v}  # the Delta record is there
    assert ctx.tracker.log_run(ctx, {}) is None
    warned = [r.getMessage() for r in caplog.records if r.name == "pld_spark.tracking"]
    assert warned and all(r.startswith("MLflow: could not") for r in warned)
    assert any("set prompt alias live" in r for r in warned) and any(f"log run {ctx.run_id}" in r for r in warned)
