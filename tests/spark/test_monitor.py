"""Comparing, diffing and watching prompts on local Spark + Delta, without a model.

- `pld prompt diff` and the view ``prompt_diff`` agree: a version made from its parent by one edited
  rule (``parent_rule_id``) shows that rule as 'edited' in both; a further version shows reordered,
  added and removed rules the same way in both.
- `pld compare A B` on stored predictions (no student call: the student configured is a port
  nothing answers on) writes a ``comparisons`` row equal to the pure statistics and a report.
- drift in `pld score`: the predictions of a scored day are written directly (the rows are already
  scored, so score calls no model); a day like the baseline passes (exit 0), a day whose label mix
  differs sharply sets ``drifted`` and ends the command with exit status 3 (DriftDetected).
"""
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pld_spark.monitor import diff as mdiff
from pld_spark.monitor.stats import compare_stats
from pld_spark.prompts.versions import PromptVersion, PromptVersions
from pld_spark.storage.catalog import EVALUATIONS, MICRO_INSTRUCTIONS, PREDICTIONS, RULES
from pld_spark.storage.writers import frame
from tests.conftest import CONF
from tests.distill_fakes import seed_examples, synthetic_examples

pytestmark = pytest.mark.spark

#: a real student client nothing answers for (port 9): a command that called the model would fail
NO_STUDENT = ["student.type=openai", "student.model=unused", "student.base_url=http://127.0.0.1:9/v1",
              "student.max_retries=0"]
LABELS = ["gender", "profession", "race", "religion"]


def _pld(capfd, ctx, command, *extra, sets=()):
    from pld_spark import cli

    argv = [*command, "--config", str(CONF / "stereoset.yaml"),
            *[x for s in [f"lakehouse.path={ctx.cfg.lakehouse.path}", *NO_STUDENT, *sets] for x in ("--set", s)],
            *extra]
    capfd.readouterr()
    rc = cli.main(argv)
    out, err = capfd.readouterr()
    return rc, out, err


def _pred(doc_id, version, label, condition="score", at=None, error=None, run_id="seed"):
    return {"doc_id": doc_id, "prompt_version": version, "condition": condition, "label": None if error else label,
            "calibration": "batch", "backend": "test", "model": "test", "error": error, "run_id": run_id,
            "scored_at": at or datetime(2026, 1, 5, 12, tzinfo=timezone.utc)}


def _rule(rid, label, text, origin="consolidate", parent=None, members=(), sources=None, cluster_id=0):
    return {"rule_id": rid, "task": "stereoset", "cluster_run_id": "c1", "cluster_id": cluster_id, "topic": label,
            "instruction": text, "label": label, "support": len(members), "origin": origin, "parent_rule_id": parent,
            "member_micro_ids": list(members), "source_example_ids": sources, "valid": True, "run_id": "seed",
            "created_at": datetime.now(timezone.utc)}


def test_prompt_diff_function_and_view_agree(make_ctx, capfd):
    from pld_spark.storage.views import VIEW_SQL, view_sql

    ctx = make_ctx()
    rules = [_rule("r1", "race", "If the sentence names a country, the label is race.", members=["m1", "m2"]),
             _rule("r2", "profession", "If the sentence names a job, the label is profession.", members=["m3"],
                   cluster_id=1),
             _rule("r3", "religion", "If the sentence names a faith, the label is religion.", members=["m4"],
                   cluster_id=2),
             _rule("r2x", "profession", "If the sentence names a job or a workplace, the label is profession.",
                   origin="resolve", parent="r2", members=["m3"], sources=["train-profession-5"], cluster_id=1),
             _rule("r4", "gender", "If the sentence names a mother or a sister, the label is gender.",
                   origin="resolve", sources=["train-gender-1"], cluster_id=-1)]
    ctx.store.merge("rules", frame(ctx.spark, RULES, rules), update=False)
    micro = [{"micro_id": f"m{i}", "example_id": f"train-{i}", "teacher_model": "t", "template_version": "v",
              "label": "race", "rule": "x", "valid": True, "run_id": "seed"} for i in range(1, 5)]
    ctx.store.merge("micro_instructions", frame(ctx.spark, MICRO_INSTRUCTIONS, micro))
    pv = PromptVersions(ctx.store, "stereoset")
    a = PromptVersion("stereoset", "pld_cluster", "prompt A", rule_ids=("r1", "r2", "r3"))
    b = PromptVersion("stereoset", "pld_resolved", "prompt B", rule_ids=("r1", "r2x", "r3"),
                      parent_version=a.prompt_version)
    c = PromptVersion("stereoset", "pld_resolved", "prompt C", rule_ids=("r3", "r1", "r4"),
                      parent_version=b.prompt_version)
    pv.write([a, b, c])

    got = mdiff.load(ctx, a.prompt_version, b.prompt_version)
    rows = {r["rule_id"]: r for r in got["rows"]}
    assert {k: (r["change"], r["from_rule_id"], r["position_before"], r["position_after"]) for k, r in rows.items()} \
        == {"r1": ("kept", "r1", 1, 1), "r2x": ("edited", "r2", 2, 2), "r3": ("kept", "r3", 3, 3)}
    assert rows["r2x"]["text_diff"] == ("If the sentence names a [-job,-] {+job or a workplace,+} the label is "
                                        "profession.")
    assert rows["r2x"]["lineage"] == {"origin": "resolve", "cluster_id": 1, "n_members": 1,
                                      "member_example_ids": ["train-3"],
                                      "source_example_ids": ["train-profession-5"]}

    # what `pld sql init` (create_views) does locally for this view, without creating the tables of the others
    assert "prompt_diff" in VIEW_SQL
    ctx.spark.sql(f"CREATE OR REPLACE TEMP VIEW prompt_diff AS {view_sql('prompt_diff')}")

    def view(version):
        return {(r.rule_id, r.change, r.from_rule_id, r.position_before, r.position_after, r.instruction)
                for r in ctx.store.sql(f"SELECT * FROM prompt_diff WHERE prompt_version = '{version}'").collect()}

    def function(ref_a, ref_b):
        return {(r["rule_id"], r["change"], r["from_rule_id"], r["position_before"], r["position_after"],
                 r["instruction"]) for r in mdiff.load(ctx, ref_a, ref_b)["rows"]}

    assert view(b.prompt_version) == function(a.prompt_version, b.prompt_version)
    assert ("r2x", "edited", "r2", 2, 2, rules[3]["instruction"]) in view(b.prompt_version)
    # C from B: r3 and r1 swap (both reordered), r4 added, r2x removed; the view and the function agree
    assert view(c.prompt_version) == function(b.prompt_version, c.prompt_version) == {
        ("r3", "reordered", "r3", 3, 1, rules[2]["instruction"]),
        ("r1", "reordered", "r1", 1, 2, rules[0]["instruction"]),
        ("r4", "added", None, None, 3, rules[4]["instruction"]),
        ("r2x", "removed", None, 2, None, rules[3]["instruction"])}
    assert {r.parent_version for r in ctx.store.sql("SELECT DISTINCT parent_version FROM prompt_diff").collect()} == {
        a.prompt_version, b.prompt_version}
    # A to C through the rules table: r2x is gone from C, so nothing of C descends from r2 there
    assert {r["rule_id"]: r["change"] for r in mdiff.load(ctx, a.prompt_version, c.prompt_version)["rows"]} == {
        "r3": "reordered", "r1": "reordered", "r4": "added", "r2": "removed"}

    rc, out, err = _pld(capfd, ctx, ["prompt", "diff"], a.prompt_version, b.prompt_version)
    assert rc == 0, err[-2000:]
    assert "r2 -> r2x:" in out and "{+job or a workplace,+}" in out and "2 kept, 1 edited" in out
    assert "resolve c1 1m [train-3, train-profession-5]" in out


def test_compare_on_stored_predictions_writes_the_statistics_and_a_report(make_ctx, capfd, tmp_path):
    ctx = make_ctx(overrides=[f"evaluate.report_dir={tmp_path / 'reports'}"])
    test = synthetic_examples(3, "test")  # 12 rows, 3 per label
    seed_examples(ctx, test)
    pv = PromptVersions(ctx.store, "stereoset")
    a, b = pv.write([PromptVersion("stereoset", "pld_cluster", "prompt A"),
                     PromptVersion("stereoset", "zero_shot", "prompt B")])
    pv.set_alias("live", b, by="test")
    gold = {r["example_id"]: r["label"] for r in test}
    ids = sorted(gold)
    t0 = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)
    want_a = {d: gold[d] if i % 4 else "race" for i, d in enumerate(ids)}  # 3 of 12 wrong (or right by chance)
    want_b = {d: "gender" if i % 2 else gold[d] for i, d in enumerate(ids)}
    first = ids[0]
    preds = [_pred(d, a, ("religion" if d == first else want_a[d]), "pld", t0) for d in ids]  # evaluate's rows
    preds += [_pred(first, a, want_a[first], "score", t0 + timedelta(days=1)),  # a later error-free row wins
              _pred(first, a, None, "old", t0 + timedelta(days=2), error="TimeoutError")]  # an error row never does
    preds += [_pred(d, b, want_b[d], "score", t0) for d in ids]
    ctx.store.merge("predictions", frame(ctx.spark, PREDICTIONS, preds))

    rc, out, err = _pld(capfd, ctx, ["compare"], a, "live", "--top", "3",
                        sets=[f"evaluate.report_dir={tmp_path / 'reports'}"])
    assert rc == 0, err[-3000:]
    want = compare_stats([gold[d] for d in ids], [want_a[d] for d in ids], [want_b[d] for d in ids], LABELS,
                         doc_ids=ids, texts=[r["input_text"] for r in sorted(test, key=lambda r: r["example_id"])],
                         top=3, n_resamples=ctx.cfg.evaluate.bootstrap, seed=ctx.cfg.evaluate.seed)
    row = ctx.store.read("comparisons").first()
    assert (row.version_a, row.version_b, row.split, row.source, row.n) == (a, b, "test", "split 'test'", 12)
    assert (row.macro_f1_a, row.macro_f1_b, row.delta) == pytest.approx(
        (want["macro_f1_a"], want["macro_f1_b"], want["delta"]))
    assert (row.ci_low, row.ci_high, row.p_a_better) == pytest.approx((want["ci_low"], want["ci_high"],
                                                                       want["p_a_better"]))
    assert (row.mcnemar_p, row.a_only, row.b_only) == (pytest.approx(want["mcnemar"]["p_value"]),
                                                        want["mcnemar"]["a_only"], want["mcnemar"]["b_only"])
    assert json.loads(row.per_label) == want["per_label"]  # JSON round-trips floats exactly
    assert json.loads(row.disagreements) == want["disagreements"] and len(want["disagreements"]) == 3
    assert row.comparison_id in out and a in out and f"{b} (live)" in out and "only A right" in out
    report = Path(row.report_path)
    assert report.name == "report.html" and report.parent.name == f"compare-{row.comparison_id}"
    assert (report.parent / "report.md").read_text().startswith(f"# Prompt comparison: {a} vs {b} (live)")
    # nothing was scored: both prompts had error-free predictions for every row
    assert ctx.store.read("predictions").where("condition = 'compare'").count() == 0

    # any labelled table or path: a Parquet folder with doc_id, text and label
    sub = [r for r in test if r["example_id"] in ids[:6]]
    path = tmp_path / "labelled"
    ctx.spark.createDataFrame([(r["example_id"], r["input_text"], r["label"]) for r in sub],
                              "doc_id STRING, text STRING, label STRING").write.parquet(str(path))
    from pld_spark.monitor import compare

    res = compare.run(ctx, a, b, input_ref=str(path))
    assert (res["n"], res["split"], res["source"], res["scored"]) == (6, None, str(path), {"a": 0, "b": 0})
    assert res["macro_f1_a"] == pytest.approx(compare_stats(
        [gold[d] for d in ids[:6]], [want_a[d] for d in ids[:6]], [want_b[d] for d in ids[:6]], LABELS)["macro_f1_a"])
    assert ctx.store.read("comparisons").count() == 2


def test_drift_of_a_scored_day_sets_drifted_and_exit_status_3(make_ctx, capfd, caplog, tmp_path):
    import logging

    from pyspark.sql import functions as F

    from pld_spark.storage.views import view_sql

    ctx = make_ctx()
    train, test = synthetic_examples(6, "train"), synthetic_examples(5, "test")  # 24 train, 20 test (5 per label)
    seed_examples(ctx, train + test)
    pv = PromptVersions(ctx.store, "stereoset")
    v, = pv.write(PromptVersion("stereoset", "pld_resolved", "prompt V"))
    # its latest evaluation: test predictions equal to the gold labels -> the baseline is 5 per label
    ev = {"run_id": "eval-1", "task": "stereoset", "condition": "pld", "prompt_version": v, "n": 20,
          "created_at": datetime.now(timezone.utc)}
    ctx.store.merge("evaluations", frame(ctx.spark, EVALUATIONS, [ev]))
    day1, day2 = datetime(2026, 1, 5, 12, tzinfo=timezone.utc), datetime(2026, 1, 7, 12, tzinfo=timezone.utc)
    like = synthetic_examples(10, "day1")  # 40 rows, 10 per label, inputs like the train inputs
    odd = [{"example_id": f"day2-{i}", "label": "race",
            "input_text": f"Quarterly revenue of the semiconductor division rose {i} percent on strong demand."}
           for i in range(40)]
    preds = [_pred(r["example_id"], v, r["label"], "pld", run_id="eval-1") for r in test]
    preds += [_pred(r["example_id"], v, r["label"], at=day1) for r in like]
    preds += [_pred(r["example_id"], v, r["label"], at=day2) for r in odd]  # every row 'race'
    ctx.store.merge("predictions", frame(ctx.spark, PREDICTIONS, preds))
    for name, rows in (("day1", like), ("day2", odd)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"doc_id": r["example_id"], "text": r["input_text"]}) + "\n" for r in rows))
    sets = ["drift.enabled=true", "drift.input_distance_threshold=0.5", "score.engine=local"]
    def date_of(ts):  # the day Spark gives a timestamp (session time zone), as drift does
        return ctx.spark.createDataFrame([(ts,)], "t TIMESTAMP").select(F.to_date("t")).first()[0]

    rc, out, err = _pld(capfd, ctx, ["score"], "--prompt-version", v, "--input", str(tmp_path / "day1.jsonl"),
                        sets=sets)
    assert rc == 0, err[-3000:]
    drift = json.loads(out)["score"]["drift"]
    assert drift["baseline"] == "evaluation" and drift["drifted"] == {}
    d1 = ctx.store.read("drift_daily").first()
    assert (d1.day, d1.prompt_version, d1.n, d1.drifted, d1.reasons) == (date_of(day1), v, 40, False, None)
    assert d1.psi == pytest.approx(0.0, abs=1e-9) and d1.chi2_p == pytest.approx(1.0) and d1.error_share == 0
    assert json.loads(d1.label_counts) == {lab: 10 for lab in LABELS}
    base = json.loads(d1.baseline)
    assert (base["source"], base["run_id"], base["counts"]) == ("evaluation", "eval-1", {lab: 5 for lab in LABELS})
    assert d1.input_distance < 0.2

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pld_spark.monitor.drift"):
        rc, out, err = _pld(capfd, ctx, ["score"], "--prompt-version", v, "--input", str(tmp_path / "day2.jsonl"),
                            sets=sets)
    assert rc == 3, err[-3000:]
    day = date_of(day2).isoformat()
    warning = [r.getMessage() for r in caplog.records if r.name == "pld_spark.monitor.drift"]
    assert len(warning) == 1 and caplog.records[-1].levelname == "WARNING"
    assert f"drift: day {day}, prompt {v}" in warning[0]
    assert "drift.psi_threshold 0.2" in warning[0] and "drift.chi2_p_threshold 0.01" in warning[0]
    final = [line for line in err.splitlines() if line.startswith("drift: prompt")]
    assert len(final) == 1 and f"{day}: PSI" in final[0] and "Traceback" not in err
    d2 = ctx.store.read("drift_daily").where(F.col("day") == date_of(day2)).first()
    assert d2.drifted and d2.n == 40 and json.loads(d2.label_counts) == {"race": 40}
    assert d2.psi > 0.2 and d2.chi2_p < 0.01 and d2.input_distance > 0.5 > d1.input_distance
    assert "input distance" in d2.reasons and "PSI" in d2.reasons
    # the predictions were stored before the exit; the latest day per prompt is in drift_status
    assert ctx.store.read("predictions").where(F.col("scored_at") == day2).count() == 40
    status = ctx.spark.sql(view_sql("drift_status")).collect()
    assert [(r.prompt_version, r.day, r.drifted) for r in status] == [(v, date_of(day2), True)]
