"""Quality benchmark: the whole pipeline on one task in a private lakehouse, then macro-F1
(bootstrap 95% CI) on the fixed test split for zero-shot, few-shot (k=5), PLD after
clustering and PLD after the conflict loop, all with the same student.

It drives the library, not the CLI: one :class:`pld_spark.context.RunContext` whose
``lakehouse.path`` is a fresh folder (``bench/results/tmp-quality-<task>-<time>``, removed at
the end unless ``--keep``), and the stage ``run`` functions in order: ingest -> extract ->
cluster -> consolidate -> resolve -> evaluate. Per stage it records wall time, the load
average, the counts the stage returned, and the model calls and tokens it spent (teacher:
the run record's usage, which extract, consolidate and resolve add to; student: the driver's
student client counters).

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

STAGES = ("ingest", "extract", "cluster", "consolidate", "resolve", "evaluate")
log = logging.getLogger("bench.quality")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["stereoset", "contractnli"], default="stereoset")
    add_config_args(ap, default_config=None)
    ap.add_argument("--train", type=int, default=32, help="train rows (one teacher call each in extract)")
    ap.add_argument("--val", type=int, default=16, help="val rows (one student call each per resolve round)")
    ap.add_argument("--test", type=int, default=40, help="test rows (one student call per condition)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CI")
    ap.add_argument("--lakehouse", default=None, help="lakehouse folder (default: a fresh bench/results/tmp-... one)")
    ap.add_argument("--keep", action="store_true", help="keep the lakehouse and report folder afterwards")
    ap.add_argument("--name", default=None, help="results file name (default quality_<task>)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def _usage(ctx) -> dict[str, float]:
    r = ctx.record
    return {"calls": r.llm_calls, "tokens_in": r.tokens_in, "tokens_out": r.tokens_out, "cost_usd": r.cost_usd}


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
    from pld_spark.pipeline.score import prompt_row

    row = prompt_row(ctx, version)
    if row is None:
        return {"prompt_version": version, "missing": True}
    return {"prompt_version": version, "kind": row.kind, "rules": len(row.rule_ids or []),
            "dropped_rules": len(row.dropped_rule_ids or []), "token_count": row.token_count,
            "token_budget": row.token_budget, "chars": len(row.text or ""), "text": row.text}


def run_bench(args) -> dict:
    import importlib

    from pld_spark.context import RunContext

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    lake = Path(args.lakehouse) if args.lakehouse else RESULTS_DIR / f"tmp-quality-{args.task}-{stamp}"
    config = args.config or f"conf/{args.task}.yaml"
    sets = [f"lakehouse.path={lake / 'lakehouse'}", f"evaluate.report_dir={lake / 'reports'}",
            f"dataset.sample.train={args.train}", f"dataset.sample.val={args.val}",
            f"dataset.sample.test={args.test}", f"evaluate.bootstrap={args.bootstrap}", *args.set]
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
                u0, s0 = _usage(ctx), _client_stats(ctx, "student")
                with Timer() as tm:
                    out = fn(ctx)
                u1, s1 = _usage(ctx), _client_stats(ctx, "student")
                student = _delta(s1, s0)
                rec = _delta(u1, u0)
                if name == "evaluate":  # evaluate folds the student's usage into the run record
                    rec = {k: 0 for k in rec}
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
        conds.append({k: c.get(k) for k in ("condition", "n", "macro_f1", "ci_low", "ci_high", "accuracy",
                                            "latency_p50", "latency_p95", "latency_mean", "latency_first",
                                            "prompt_token_count", "prompt_tokens_mean", "prefix_reused_share",
                                            "errors", "prompt_version", "calibration", "engine", "note", "wall_s",
                                            "per_class", "confusion")})
    cons = next((s["counts"] for s in stages if s["stage"] == "consolidate"), {}) or {}
    res = next((s["counts"] for s in stages if s["stage"] == "resolve"), {}) or {}
    prompts = {"pld_cluster": prompt_facts(ctx, cons.get("prompt_version")),
               "pld_resolved": prompt_facts(ctx, res.get("final_version"))}
    records = {"run_id": ctx.run_id, "counts": ctx.record.counts, "tokens_in": ctx.record.tokens_in,
               "tokens_out": ctx.record.tokens_out, "llm_calls": ctx.record.llm_calls}
    try:
        ctx.spark.stop()
    except Exception:  # noqa: BLE001
        pass
    if not args.keep:
        shutil.rmtree(lake, ignore_errors=True)
    return {"task": args.task, "config": str(config), "sets": sets,
            "sample": {"train": args.train, "val": args.val, "test": args.test},
            "teacher": model_facts(cfg.teacher), "student": model_facts(cfg.student),
            "calibration": cfg.student.calibration, "bootstrap": args.bootstrap,
            "resolve": {"max_rounds": cfg.resolve.max_rounds, "min_delta": cfg.resolve.min_delta,
                        "train_sample": cfg.resolve.train_sample},
            "cluster": cfg.cluster.model_dump(mode="json"), "input_policy": cfg.input_policy.model_dump(mode="json"),
            "pipeline_wall_s": round(wall, 1), "loadavg_end": loadavg(), "stages": stages, "conditions": conds,
            "prompts": prompts, "run_record": records, "lakehouse": str(lake) if args.keep else None}


def print_tables(result: dict) -> None:
    print(f"\n{result['task']}: student {result['student']['model']} ({result['student'].get('file')}), teacher "
          f"{result['teacher']['type']}:{result['teacher']['model']}; train/val/test "
          f"{result['sample']['train']}/{result['sample']['val']}/{result['sample']['test']}\n")
    rows = [(c["condition"], c["n"], c["macro_f1"], f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}]", c["accuracy"],
             c["prompt_token_count"], c["latency_p50"], c["errors"]) for c in result["conditions"]]
    print(text_table(("condition", "n", "macro_f1", "95% CI", "accuracy", "prompt_tok", "p50_s", "errors"), rows))
    print()
    rows = [(s["stage"], s["wall_s"], s["teacher_calls"], s["teacher_tokens_in"], s["teacher_tokens_out"],
             s["student_calls"], s["student_tokens_in"], f"{s['load_before'][0] if s['load_before'] else '-'}"
             f"->{s['load_after'][0] if s['load_after'] else '-'}") for s in result["stages"]]
    print(text_table(("stage", "wall_s", "t_calls", "t_tok_in", "t_tok_out", "s_calls", "s_tok_in", "load1"), rows))
    print()
    for k, p in result["prompts"].items():
        if p:
            print(f"{k}: {p.get('prompt_version')} rules={p.get('rules')} tokens={p.get('token_count')} "
                  f"dropped={p.get('dropped_rules')}")


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
