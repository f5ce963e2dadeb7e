"""``pld compare A B``: two prompt versions on the same labelled rows -> ``comparisons`` + a report.

Rows: the current test split (``--split val|test``) or any labelled table or path (``--input``: a
lakehouse table name, a Delta or Parquet folder, a ``.parquet`` file or a catalog table, with
``example_id`` or ``doc_id``, ``input_text`` or ``text``, and ``label``).

Predictions: each prompt's stored ``predictions`` on those rows (keyed doc_id and prompt_version;
any condition, an error-free row first, then the latest) are used; rows a prompt has no error-free
prediction for are scored with the student in-process (:class:`pld_spark.scoring.StudentScorer`,
with the prompt's calibration chosen on validation for this student, else ``student.calibration``)
and stored with condition ``compare``, so a second comparison pays nothing.

Statistics (:func:`pld_spark.monitor.stats.compare_stats`): macro-F1 of each, the paired bootstrap
CI of A - B, per-label F1, McNemar's test and the rows where the two disagree. The result is one
``comparisons`` row and ``<evaluate.report_dir>/compare-<id>/report.html`` + ``report.md``.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pld_spark.errors import ContractError, DataError

log = logging.getLogger(__name__)

STAGE = "compare"
CONDITION = "compare"


# ----------------------------------------------------------------------------- rows
def _read_ref(ctx, ref: str):
    """A lakehouse table name, a Delta/Parquet folder or .parquet file, or a catalog table."""
    from pld_spark.storage.catalog import TABLES

    if ref in TABLES:
        if not ctx.store.exists(ref):
            raise DataError(f"compare input: lakehouse table '{ref}' does not exist yet")
        return ctx.store.read(ref), f"table '{ref}'"
    p = Path(ref)
    if p.is_dir():
        fmt = "delta" if (p / "_delta_log").exists() else "parquet"
        return ctx.spark.read.format(fmt).load(str(p)), ref
    if p.is_file() and p.suffix.lower() == ".parquet":
        return ctx.spark.read.parquet(str(p)), ref
    if "://" in ref or ref.startswith("dbfs:"):
        return ctx.spark.read.format("delta").load(ref), ref
    try:
        exists = ctx.spark.catalog.tableExists(ref)
    except Exception:  # noqa: BLE001 - an unparsable name is simply not a table
        exists = False
    if not exists:
        raise DataError(f"compare input '{ref}': not a lakehouse table, a Delta or Parquet folder, a .parquet file "
                        f"or a catalog table")
    return ctx.spark.table(ref), f"table '{ref}'"


def load_rows(ctx, split: str = "test", input_ref: str | None = None):
    """The labelled rows to compare on, as pandas ``doc_id, input_text, label`` sorted by doc_id,
    and a description of where they came from."""
    from pyspark.sql import functions as F

    from pld_spark.storage.readers import current_examples

    if input_ref is None:
        df, source = current_examples(ctx, split), f"split '{split}'"
    else:
        df, source = _read_ref(ctx, input_ref)
    cols = df.columns
    # the examples shape (example_id; its doc_id is the source document, shared by rows) first, as score does
    id_col = next((c for c in ("example_id", "doc_id") if c in cols), None)
    text_col = next((c for c in ("input_text", "text") if c in cols), None)
    if id_col is None or text_col is None or "label" not in cols:
        raise ContractError(f"stage 'compare': input {source} needs columns doc_id (or example_id), input_text (or "
                            f"text) and label; it has {cols}")
    pdf = (df.select(F.col(id_col).cast("string").alias("doc_id"), F.col(text_col).cast("string").alias("input_text"),
                     F.col("label").cast("string").alias("label")).toPandas())
    if pdf["doc_id"].isna().any() or (pdf["doc_id"].str.strip() == "").any():
        raise DataError(f"compare input {source}: some rows have an empty {id_col}")
    dups = pdf["doc_id"][pdf["doc_id"].duplicated()].unique().tolist()
    if dups:
        raise DataError(f"compare input {source}: duplicate {id_col} values, e.g. {dups[:5]}")
    if not len(pdf):
        raise DataError(f"compare input {source}: no rows")
    return pdf.sort_values("doc_id", ignore_index=True), source


# ----------------------------------------------------------------------------- predictions
def stored_labels(ctx, version: str, ids_df) -> dict[str, str]:
    """doc_id -> stored label of ``version`` (any condition; error-free rows only, the latest first)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("doc_id").orderBy(F.col("scored_at").desc(), F.col("condition"))
    rows = (ctx.store.read("predictions").where((F.col("prompt_version") == version) & F.col("error").isNull())
            .join(ids_df, "doc_id", "left_semi").withColumn("_n", F.row_number().over(w)).where("_n = 1")
            .select("doc_id", "label").collect())
    return {r.doc_id: r.label for r in rows}


def _calibration(ctx, versions, version: str):
    """The prompt's calibration chosen on validation for this student, else the configured method."""
    student_id = f"{ctx.student.backend}:{ctx.student.model_id}"
    cal = versions.calibration(version, student_id)
    if cal is not None:
        return cal
    method = ctx.cfg.student.calibration
    if method == "auto":
        log.warning("compare: no calibration chosen on validation for %s and %s; centring over the scored rows "
                    "(run `pld evaluate --prompt-version %s` to choose one)", version, student_id, version)
        return "batch"
    return method


def score_missing(ctx, versions, todo: dict[str, tuple[Any, Any]]) -> dict[str, dict[str, str | None]]:
    """Score rows with the student in-process and store them (condition ``compare``, one MERGE).

    ``todo``: version -> (PromptRef, pandas rows with doc_id and input_text). Returns version ->
    doc_id -> label (None for an error row)."""
    import pandas as pd

    from pld_spark import scoring

    labels = ctx.cfg.task.label_names
    frames, out = [], {}
    for version, (ref, rows) in todo.items():
        log.info("compare: scoring %d rows with %s (no stored prediction)", len(rows), version)
        scorer = scoring.StudentScorer(system=ref.text, labels=labels, calibration=_calibration(ctx, versions, version),
                                       client=ctx.student)
        res = scoring.score_pandas(scorer, rows[["doc_id", "input_text"]], ctx.cfg.evaluate.batch_size)
        out[version] = {d: (lab if not err else None) for d, lab, err in zip(res["doc_id"], res["label"], res["error"])}
        frames.append(res.assign(prompt_version=version))
    if frames:
        allp = pd.concat(frames, ignore_index=True)
        results = scoring.results_to_spark(ctx.spark, allp, [("prompt_version", "STRING")])
        ctx.commit_predictions(scoring.to_predictions(results, ctx.run_id, None, CONDITION))
        ctx.collect_usage(ctx.student, STAGE)
    return out


# ----------------------------------------------------------------------------- the command
def comparison_id(run_id: str, version_a: str, version_b: str, source: str) -> str:
    return "cmp-" + hashlib.sha256(json.dumps([run_id, version_a, version_b, source]).encode()).hexdigest()[:12]


def run(ctx, ref_a: str, ref_b: str, split: str = "test", input_ref: str | None = None,
        top: int = 20) -> dict[str, Any]:
    """Compare prompt ``ref_a`` with ``ref_b`` (versions or aliases) on the same rows; store the
    ``comparisons`` row and the report; return the comparison (see the module docstring)."""
    from pld_spark.monitor.compare_report import write_report
    from pld_spark.monitor.stats import compare_stats
    from pld_spark.prompts.versions import PromptVersions
    from pld_spark.storage.catalog import COMPARISONS
    from pld_spark.storage.writers import frame

    cfg = ctx.cfg
    versions = PromptVersions(ctx.store, cfg.task.name)
    refs = {"a": versions.resolve(ref_a), "b": versions.resolve(ref_b)}
    rows, source = load_rows(ctx, split, input_ref)
    ids_df = ctx.spark.createDataFrame([(d,) for d in rows["doc_id"]], "doc_id STRING")
    preds = {ref.version: stored_labels(ctx, ref.version, ids_df) for ref in refs.values()}
    todo = {v: (next(r for r in refs.values() if r.version == v), rows[~rows["doc_id"].isin(list(got))])
            for v, got in preds.items() if len(got) < len(rows)}
    scored = {v: len(t[1]) for v, t in todo.items()}
    for v, got in score_missing(ctx, versions, todo).items():
        preds[v].update(got)
    ids = list(rows["doc_id"])
    st = compare_stats(list(rows["label"]), [preds[refs["a"].version].get(d) for d in ids],
                       [preds[refs["b"].version].get(d) for d in ids], cfg.task.label_names, doc_ids=ids,
                       texts=list(rows["input_text"]), top=top, n_resamples=cfg.evaluate.bootstrap,
                       seed=cfg.evaluate.seed)
    cid = comparison_id(ctx.run_id, refs["a"].version, refs["b"].version, source)
    now = datetime.now(timezone.utc)
    result = {"comparison_id": cid, "run_id": ctx.run_id, "task": cfg.task.name, "version_a": refs["a"].version,
              "version_b": refs["b"].version, "alias_a": refs["a"].alias, "alias_b": refs["b"].alias,
              "split": split if input_ref is None else None, "source": source, "labels": cfg.task.label_names,
              "scored": {"a": scored.get(refs["a"].version, 0), "b": scored.get(refs["b"].version, 0)},
              "bootstrap": cfg.evaluate.bootstrap, "created_at": now.isoformat(timespec="seconds"), **st}
    html_path, md_path = write_report(result, Path(cfg.evaluate.report_dir) / f"compare-{cid}")
    result.update(report_html=str(html_path.resolve()), report_md=str(md_path.resolve()))
    row = {k: result[k] for k in ("comparison_id", "run_id", "task", "version_a", "version_b", "split", "source", "n",
                                  "macro_f1_a", "macro_f1_b", "delta", "ci_low", "ci_high", "p_a_better")}
    row.update(mcnemar_p=st["mcnemar"]["p_value"], a_only=st["mcnemar"]["a_only"], b_only=st["mcnemar"]["b_only"],
               per_label=json.dumps(st["per_label"], sort_keys=True),
               disagreements=json.dumps(st["disagreements"], sort_keys=True),
               report_path=result["report_html"], created_at=now)
    ctx.store.merge("comparisons", frame(ctx.spark, COMPARISONS, [row]), update=True)
    ctx.record.add_counts(STAGE, comparison_id=cid, n=st["n"], scored=result["scored"], delta=round(st["delta"], 4))
    return result
