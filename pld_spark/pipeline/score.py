"""score: documents + a prompt version -> ``predictions`` (bulk scoring with the student).

Contract: input rows ``(doc_id, input_text)`` (from a lakehouse table, a Delta/Parquet path,
a JSONL/CSV file, or by default the current test split); output rows of ``predictions`` with
``condition = 'score'``, keyed ``(doc_id, prompt_version, condition)``.

Flow: Spark selects the rows, drops documents already scored without error for this prompt
version (a re-run or a resumed run pays nothing twice), and hands the rest to the student in
chunks of ``score.chunk_rows``. Engine ``ray``: each chunk goes through a Parquet folder to a
Ray Data actor pool (``map_batches`` with :class:`StudentScorer`: one model per actor), and
back to Spark; engine ``local``: the same :class:`StudentScorer` runs in-process. Every chunk
is MERGEd into Delta before the next starts. The label is always one of the task's labels
(or null with an ``error``); per-label probabilities, the calibration used, latency, tokens
and the reused prefix tokens are stored per row.

The scoring itself (result schema, batch function, actor class, Ray chunk) is
:mod:`pld_spark.scoring`, shared with ``evaluate``; the prompt is looked up through
:mod:`pld_spark.prompts.versions` (default: ``live``, else ``distilled``, else ``clustered``).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from pld_spark.errors import ContractError, DataError, StageError

log = logging.getLogger(__name__)

STAGE = "score"
CONDITION = "score"


# ----------------------------------------------------------------------------- inputs
def _read_path(spark, ref: str):
    p = Path(ref)
    remote = "://" in ref or ref.startswith("dbfs:")
    if not remote and not p.exists():
        return None
    suffix = p.suffix.lower()
    if not remote and p.is_dir():
        if (p / "_delta_log").exists():
            return spark.read.format("delta").load(str(p))
        return spark.read.parquet(str(p))
    if suffix in (".jsonl", ".json", ".ndjson"):
        return spark.read.json(ref)
    if suffix == ".csv":
        return (spark.read.option("header", True).option("multiLine", True).option("escape", '"')
                .csv(ref))
    if suffix == ".parquet":
        return spark.read.parquet(ref)
    if remote:
        try:
            return spark.read.format("delta").load(ref)
        except Exception as e:  # noqa: BLE001 - rethrown as a DataError naming the path
            raise DataError(f"score input {ref}: not a readable Delta table ({type(e).__name__})") from e
    raise DataError(f"score input {ref}: unsupported file type '{suffix}'; use a table name, a Delta or Parquet "
                    f"folder, or a .parquet/.jsonl/.json/.csv file")


def normalize_input(df, source: str):
    """``(doc_id, input_text)`` from an input frame.

    Accepts the ``examples`` table shape (``example_id`` + ``input_text``), or ``doc_id`` with
    ``input_text`` or ``text``. Raises ContractError naming the source and its columns."""
    from pyspark.sql import functions as F

    cols = df.columns
    if "example_id" in cols and "input_text" in cols:
        id_col, text_col = "example_id", "input_text"
    elif "doc_id" in cols and ("input_text" in cols or "text" in cols):
        id_col, text_col = "doc_id", "input_text" if "input_text" in cols else "text"
    else:
        raise ContractError(f"stage 'score': input {source} needs columns doc_id and text (or input_text), or "
                            f"example_id and input_text; it has {cols}")
    return df.select(F.col(id_col).cast("string").alias("doc_id"), F.col(text_col).cast("string").alias("input_text"))


def check_ids(df, source: str) -> int:
    """Every document needs a non-empty, unique doc_id (it is the MERGE key). Returns the
    row count (one Spark job; a second one only to name duplicates)."""
    from pyspark.sql import functions as F

    agg = df.agg(F.count("*").alias("n"), F.countDistinct("doc_id").alias("d"),
                 F.sum(F.when(F.col("doc_id").isNull() | (F.trim("doc_id") == ""), 1).otherwise(0)).alias("m")).first()
    if agg.m:
        raise DataError(f"score input {source}: {agg.m} rows have an empty doc_id (column doc_id/example_id)")
    if agg.d != agg.n:
        dups = df.groupBy("doc_id").count().where(F.col("count") > 1).limit(5).collect()
        raise DataError(f"score input {source}: duplicate doc_id values, e.g. {[r.doc_id for r in dups]}")
    return int(agg.n)


def load_input(ctx, input_ref: str | None = None, with_count: bool = False):
    """The documents to score as ``(doc_id, input_text)`` (and their count if ``with_count``);
    see the module docstring."""
    from pld_spark.storage.catalog import TABLES
    from pld_spark.storage.readers import current_examples

    if input_ref is None:
        df, source = current_examples(ctx, "test"), "the current test split"
    elif input_ref in TABLES:
        if not ctx.store.exists(input_ref):
            raise DataError(f"score input: lakehouse table '{input_ref}' does not exist yet")
        df, source = ctx.store.read(input_ref), f"table '{input_ref}'"
    else:
        df = _read_path(ctx.spark, input_ref)
        source = input_ref
        if df is None:
            try:
                exists = ctx.spark.catalog.tableExists(input_ref)
            except Exception:  # noqa: BLE001 - an unparsable name is simply not a table
                exists = False
            if not exists:
                raise DataError(f"score input '{input_ref}': no such file or folder, and no table of that name")
            df, source = ctx.spark.table(input_ref), f"table '{input_ref}'"
    out = normalize_input(df, source)
    n = check_ids(out, source)
    return (out, n) if with_count else out


def transform(inputs, done):
    """Rows of ``inputs`` whose doc_id is not in ``done`` (the already-scored doc ids)."""
    return inputs.join(done.select("doc_id").distinct(), "doc_id", "left_anti")


def _chunks(todo, n_todo: int, chunk_rows: int):
    from pyspark.sql import functions as F

    n = max(1, math.ceil(n_todo / chunk_rows))
    return [(todo, n_todo)] if n == 1 else [
        (todo.where(F.pmod(F.xxhash64("doc_id"), F.lit(n)) == i), None) for i in range(n)]


def run(ctx, prompt_version: str | None = None, input_ref: str | None = None) -> dict[str, Any]:
    """Score documents with a prompt version and MERGE the results into ``predictions``."""
    from pyspark.sql import functions as F

    from pld_spark import scoring
    from pld_spark.prompts.versions import PromptVersions
    from pld_spark.storage.readers import scored_doc_ids

    cfg = ctx.cfg
    t0 = time.perf_counter()
    if cfg.score.engine == "ray":  # Ray on Spark under Spark Connect: refused before any work
        from pld_spark.engines.ray import check_spark_session

        check_spark_session(cfg.score.ray, ctx.spark)
    versions = PromptVersions(ctx.store, cfg.task.name)
    prompt = versions.resolve(prompt_version)
    calibration = cfg.student.calibration
    if calibration == "auto":  # the calibration chosen for this prompt and student on validation
        calibration = versions.calibration(prompt.version, f"{ctx.student.backend}:{ctx.student.model_id}") or "batch"
        if calibration == "batch":
            log.warning("score: no calibration chosen on validation for %s and this student; centring each batch "
                        "(run `pld evaluate --prompt-version %s` to choose one)", prompt.version, prompt.version)
    inputs, n_input = load_input(ctx, input_ref, with_count=True)
    todo = transform(inputs, scored_doc_ids(ctx.store, prompt.version, CONDITION)).cache()
    # Empty inputs are stored as error rows without a model call; they are bad input, not
    # model failures, so they do not count against the error budget.
    agg = todo.agg(F.count("*").alias("n"), F.coalesce(F.sum(F.when(
        F.col("input_text").isNull() | (F.trim("input_text") == ""), 1).otherwise(0)), F.lit(0)).alias("e")).first()
    n_todo, n_empty = int(agg.n), int(agg.e)
    engine = cfg.score.engine
    counts: dict[str, Any] = {"prompt_version": prompt.version, "alias": prompt.alias, "engine": engine,
                              "calibration": getattr(calibration, "method", calibration),
                              "input_rows": n_input, "already_scored": n_input - n_todo, "scored": 0, "errors": 0,
                              "empty_inputs": n_empty, "scoring_s": 0.0}
    log.info("score: %d input rows, %d already scored for %s, %d to score (%s engine)", n_input,
             n_input - n_todo, prompt.version, n_todo, engine)
    ray_stats: list[dict[str, Any]] = []

    def store(results) -> tuple[int, int]:
        preds = scoring.to_predictions(results, ctx.run_id, prompt.version, CONDITION).cache()
        try:
            ctx.commit_predictions(preds)  # the answers behind this chunk, before the chunk itself
            a = preds.agg(F.count("*").alias("n"), F.count("error").alias("e"),
                          F.coalesce(F.sum("tokens_in"), F.lit(0)).alias("tin"),
                          F.coalesce(F.sum("tokens_out"), F.lit(0)).alias("tout")).first()
        finally:
            preds.unpersist()
        if engine == "ray":  # the actors' clients are out of reach: count what the rows say they spent
            ctx.record.add_usage(STAGE, int(a.tin), int(a.tout), int(a.n), ctx.student.cost(a.tin, a.tout),
                                 role="student")
        counts["scored"] += int(a.n)
        counts["errors"] += int(a.e)
        return int(a.n), int(a.e)

    if n_todo and engine == "ray":
        from pld_spark.engines.ray import ray_runtime

        with ray_runtime(cfg.score.ray, ctx.spark) as rt:
            counts["ray_mode"] = rt["mode"]
            for i, (chunk, n) in enumerate(_chunks(todo, n_todo, cfg.score.chunk_rows)):
                n = n if n is not None else chunk.count()
                if n == 0:
                    continue
                t1 = time.perf_counter()
                try:
                    results, stats, h = scoring.score_on_ray(ctx, chunk, n, prompt.text, calibration,
                                                             f"score-{prompt.version}-{i}")
                except Exception as e:  # noqa: BLE001 - Ray wraps actor failures in its own classes
                    raise StageError(f"score: the Ray actor pool failed on chunk {i} ({n} rows): {type(e).__name__}: "
                                     f"{str(e)[:1500]}; chunks stored before this one are kept, a re-run resumes"
                                     ) from e
                counts["scoring_s"] += time.perf_counter() - t1
                ray_stats.append(stats)
                got, _ = store(results)
                h.cleanup()
                if got != n:
                    raise StageError(f"score: Ray returned {got} rows for {n} inputs in chunk {i}")
    elif n_todo:
        scorer = scoring.StudentScorer(system=prompt.text, labels=cfg.task.label_names, calibration=calibration,
                                       client=ctx.student)
        for chunk, _ in _chunks(todo, n_todo, cfg.score.chunk_rows):
            pdf = chunk.toPandas()
            if len(pdf):
                t1 = time.perf_counter()
                res = scoring.score_pandas(scorer, pdf, cfg.score.ray.batch_size)
                counts["scoring_s"] += time.perf_counter() - t1
                store(scoring.results_to_spark(ctx.spark, res))
        ctx.collect_usage(ctx.student, STAGE)
    todo.unpersist()
    counts["scoring_s"] = round(counts["scoring_s"], 3)
    counts["rows_per_s"] = round(counts["scored"] / counts["scoring_s"], 3) if counts["scoring_s"] > 0 else None
    if ray_stats:
        counts["ray"] = ray_stats
    counts["wall_s"] = round(time.perf_counter() - t0, 3)
    ctx.record.add_counts(STAGE, **counts)
    model_errors, sent = counts["errors"] - n_empty, counts["scored"] - n_empty
    rate = model_errors / sent if sent > 0 else 0.0
    if rate > cfg.score.max_error_rate:
        raise StageError(f"score: {model_errors} of {sent} rows failed ({rate:.0%} > "
                         f"score.max_error_rate {cfg.score.max_error_rate:.0%}); the rows are stored with their "
                         f"error in 'predictions' and a re-run retries only them")
    from pld_spark.monitor.drift import after_score  # drift per scored day (drift.enabled); may raise DriftDetected
    after_score(ctx, prompt.version, inputs, counts)
    return counts
