"""evaluate: every condition on the same fixed test split -> ``predictions``, ``evaluations``,
``prompt_calibrations`` and a report (HTML with plots + Markdown summary).

Conditions (``evaluate.conditions``, built by :mod:`pld_spark.prompts.conditions`): zero-shot
with label descriptions and with bare label names, few-shot (k = ``few_shot_k``, and k = the
number of rules of the PLD prompt), the PLD prompts after clustering, selection and the loop
(aliases ``clustered``, ``selected``, ``resolved``; ``--prompt-version V`` evaluates one prompt as
``pld`` instead), and optionally ``cot``. A PLD condition whose alias does not exist is skipped
with a note; baseline prompts are stored in ``prompts`` so every prediction's version resolves.

**Calibration is chosen on validation for every condition** (``student.calibration: auto``): each
prompt is scored on the val split first and gets its own calibration there
(:class:`pld_spark.validation.PromptJudge`, stored in ``prompt_calibrations``), then the test
split is scored with it. **Comparisons are paired**: the difference of macro-F1 between two
conditions on the same test rows, with a bootstrap CI (``paired`` in the result, the summary and
the report): the PLD prompt the run promoted (``distilled``; else the loop's ``resolved``, said so)
against the better zero-shot on validation, zero-shot with bare names, and few-shot; the loop's
prompt against the clustered one.

Scoring runs in-process (``evaluate.engine: local``) or through the Ray actor pool (``ray``),
with the same :func:`pld_spark.scoring.score_batch` as ``pld score``. Conditions run one after
another, so each condition's latency includes its own prompt prefix reuse; the first request is
reported apart (``latency_first``); cached label scores have no latency. Two conditions with the
same prompt version are scored once and the second is reported as reused (:func:`reuse_plan`).

Layout: condition building (pure), scoring (the only model I/O), :func:`transform` (pure:
metrics and ``evaluations`` rows), :func:`paired_stats` (pure), and a short :func:`run`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from pld_spark.prompts.conditions import (Condition, baseline_versions, build_conditions, resolve_pld, shown_examples,
                                          reuse_plan, reused_result)

log = logging.getLogger(__name__)

STAGE = "evaluate"
COT_TEMPLATE_VERSION = "eval-cot-v1"
#: (key, condition a, condition b) of the paired comparisons, a - b; "pld" and "zero_shot_best" are resolved per run
PAIRS = (("pld_vs_zero_shot", "pld", "zero_shot_best"), ("pld_vs_zero_shot_bare", "pld", "zero_shot_bare"),
         ("pld_vs_zero_shot_desc", "pld", "zero_shot"), ("pld_vs_few_shot", "pld", "few_shot"),
         ("pld_vs_few_shot_rules", "pld", "few_shot_rules"), ("resolved_vs_cluster", "pld_resolved", "pld_cluster"),
         ("selected_vs_cluster", "pld_selected", "pld_cluster"))


# ----------------------------------------------------------------------------- scoring
def cot_batch(client, batch, system: str, labels: Sequence[str], calibration: str | None, max_tokens: int,
              run_id: str, label_system: str | None = None):
    """Chain-of-thought scoring of one batch: a short generated reasoning per input (with
    ``system``), then the label by constrained label scoring of input + reasoning with
    ``label_system`` (default ``system``), so the label is always in the set.

    Latency and tokens add both calls. The chat's template version carries the run id, so
    the response cache never serves a reasoning measured in another run."""
    from pld_spark.llm.types import ChatRequest
    from pld_spark.scoring import result_frame, score_batch

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


def _score_condition(ctx, cond: Condition, inputs, engine: str, client, calibration):
    """Result frame (pandas, :data:`pld_spark.scoring.RESULT_COLUMNS`) of one condition over ``inputs``."""
    from pld_spark.scoring import StudentScorer, score_on_ray, score_pandas

    cfg = ctx.cfg
    labels = cfg.task.label_names
    if cond.name == "cot":
        import pandas as pd

        size = cfg.evaluate.batch_size or len(inputs)
        parts = [cot_batch(client, inputs.iloc[i:i + size], cond.text, labels, calibration,
                           cfg.evaluate.cot_max_tokens, ctx.run_id, cond.label_system)
                 for i in range(0, len(inputs), size)]
        return pd.concat(parts, ignore_index=True), "local"
    if engine == "ray":
        df = ctx.spark.createDataFrame(inputs[["doc_id", "input_text"]], "doc_id STRING, input_text STRING")
        results, _stats, h = score_on_ray(ctx, df, len(inputs), cond.text, calibration, f"evaluate-{cond.name}")
        pdf = results.toPandas()
        h.cleanup()
        return pdf, "ray"
    scorer = StudentScorer(system=cond.text, labels=labels, calibration=calibration, client=client)
    return score_pandas(scorer, inputs, cfg.evaluate.batch_size), "local"


def _evaluation_row(run_id: str, task: str, cond: Condition, m: dict[str, Any], engine: str, calibration: str,
                    model: str, note: str | None = None) -> dict:
    return {"run_id": run_id, "task": task, "condition": cond.name,
            "prompt_version": cond.prompt_version, "n": m["n"], "macro_f1": m["macro_f1"], "ci_low": m["ci_low"],
            "ci_high": m["ci_high"], "accuracy": m["accuracy"], "per_class": json.dumps(m["per_class"], sort_keys=True),
            "confusion": json.dumps(m["confusion"]), "latency_p50": m["latency_p50"], "latency_p95": m["latency_p95"],
            "prompt_tokens_mean": m["prompt_tokens_mean"], "output_tokens_mean": m["output_tokens_mean"],
            "prefix_hit_rate": m["prefix_hit_rate"], "errors": m["errors"], "created_at": datetime.now(timezone.utc),
            "engine": engine, "calibration": calibration, "latency_mean": m["latency_mean"],
            "latency_first": m["latency_first"], "prefix_reused_share": m["prefix_reused_share"],
            "prompt_token_count": int(cond.token_count), "student_model": model, "note": (note or cond.note) or None,
            "val_macro_f1": m.get("val_macro_f1")}


@dataclass
class Scored:
    """One condition's scored test rows (pandas, RESULT_COLUMNS), where and how long, and its
    calibration with its macro-F1 on validation."""

    frame: Any
    engine: str
    wall_s: float
    calibration: str = "none"
    val_macro_f1: float | None = None


def transform(conds: Sequence[Condition], scored: Mapping[str, Scored], test, labels: Sequence[str], ecfg, *,
              run_id: str, task: str, model: str) -> tuple[dict[str, dict], list[dict], dict[str, list]]:
    """Metrics per condition, the ``evaluations`` rows, and each condition's test predictions in
    ``test`` order (None where the student failed), from the scored frames. Pure.

    ``test``: pandas frame with doc_id and gold; a condition missing from ``scored`` reuses the
    condition :func:`reuse_plan` names."""
    from pld_spark import metrics as M

    results: dict[str, dict[str, Any]] = {}
    rows = []
    preds: dict[str, list] = {}
    reuse = reuse_plan(conds)
    for cond in conds:
        if cond.name in reuse:
            src = results[reuse[cond.name]]
            preds[cond.name] = preds[reuse[cond.name]]
            results[cond.name] = reused_result(src, cond)
            rows.append(_evaluation_row(run_id, task, cond, results[cond.name], src["engine"], src["calibration"],
                                        model, note=results[cond.name]["note"]))
            continue
        sc = scored[cond.name]
        joined = test[["doc_id", "gold"]].merge(sc.frame, on="doc_id", how="left")  # test order
        preds[cond.name] = [None if isinstance(e, str) and e else lab for lab, e in zip(joined["label"], joined["error"])]
        m = {**M.condition_metrics(joined, labels, n_resamples=ecfg.bootstrap, seed=ecfg.seed),
             "val_macro_f1": sc.val_macro_f1}
        results[cond.name] = {"condition": cond.name, "prompt_version": cond.prompt_version, "kind": cond.kind,
                              "engine": sc.engine, "calibration": sc.calibration, "prompt_token_count": cond.token_count,
                              "note": cond.note, "wall_s": round(sc.wall_s, 3), **m}
        rows.append(_evaluation_row(run_id, task, cond, m, sc.engine, sc.calibration, model))
    return results, rows, preds


def paired_stats(preds: Mapping[str, Sequence], gold: Sequence[str], labels: Sequence[str], *, pld: str | None,
                 zero_shot_best: str | None, n_resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """The paired comparisons of :data:`PAIRS` that this run has both sides of. Pure.

    ``preds``: condition -> predicted labels on the test rows (in ``gold`` order; errors None)."""
    from pld_spark.metrics import mcnemar, paired_bootstrap

    alias = {"pld": pld, "zero_shot_best": zero_shot_best}
    out, seen = {}, set()
    for key, a, b in PAIRS:
        a, b = alias.get(a, a), alias.get(b, b)
        if a in preds and b in preds and a != b and (a, b) not in seen:
            seen.add((a, b))
            st = paired_bootstrap(gold, preds[a], preds[b], labels, n_resamples=n_resamples, seed=seed)
            out[key] = {"a": a, "b": b, **{k: round(v, 4) for k, v in st.items() if k != "n"}, "n": st["n"],
                        "mcnemar_p": round(mcnemar(gold, preds[a], preds[b])["p_value"], 4)}
    return out


def _split(ctx, split: str, *cols):
    """The current examples of ``split`` as pandas, ordered by example id."""
    from pld_spark.storage.readers import current_examples

    return current_examples(ctx, split).orderBy("example_id").select(*cols).toPandas()


def _calibrate(ctx, judge, versions, conds: Sequence[Condition], val: list[dict]) -> dict[str, Any]:
    """Each scored condition's calibration: chosen on val (auto, stored per prompt version and
    student) or the configured method; condition -> (calibration, val macro-F1)."""
    out: dict[str, Any] = {}
    student_id = f"{ctx.student.backend}:{ctx.student.model_id}"
    for cond in conds:
        if cond.name == "cot" or cond.name in reuse_plan(conds):
            out[cond.name] = (ctx.cfg.student.calibration.replace("auto", "batch"), None)
            continue
        s = judge.fit(cond.text, val)
        if not isinstance(s.calibration, str):
            versions.set_calibration(cond.prompt_version, student_id, s.calibration, ctx.run_id)
        out[cond.name] = (s.calibration, s.f1)
    return out


def run(ctx, prompt_version: str | None = None) -> dict[str, Any]:
    """Score every available condition on val (calibration) and test, store predictions, metrics and
    paired comparisons, write the report. ``prompt_version``: evaluate that version/alias as ``pld``."""
    from pyspark.sql import functions as F

    from pld_spark import scoring
    from pld_spark.prompts.versions import ALIAS_DISTILLED, PromptVersions
    from pld_spark.report import write_report
    from pld_spark.storage.catalog import EVALUATIONS
    from pld_spark.storage.readers import example_rows
    from pld_spark.storage.writers import frame
    from pld_spark.validation import PromptJudge

    cfg, t0 = ctx.cfg, time.perf_counter()
    if cfg.evaluate.engine == "ray":  # Ray on Spark under Spark Connect: refused before any work
        from pld_spark.engines.ray import check_spark_session

        check_spark_session(cfg.score.ray, ctx.spark)
    versions = PromptVersions(ctx.store, cfg.task.name)
    pld = resolve_pld(versions, prompt_version)  # an unknown --prompt-version fails before anything is loaded
    test = _split(ctx, "test", F.col("example_id").alias("doc_id"), "input_text", F.col("label").alias("gold"))
    train = _split(ctx, "train", "example_id", "input_text", "label")
    client = ctx.student
    promoted = versions.aliases().get(ALIAS_DISTILLED)
    head = next((r for r in ([pld.get("pld")] + [pld.get(n) for n in ("pld_resolved", "pld_selected", "pld_cluster")])
                 if r is not None and not isinstance(r, str)), None)
    n_rules = shown_examples(versions.get(head.version), cfg.consolidate.exemplars) if head else 0
    conds, skipped = build_conditions(cfg, client.count_tokens, train, pld, n_rules=n_rules)
    for name, why in skipped.items():
        log.warning("evaluate: skipping %s: %s", name, why)
    versions.write(baseline_versions(cfg.task.name, conds, ctx.run_id))
    judge = PromptJudge.from_ctx(ctx, train.to_dict("records"))
    cals = _calibrate(ctx, judge, versions, conds, example_rows(ctx, "val"))
    scored: dict[str, Scored] = {}
    with contextlib.ExitStack() as stack:
        if cfg.evaluate.engine == "ray" and any(c.name != "cot" for c in conds):
            from pld_spark.engines.ray import ray_runtime

            stack.enter_context(ray_runtime(cfg.score.ray, ctx.spark))
        for cond in (c for c in conds if c.name not in reuse_plan(conds)):
            t1, (cal, val_f1) = time.perf_counter(), cals[cond.name]
            pdf, engine = _score_condition(ctx, cond, test, cfg.evaluate.engine, client, cal)
            scored[cond.name] = Scored(pdf.assign(prompt_version=cond.prompt_version, condition=cond.name), engine,
                                       time.perf_counter() - t1, getattr(cal, "method", cal), val_f1)
    results, eval_rows, preds = transform(conds, scored, test, cfg.task.label_names, cfg.evaluate, run_id=ctx.run_id,
                                          task=cfg.task.name, model=client.model_id)
    _store(ctx, scored, eval_rows, scoring, frame, EVALUATIONS)
    out = _result(ctx, conds, results, preds, skipped, test, promoted)
    html_path, md_path = write_report(out, cfg.evaluate.report_dir)
    out.update(report_html=str(html_path.resolve()), summary_md=str(md_path.resolve()),
               wall_s=round(time.perf_counter() - t0, 3))
    ctx.record.add_counts(STAGE, n_test=len(test), conditions=list(results), skipped=sorted(skipped),
                          macro_f1={k: round(v["macro_f1"], 4) for k, v in results.items()}, report=out["report_html"],
                          paired={k: v["delta"] for k, v in out["paired"].items()})
    return out


def _store(ctx, scored, eval_rows, scoring, frame, evaluations) -> None:
    if scored:  # one MERGE for all conditions (each Delta commit costs seconds; the split is small)
        import pandas as pd

        allp = pd.concat([s.frame for s in scored.values()], ignore_index=True)
        ctx.commit_predictions(scoring.to_predictions(scoring.results_to_spark(
            ctx.spark, allp, [("prompt_version", "STRING"), ("condition", "STRING")]), ctx.run_id))
    if eval_rows:
        ctx.store.merge("evaluations", frame(ctx.spark, evaluations, eval_rows), update=True)
    ctx.collect_usage(ctx.student, STAGE)


def pld_side(results: dict, conds, promoted: str | None) -> str | None:
    """The PLD side of the paired comparisons: condition ``pld`` (an explicit prompt version), else the
    condition of the prompt the run promoted (``distilled``), else the furthest PLD stage evaluated
    (``pld_resolved``, ``pld_selected``, ``pld_cluster``): a run that promoted nothing still shows how
    its prompt compares. Pure."""
    if "pld" in results:
        return "pld"
    return (next((c.name for c in conds if c.prompt_version == promoted and c.name.startswith("pld")), None)
            or next((n for n in ("pld_resolved", "pld_selected", "pld_cluster") if n in results), None))


def _result(ctx, conds, results, preds, skipped, test, promoted: str | None) -> dict[str, Any]:
    """The evaluation result (report input): conditions, the paired comparisons (:func:`pld_side`) and
    meta (``meta.pld_promoted`` says whether the PLD side is the promoted prompt)."""
    cfg, client = ctx.cfg, ctx.student
    pld_name = pld_side(results, conds, promoted)
    zs = [n for n in ("zero_shot", "zero_shot_bare") if n in results]
    zs_best = max(zs, key=lambda n: (results[n].get("val_macro_f1") or 0.0, n)) if zs else None
    paired = paired_stats(preds, list(test["gold"]), cfg.task.label_names, pld=pld_name, zero_shot_best=zs_best,
                          n_resamples=cfg.evaluate.bootstrap, seed=cfg.evaluate.seed)
    return {"run_id": ctx.run_id, "conditions": results, "skipped": skipped, "engine": cfg.evaluate.engine,
            "paired": paired, "meta": {
                "task": cfg.task.name, "student": f"{client.backend}:{client.model_id}", "engine": cfg.evaluate.engine,
                "calibration": cfg.student.calibration, "n_test": len(test), "labels": cfg.task.label_names,
                "bootstrap": cfg.evaluate.bootstrap, "pld_condition": pld_name, "zero_shot_best": zs_best,
                "promoted_version": promoted, "pld_promoted": bool(promoted) and results.get(pld_name or "", {}).get(
                    "prompt_version") == promoted,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}}


def summary_table(result: dict[str, Any]) -> str:
    """The printed summary: condition, prompt version, n, macro-F1 [95% CI], val macro-F1, calibration,
    accuracy, latency p50/p95, prompt tokens per example, prefix reuse; the paired comparisons;
    reused and skipped conditions."""
    from pld_spark.report import (PAIRED_COLUMNS, SUMMARY_COLUMNS, paired_rows, pld_note, reuse_notes, summary_rows,
                                  text_table)

    conds = list((result.get("conditions") or {}).values())
    lines = [text_table(SUMMARY_COLUMNS, summary_rows(conds)), *reuse_notes(conds)]
    for name, why in (result.get("skipped") or {}).items():
        lines.append(f"skipped {name}: {why}")
    if result.get("paired"):
        lines += ["", f"Paired on the same test rows ({pld_note(result.get('meta') or {})}):",
                  text_table(PAIRED_COLUMNS, paired_rows(result["paired"]))]
    return "\n".join(lines)
