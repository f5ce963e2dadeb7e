"""Quality benchmark: the whole pipeline on one task, then macro-F1 (bootstrap 95% CI) on the
fixed test split for every evaluation condition (zero-shot with label descriptions and bare,
few-shot k=5 and k=#rules, PLD after clustering, selection and the loop), with calibration chosen
on validation per condition, and the paired differences on the same test rows (``paired``).

It drives the library, not the CLI: one :class:`pld_spark.context.RunContext` whose
``lakehouse.path`` is a fresh folder (``bench/results/tmp-quality-<task>-<time>``, removed at
the end unless ``--keep``) or ``--lakehouse`` (kept: teacher answers and student label scores are
cached there by content, so a re-run or an ablation pays only for what changed), and the stage
``run`` functions in order: ingest -> extract -> cluster -> consolidate -> select -> resolve ->
evaluate. Per stage it records wall time, the load average, the counts the stage returned, and
the model calls and tokens it spent (teacher: the run record's usage; student: the driver's
student client counters). The JSON keeps each condition's test predictions (in test doc order),
so ``bench/ablation.py`` can compare runs on the same rows.

    .venv/bin/python bench/quality.py --task stereoset --train 32 --val 16 --test 40
    .venv/bin/python bench/quality.py --task contractnli --train 24 --val 12 --test 30
    .venv/bin/python bench/quality.py --task stereoset --set teacher.type=openai \
        --set teacher.base_url=http://host:8000/v1 --set teacher.model=my-teacher

Writes ``bench/results/quality_<task>.json`` (``--name`` to change).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS_DIR, Timer, add_config_args, load_cfg, loadavg, model_facts, text_table, write_result)

STAGES = ("ingest", "extract", "cluster", "consolidate", "select", "resolve", "evaluate")
log = logging.getLogger("bench.quality")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["stereoset", "contractnli"], default="stereoset")
    add_config_args(ap, default_config=None)
    ap.add_argument("--train", type=int, default=None, help="train rows (one teacher call each); default: the config's")
    ap.add_argument("--val", type=int, default=None, help="val rows (one student call per prompt compared); default: "
                                                         "the config's")
    ap.add_argument("--test", type=int, default=None, help="test rows (one student call per condition); default: the "
                                                          "config's")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CI")
    ap.add_argument("--lakehouse", default=None, help="lakehouse folder (default: a fresh bench/results/tmp-... one)")
    ap.add_argument("--keep", action="store_true", help="keep the lakehouse and report folder afterwards")
    ap.add_argument("--name", default=None, help="results file name (default quality_<task>)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def _usage(ctx, stage: str) -> dict[str, float]:
    """The teacher's usage recorded for ``stage`` (resolve also folds the student's calls into the
    run record; counting all of it as the teacher's reported 67 teacher calls for 2 real ones)."""
    u = ctx.record.counts.get(stage, {}).get("usage", {}).get("teacher", {})
    return {k: u.get(k, 0) for k in ("calls", "tokens_in", "tokens_out", "cost_usd")}


def _client_stats(ctx, member: str) -> dict[str, float]:
    client = ctx.__dict__.get(member)  # only if already built: never load a model just to read counters
    if client is None or not hasattr(client, "stats"):
        return {"calls": 0, "tokens_in": 0, "tokens_out": 0}
    s = client.stats()
    return {k: s.get(k, 0) or 0 for k in ("calls", "tokens_in", "tokens_out", "classify_inputs")}


def _delta(after: dict, before: dict) -> dict:
    return {k: round(after[k] - before.get(k, 0), 6) if isinstance(after[k], float) else after[k] - before.get(k, 0)
            for k in after}


def prompt_facts(ctx, version: str | None) -> dict | None:
    """Rule count and token count of a stored prompt version."""
    if not version:
        return None
    from pld_spark.prompts.versions import PromptVersions

    row = PromptVersions(ctx.store, ctx.cfg.task.name).get(version)
    if row is None:
        return {"prompt_version": version, "missing": True}
    return {"prompt_version": version, "kind": row.kind, "rules": len(row.rule_ids or []),
            "label_examples": len(row.example_ids),
            "dropped_rules": len(row.dropped_rule_ids or []), "token_count": row.token_count,
            "token_budget": row.token_budget, "chars": len(row.text or ""), "text": row.text}


def readers_current(ctx, split: str):
    from pld_spark.storage.readers import current_examples

    return current_examples(ctx, split)


def test_predictions(ctx, conds: list[dict]) -> dict:
    """condition -> {"doc_ids": [...], "labels": [...]} of the test predictions (in doc_id order)."""
    from pyspark.sql import functions as F

    out = {}
    for c in conds:
        if c.get("reused_from"):
            continue
        rows = (ctx.store.read("predictions").where((F.col("run_id") == ctx.run_id)
                                                    & (F.col("condition") == c["condition"]))
                .select("doc_id", "label", "error").orderBy("doc_id").collect())
        out[c["condition"]] = {"doc_ids": [r.doc_id for r in rows],
                               "labels": [None if r.error else r.label for r in rows]}
    return out


def rule_table(ctx, prompts: dict) -> dict:
    """Each PLD prompt's rules (text, label, origin, support), with their selection contribution and coverage."""
    from pyspark.sql import functions as F

    from pld_spark.storage.readers import load_rules

    evals = {r.rule_id: r.asDict() for r in ctx.store.read("rule_evaluations")
             .where(F.col("run_id") == ctx.run_id).collect()}
    out = {}
    for name, p in prompts.items():
        if not p or p.get("missing"):
            continue
        row = ctx.store.read("prompts").where(F.col("prompt_version") == p["prompt_version"]).first()
        out[name] = [{"rule_id": r["rule_id"], "label": r["label"], "origin": r["origin"], "support": r["support"],
                      "instruction": r["instruction"], "example_text": r.get("example_text"),
                      "error": r.get("error"), "contribution": (evals.get(r["rule_id"]) or {}).get("contribution"),
                      "coverage": (evals.get(r["rule_id"]) or {}).get("coverage")}
                     for r in load_rules(ctx.store, list(row.rule_ids or []))]
    return out


def run_bench(args) -> dict:
    import importlib

    from pld_spark.context import RunContext

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    lake = Path(args.lakehouse) if args.lakehouse else RESULTS_DIR / f"tmp-quality-{args.task}-{stamp}"
    config = args.config or f"conf/{args.task}.yaml"
    sizes = [f"dataset.sample.{k}={v}" for k, v in (("train", args.train), ("val", args.val), ("test", args.test))
             if v is not None]
    sets = [f"lakehouse.path={lake / 'lakehouse'}", f"evaluate.report_dir={lake / 'reports'}", *sizes,
            f"evaluate.bootstrap={args.bootstrap}", *args.set]
    cfg = load_cfg(config, sets)
    if cfg.task.name != args.task:
        raise SystemExit(f"--task {args.task} but {config} is task '{cfg.task.name}'")
    stages: list[dict] = []
    evaluation = None
    ctx = RunContext(cfg, command="bench quality")
    t_all = time.perf_counter()
    try:
        with ctx:
            for name in STAGES:
                fn = importlib.import_module(f"pld_spark.pipeline.{name}").run
                u0, s0 = _usage(ctx, name), _client_stats(ctx, "student")
                with Timer() as tm:
                    out = fn(ctx)
                u1, s1 = _usage(ctx, name), _client_stats(ctx, "student")
                student = _delta(s1, s0)
                rec = _delta(u1, u0)
                stage = {"stage": name, "wall_s": round(tm.s, 2), "load_before": tm.load_before,
                         "load_after": tm.load_after, "teacher_calls": int(rec["calls"]),
                         "teacher_tokens_in": int(rec["tokens_in"]), "teacher_tokens_out": int(rec["tokens_out"]),
                         "student_calls": int(student["calls"]), "student_tokens_in": int(student["tokens_in"]),
                         "student_tokens_out": int(student["tokens_out"])}
                if name == "evaluate":
                    evaluation = out
                    stage["counts"] = {k: out.get(k) for k in ("run_id", "skipped", "engine", "wall_s")}
                else:
                    stage["counts"] = out
                stages.append(stage)
                print(f"[{name}] {tm.s:.1f}s load {tm.load_after}", flush=True)
    finally:
        wall = time.perf_counter() - t_all
    conds = []
    for c in (evaluation or {}).get("conditions", {}).values():
        conds.append({k: c.get(k) for k in ("condition", "n", "macro_f1", "ci_low", "ci_high", "val_macro_f1",
                                            "accuracy", "latency_p50", "latency_p95", "latency_mean", "latency_first",
                                            "prompt_token_count", "prompt_tokens_mean", "prefix_reused_share",
                                            "errors", "prompt_version", "calibration", "engine", "note", "wall_s",
                                            "per_class", "confusion", "reused_from")})
    for c in conds:
        c["calibration_evidence"] = calibration_evidence(ctx, c.get("prompt_version"))
    counts = {s["stage"]: s["counts"] for s in stages}
    prompts = {"pld_cluster": prompt_facts(ctx, (counts.get("consolidate") or {}).get("prompt_version")),
               "pld_selected": prompt_facts(ctx, (counts.get("select") or {}).get("selected_version")),
               "pld_resolved": prompt_facts(ctx, (counts.get("resolve") or {}).get("final_version"))}
    test_preds = test_predictions(ctx, conds)
    gold = {r.example_id: r.label for r in readers_current(ctx, "test").select("example_id", "label").collect()}
    any_docs = next(iter(test_preds.values()), {"doc_ids": []})["doc_ids"]
    test_gold = {"doc_ids": any_docs, "labels": [gold.get(d) for d in any_docs]}
    rules = rule_table(ctx, prompts)  # before the session stops below
    records = {"run_id": ctx.run_id, "counts": ctx.record.counts, "tokens_in": ctx.record.tokens_in,
               "tokens_out": ctx.record.tokens_out, "llm_calls": ctx.record.llm_calls}
    try:
        ctx.spark.stop()
    except Exception:  # noqa: BLE001
        pass
    if not args.keep and not args.lakehouse:
        shutil.rmtree(lake, ignore_errors=True)
    return {"task": args.task, "config": str(config), "sets": sets,
            "sample": cfg.dataset.sample.model_dump(mode="json"),
            "teacher": model_facts(cfg.teacher), "student": model_facts(cfg.student),
            "calibration": cfg.student.calibration, "bootstrap": args.bootstrap,
            "resolve": {"max_rounds": cfg.resolve.max_rounds, "min_delta": cfg.resolve.min_delta,
                        "train_sample": cfg.resolve.train_sample},
            "cluster": cfg.cluster.model_dump(mode="json"), "input_policy": cfg.input_policy.model_dump(mode="json"),
            "pipeline_wall_s": round(wall, 1), "loadavg_end": loadavg(), "stages": stages, "conditions": conds,
            "paired": (evaluation or {}).get("paired", {}), "evaluation_meta": (evaluation or {}).get("meta", {}),
            "prompts": prompts, "rules": rules, "run_record": records,
            "test_predictions": test_preds, "test_gold": test_gold, "lakehouse": str(lake) if (args.keep or args.lakehouse) else None}


def print_tables(result: dict) -> None:
    print(f"\n{result['task']}: student {result['student']['model']} ({result['student'].get('file')}), teacher "
          f"{result['teacher']['type']}:{result['teacher']['model']}; train/val/test "
          f"{result['sample']['train']}/{result['sample']['val']}/{result['sample']['test']}\n")
    rows = [(c["condition"], c["n"], c["macro_f1"], f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}]", c.get("val_macro_f1"),
             c.get("calibration"), c["accuracy"], c["prompt_token_count"], c["latency_p50"], c["errors"])
            for c in result["conditions"]]
    print(text_table(("condition", "n", "macro_f1", "95% CI", "val_f1", "calibration", "accuracy", "prompt_tok",
                      "p50_s", "errors"), rows))
    print()
    rows = [(k, v["a"], v["b"], v["delta"], f"[{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]", v["p_a_better"])
            for k, v in result.get("paired", {}).items()]
    print(text_table(("paired (a - b)", "a", "b", "delta", "95% CI", "P(a better)"), rows))
    print(f"PLD side: {result.get('evaluation_meta', {}).get('pld_condition')} "
          f"(promoted: {result.get('evaluation_meta', {}).get('pld_promoted')})\n")
    rows = [(s["stage"], s["wall_s"], s["teacher_calls"], s["teacher_tokens_in"], s["teacher_tokens_out"],
             s["student_calls"], s["student_tokens_in"], f"{s['load_before'][0] if s['load_before'] else '-'}"
             f"->{s['load_after'][0] if s['load_after'] else '-'}") for s in result["stages"]]
    print(text_table(("stage", "wall_s", "t_calls", "t_tok_in", "t_tok_out", "s_calls", "s_tok_in", "load1"), rows))
    print()
    for k, p in result["prompts"].items():
        if p:
            print(f"{k}: {p.get('prompt_version')} rules={p.get('rules')} tokens={p.get('token_count')} "
                  f"dropped={p.get('dropped_rules')}")


def calibration_evidence(ctx, version: str | None) -> dict | None:
    """The stored calibration choice of ``version`` for this run's student: method, offsets, and
    every candidate's val macro-F1 in-sample (and cross-validated with student.calibration_folds >= 2)."""
    if not version:
        return None
    from pld_spark.prompts.versions import PromptVersions

    cal = PromptVersions(ctx.store, ctx.cfg.task.name).calibration(
        version, f"{ctx.student.backend}:{ctx.student.model_id}")
    return json.loads(cal.to_json()) if cal is not None else None


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    result = run_bench(args)
    print_tables(result)
    path = write_result(args.name or f"quality_{args.task}", result, started)
    print(f"\nwrote {path}")
    print(json.dumps({c["condition"]: round(c["macro_f1"], 4) for c in result["conditions"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
