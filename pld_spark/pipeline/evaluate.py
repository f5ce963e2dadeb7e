"""evaluate: every condition on the same fixed test split -> ``predictions``, ``evaluations``
and a report (HTML with plots + Markdown summary).

Conditions (``evaluate.conditions``), each a student system prompt scored over the test
inputs with the same student and calibration:

- ``zero_shot``: the task header and labels only (no rules);
- ``few_shot``: plus ``few_shot_k`` train examples (seeded, stratified as far as k allows);
- ``pld_cluster``: the prompt of alias ``clustered`` (after consolidation);
- ``pld_resolved``: the prompt of alias ``distilled`` (after the conflict loop);
- ``cot``: the zero-shot prompt, but the student first writes a short reasoning
  (``cot_max_tokens``), then the label is chosen by constrained label scoring over input +
  reasoning (for the latency contrast: reasoning costs output tokens).

A PLD condition whose alias does not exist is skipped with a note. Zero-/few-shot/cot
prompts are stored in ``prompts`` (kind ``zero_shot``/``few_shot``/``cot``) so every
prediction's ``prompt_version`` resolves. Scoring runs in-process by default
(``evaluate.engine: local``) or through the Ray actor pool (``ray``), with the same
:func:`pld_spark.pipeline.score.score_batch`. Conditions run one after another, so each
condition's latency includes the benefit of reusing its own prompt prefix; the first request
of each condition is reported separately (``latency_first``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

log = logging.getLogger(__name__)

STAGE = "evaluate"
PLD_ALIASES = {"pld_cluster": "clustered", "pld_resolved": "distilled"}
COT_INSTRUCTION = ("Before answering, think briefly: in one or two short sentences, say which group or topic the "
                   "input is about. Then give the label.")
COT_TEMPLATE_VERSION = "eval-cot-v1"


@dataclass
class Condition:
    name: str
    prompt_version: str
    text: str
    kind: str
    token_count: int = 0
    note: str = ""
    shots: list[str] = field(default_factory=list)
    label_system: str = ""  # cot: the prompt the label is scored with after the reasoning


# ----------------------------------------------------------------------------- prompts per condition
def select_shots(train, k: int, labels: Sequence[str], seed: int) -> list[dict[str, str]]:
    """k train examples, stratified as far as k allows: labels in task order take turns, each
    label's rows ordered by sha256(seed:example_id). Deterministic for a seed.

    ``train`` is a pandas frame with example_id, input_text, label."""
    def order(eid: str) -> str:
        return hashlib.sha256(f"{seed}:{eid}".encode()).hexdigest()

    pools = {lab: sorted((r for r in train.to_dict("records") if r["label"] == lab), key=lambda r: order(r["example_id"]))
             for lab in labels}
    # Rotate the starting label by the seed so k < n_labels does not always favour the first labels.
    start = int(hashlib.sha256(str(seed).encode()).hexdigest(), 16) % max(1, len(labels))
    turn = list(labels[start:]) + list(labels[:start])
    out: list[dict[str, str]] = []
    while len(out) < k and any(pools.values()):
        for lab in turn:
            if pools[lab] and len(out) < k:
                out.append(pools[lab].pop(0))
    return out


def _assembled(task, count_tokens, shots=()):
    from pld_spark.prompts.student import FewShot, assemble

    return assemble(task, shots=[FewShot(s["input_text"], s["label"]) for s in shots], count_tokens=count_tokens)


def build_conditions(ctx, count_tokens, train=None) -> tuple[list[Condition], dict[str, str]]:
    """The conditions to run, in config order, and the skipped ones with a reason."""
    from pld_spark.pipeline.score import alias_version, prompt_row

    cfg = ctx.cfg
    conds: list[Condition] = []
    skipped: dict[str, str] = {}
    for name in cfg.evaluate.conditions:
        if name in ("zero_shot", "cot"):
            a = _assembled(cfg.task, count_tokens)
            text = a.text if name == "zero_shot" else a.text + "\n\n" + COT_INSTRUCTION
            note = "" if name == "zero_shot" else f"reasoning up to {cfg.evaluate.cot_max_tokens} tokens, then the label"
            conds.append(Condition(name, _version(text), text, name, count_tokens(text), note, label_system=a.text))
        elif name == "few_shot":
            if train is None or len(train) == 0:
                skipped[name] = "no train examples for the shots"
                continue
            shots = select_shots(train, cfg.evaluate.few_shot_k, cfg.task.label_names, cfg.evaluate.seed)
            a = _assembled(cfg.task, count_tokens, shots)
            note = f"k={len(shots)} (seed {cfg.evaluate.seed})"
            conds.append(Condition(name, a.version, a.text, name, a.token_count, note,
                                   [s["example_id"] for s in shots]))
        else:
            alias = PLD_ALIASES[name]
            version = alias_version(ctx, alias)
            if version is None:
                skipped[name] = (f"alias '{alias}' of task '{cfg.task.name}' not found in prompt_aliases "
                                 f"(run `pld distill` first)")
                continue
            row = prompt_row(ctx, version)
            if row is None:
                skipped[name] = f"alias '{alias}' points at prompt_version '{version}', which is not in prompts"
                continue
            conds.append(Condition(name, version, row.text, row.kind or name, count_tokens(row.text),
                                   f"alias '{alias}'"))
    return conds, skipped


def _version(text: str) -> str:
    return "pv-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def store_prompts(ctx, conds: Sequence[Condition]) -> None:
    """Insert the zero/few-shot/cot prompts into ``prompts`` (immutable: existing versions kept)."""
    from pld_spark.storage.catalog import PROMPTS

    now = datetime.now(timezone.utc)
    rows = []
    for c in conds:
        if c.kind not in ("zero_shot", "few_shot", "cot"):
            continue
        rec = {"prompt_version": c.prompt_version, "task": ctx.cfg.task.name, "kind": c.kind, "text": c.text,
               "sha256": hashlib.sha256(c.text.encode()).hexdigest(), "parent_version": None, "rule_ids": [],
               "dropped_rule_ids": [], "review_ids": list(c.shots), "token_count": int(c.token_count),
               "token_budget": None, "run_id": ctx.run_id, "created_at": now}
        rows.append(tuple(rec[col] for col in PROMPTS.columns))
    if rows:
        ctx.store.merge("prompts", ctx.spark.createDataFrame(rows, PROMPTS.ddl), update=False)


# ----------------------------------------------------------------------------- scoring
def cot_batch(client, batch, system: str, labels: Sequence[str], calibration: str | None, max_tokens: int,
              run_id: str, label_system: str | None = None):
    """Chain-of-thought scoring of one batch: a short generated reasoning per input (with
    ``system``), then the label by constrained label scoring of input + reasoning with
    ``label_system`` (default ``system``), so the label is always in the set.

    Latency and tokens add both calls. The chat's template version carries the run id, so
    the response cache never serves a reasoning measured in another run."""
    from pld_spark.llm.base import ChatRequest
    from pld_spark.pipeline.score import result_frame, score_batch

    texts = ["" if t is None else str(t) for t in batch["input_text"]]
    reqs = [ChatRequest(messages=[{"role": "system", "content": system}, {"role": "user", "content": t}],
                        max_tokens=max_tokens, temperature=0.0, template_version=f"{COT_TEMPLATE_VERSION}:{run_id}",
                        request_id=str(d)) for d, t in zip(batch["doc_id"], texts)]
    todo = [i for i, t in enumerate(texts) if t.strip()]
    responses = dict(zip(todo, client.chat([reqs[i] for i in todo]))) if todo else {}
    reasoned = batch.copy()
    reasoned["input_text"] = [
        (f"{texts[i]}\nReasoning: {responses[i].text.strip()}" if i in responses and responses[i].ok else texts[i])
        for i in range(len(texts))]
    scored = score_batch(client, reasoned, label_system or system, labels, calibration)
    rows = scored.to_dict("records")
    for i, r in enumerate(rows):
        resp = responses.get(i)
        if resp is None:
            continue
        r["latency_s"] = float(r["latency_s"] or 0.0) + float(resp.latency_s or 0.0)
        r["tokens_in"] = int(r["tokens_in"] or 0) + int(resp.tokens_in or 0)
        r["tokens_out"] = int(r["tokens_out"] or 0) + int(resp.tokens_out or 0)
        if not resp.ok and r["error"] is None:
            r["error"] = f"reasoning failed: {resp.error}"[:2000]
            r["label"] = None
    return result_frame(rows)


def _score_condition(ctx, cond: Condition, inputs, engine: str, client):
    """Result frame (pandas, :data:`score.RESULT_COLUMNS`) of one condition over ``inputs``."""
    from pld_spark.pipeline.score import StudentScorer, score_pandas, score_with_ray

    cfg = ctx.cfg
    labels = cfg.task.label_names
    if cond.name == "cot":
        size = cfg.evaluate.batch_size or len(inputs)
        import pandas as pd

        parts = [cot_batch(client, inputs.iloc[i:i + size], cond.text, labels, cfg.student.calibration,
                           cfg.evaluate.cot_max_tokens, ctx.run_id, cond.label_system)
                 for i in range(0, len(inputs), size)]
        return pd.concat(parts, ignore_index=True), "local"
    if engine == "ray":
        df = ctx.spark.createDataFrame(inputs[["doc_id", "input_text"]], "doc_id STRING, input_text STRING")
        results, _stats, h = score_with_ray(ctx, df, len(inputs), cond.text, f"evaluate-{cond.name}")
        pdf = results.toPandas()
        h.cleanup()
        return pdf, "ray"
    scorer = StudentScorer(system=cond.text, labels=labels, calibration=cfg.student.calibration, client=client)
    return score_pandas(scorer, inputs, cfg.evaluate.batch_size), "local"


def _evaluation_row(ctx, cond: Condition, m: dict[str, Any], engine: str, calibration: str, model: str) -> dict:
    return {"run_id": ctx.run_id, "task": ctx.cfg.task.name, "condition": cond.name,
            "prompt_version": cond.prompt_version, "n": m["n"], "macro_f1": m["macro_f1"], "ci_low": m["ci_low"],
            "ci_high": m["ci_high"], "accuracy": m["accuracy"], "per_class": json.dumps(m["per_class"], sort_keys=True),
            "confusion": json.dumps(m["confusion"]), "latency_p50": m["latency_p50"], "latency_p95": m["latency_p95"],
            "prompt_tokens_mean": m["prompt_tokens_mean"], "output_tokens_mean": m["output_tokens_mean"],
            "prefix_hit_rate": m["prefix_hit_rate"], "errors": m["errors"], "created_at": datetime.now(timezone.utc),
            "engine": engine, "calibration": calibration, "latency_mean": m["latency_mean"],
            "latency_first": m["latency_first"], "prefix_reused_share": m["prefix_reused_share"],
            "prompt_token_count": int(cond.token_count), "student_model": model, "note": cond.note or None}


def run(ctx) -> dict[str, Any]:
    """Score every available condition on the test split, store predictions and metrics,
    write the report. Returns the per-condition metrics, skipped conditions and report paths."""
    from pyspark.sql import functions as F

    from pld_spark import metrics as M
    from pld_spark.pipeline.ingest import current_examples
    from pld_spark.engines.handoff import RESULT_DDL
    from pld_spark.pipeline.score import RESULT_COLUMNS
    from pld_spark.report import write_report
    from pld_spark.storage.catalog import EVALUATIONS

    cfg = ctx.cfg
    t0 = time.perf_counter()
    labels = cfg.task.label_names
    test = (current_examples(ctx, "test").select(F.col("example_id").alias("doc_id"), "input_text",
                                                 F.col("label").alias("gold"))
            .orderBy("doc_id").toPandas())
    train = None
    if "few_shot" in cfg.evaluate.conditions:
        train = current_examples(ctx, "train").select("example_id", "input_text", "label").toPandas()
    client = ctx.student
    conds, skipped = build_conditions(ctx, client.count_tokens, train)
    for name, why in skipped.items():
        log.warning("evaluate: skipping %s: %s", name, why)
    store_prompts(ctx, conds)
    engine = cfg.evaluate.engine
    results: dict[str, dict[str, Any]] = {}
    eval_rows = []
    pred_frames = []
    model = getattr(client, "model_id", cfg.student.model)
    with contextlib.ExitStack() as stack:
        if engine == "ray" and any(c.name != "cot" for c in conds):
            from pld_spark.engines.ray import ray_runtime

            stack.enter_context(ray_runtime(cfg.score.ray))
        for cond in conds:
            t1 = time.perf_counter()
            res, used_engine = _score_condition(ctx, cond, test, engine, client)
            wall = time.perf_counter() - t1
            pred_frames.append(res.assign(prompt_version=cond.prompt_version, condition=cond.name))
            joined = res.merge(test[["doc_id", "gold"]], on="doc_id", how="right")
            m = M.condition_metrics(joined, labels, n_resamples=cfg.evaluate.bootstrap, seed=cfg.evaluate.seed)
            cal = next((c for c in res["calibration"] if c), cfg.student.calibration) if len(res) else cfg.student.calibration
            results[cond.name] = {"condition": cond.name, "prompt_version": cond.prompt_version, "kind": cond.kind,
                                  "engine": used_engine, "calibration": cal, "prompt_token_count": cond.token_count,
                                  "note": cond.note, "wall_s": round(wall, 3), **m}
            eval_rows.append(_evaluation_row(ctx, cond, m, used_engine, cal, model))
            log.info("evaluate %s: macro-F1 %.3f [%.3f, %.3f], p50 %.3fs (%d rows, %.1fs)", cond.name, m["macro_f1"],
                     m["ci_low"], m["ci_high"], m["latency_p50"] or 0.0, m["n"], wall)
    if pred_frames:
        # One MERGE for all conditions (each Delta commit costs seconds; the split is small).
        import pandas as pd

        allp = pd.concat(pred_frames, ignore_index=True)
        spark_df = ctx.spark.createDataFrame(
            allp[list(RESULT_COLUMNS) + ["prompt_version", "condition"]],
            f"{RESULT_DDL}, prompt_version STRING, condition STRING")
        preds = (spark_df.withColumn("probabilities", F.from_json("probabilities_json", "map<string,double>"))
                 .drop("probabilities_json").withColumn("run_id", F.lit(ctx.run_id))
                 .withColumn("scored_at", F.current_timestamp()))
        ctx.store.merge("predictions", preds, update=True)
    if eval_rows:
        df = ctx.spark.createDataFrame([tuple(r[c] for c in EVALUATIONS.columns) for r in eval_rows], EVALUATIONS.ddl)
        ctx.store.merge("evaluations", df, update=True)
    ctx.collect_usage(client)
    out: dict[str, Any] = {
        "run_id": ctx.run_id, "conditions": results, "skipped": skipped, "engine": engine,
        "meta": {"task": cfg.task.name, "student": f"{getattr(client, 'backend', cfg.student.type)}:{model}",
                 "engine": engine, "calibration": cfg.student.calibration, "n_test": len(test), "labels": labels,
                 "bootstrap": cfg.evaluate.bootstrap, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    html_path, md_path = write_report(out, cfg.evaluate.report_dir)
    out["report_html"] = str(html_path.resolve())
    out["summary_md"] = str(md_path.resolve())
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    ctx.record.add_counts(STAGE, n_test=len(test), conditions=list(results), skipped=sorted(skipped),
                          macro_f1={k: round(v["macro_f1"], 4) for k, v in results.items()},
                          report=out["report_html"])
    return out


def summary_table(result: dict[str, Any]) -> str:
    """The printed summary: condition, prompt version, n, macro-F1 [95% CI], accuracy, latency
    p50/p95, prompt tokens per example, prefix reuse; skipped conditions below."""
    from pld_spark.report import SUMMARY_COLUMNS, summary_rows, text_table

    conds = list((result.get("conditions") or {}).values())
    lines = [text_table(SUMMARY_COLUMNS, summary_rows(conds))]
    for name, why in (result.get("skipped") or {}).items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)
