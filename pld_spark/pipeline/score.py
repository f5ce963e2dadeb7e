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

:func:`score_batch` is the one scoring function: Ray actors, the local engine and the
evaluate stage all call it.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pld_spark.errors import ConfigError, ContractError, DataError, LLMError, StageError

log = logging.getLogger(__name__)

STAGE = "score"
CONDITION = "score"
RESULT_COLUMNS = ("doc_id", "label", "probabilities_json", "calibration", "latency_s", "tokens_in", "tokens_out",
                  "prefix_reused_tokens", "backend", "model", "error")


# ----------------------------------------------------------------------------- the batch function
def _result_row(doc_id: str, backend: str, model: str, calibration: str, label=None, probabilities=None,
                latency_s=0.0, tokens_in=0, tokens_out=0, prefix_reused_tokens=0, error=None) -> dict[str, Any]:
    return {"doc_id": doc_id, "label": label,
            "probabilities_json": json.dumps(probabilities, sort_keys=True) if probabilities else None,
            "calibration": calibration, "latency_s": float(latency_s or 0.0), "tokens_in": int(tokens_in or 0),
            "tokens_out": int(tokens_out or 0), "prefix_reused_tokens": int(prefix_reused_tokens or 0),
            "backend": backend, "model": model, "error": error}


def result_frame(rows: Sequence[dict[str, Any]]):
    """A pandas frame with exactly :data:`RESULT_COLUMNS` and stable dtypes (also when empty)."""
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=list(RESULT_COLUMNS))
    for c in ("latency_s",):
        df[c] = df[c].astype("float64")
    for c in ("tokens_in", "tokens_out", "prefix_reused_tokens"):
        df[c] = df[c].astype("int64")
    for c in ("doc_id", "label", "probabilities_json", "calibration", "backend", "model", "error"):
        df[c] = df[c].astype(object)
    return df


def score_batch(client, batch, system: str, labels: Sequence[str], calibration: str | None = None):
    """Classify one batch (pandas frame with ``doc_id``, ``input_text``) with ``client``.

    Returns a frame with :data:`RESULT_COLUMNS`, one row per input row, same order. Per-row
    failures (empty input, a failed model call, a label outside the set) are rows with
    ``error`` and no label; a whole-batch model failure marks every row of the batch.
    """
    labels = list(labels)
    backend = getattr(client, "backend", "unknown")
    model = getattr(client, "model_id", "unknown")
    cal = calibration or getattr(getattr(client, "cfg", None), "calibration", None) or "none"
    doc_ids = [str(d) for d in batch["doc_id"]]
    texts = ["" if t is None else str(t) for t in batch["input_text"]]
    rows: list[dict[str, Any] | None] = [None] * len(doc_ids)
    todo = []
    for i, t in enumerate(texts):
        if not t.strip():
            rows[i] = _result_row(doc_ids[i], backend, model, cal, error="empty input_text")
        else:
            todo.append(i)
    if todo:
        try:
            results = client.classify(system, [texts[i] for i in todo], labels, calibration=cal)
        except LLMError as e:
            log.warning("classify failed for a batch of %d: %s", len(todo), e)
            results = None
            for i in todo:
                rows[i] = _result_row(doc_ids[i], backend, model, cal, error=f"{type(e).__name__}: {e}"[:2000])
        if results is not None:
            if len(results) != len(todo):
                raise StageError(f"{backend}: classify returned {len(results)} results for {len(todo)} inputs")
            for i, r in zip(todo, results):
                err = r.error
                label = r.label
                if err is None and label not in labels:
                    err = f"label outside the label set: {label!r}"
                if err is not None:
                    label = None
                probs = {k: float(v) for k, v in (r.probabilities or {}).items()} or None
                rows[i] = _result_row(doc_ids[i], backend, model, r.calibration or cal, label=label,
                                      probabilities=probs, latency_s=r.latency_s, tokens_in=r.tokens_in,
                                      tokens_out=r.tokens_out, prefix_reused_tokens=r.prefix_reused_tokens,
                                      error=err)
    return result_frame(rows)  # type: ignore[arg-type]


def _student_config(llm_cfg, num_cpus: float | None):
    """Per-actor student config: llama.cpp gets one thread per CPU the actor holds, so N
    actors do not oversubscribe the node's cores."""
    if llm_cfg.type == "llamacpp" and llm_cfg.n_threads is None and num_cpus:
        return llm_cfg.model_copy(update={"n_threads": max(1, int(num_cpus))})
    return llm_cfg


class StudentScorer:
    """Callable batch scorer: builds (or takes) the student once, then scores batches.

    Used as the Ray Data actor class (``__init__`` runs once per actor and loads the model
    through the process-level registry cache) and in-process by the local engine.
    """

    def __init__(self, llm_cfg=None, system: str = "", labels: Sequence[str] = (), calibration: str | None = None,
                 num_cpus: float | None = None, client=None, arrow_output: bool = False):
        if client is None:
            from pld_spark.llm.registry import get_or_build

            client = get_or_build(_student_config(llm_cfg, num_cpus), role="student")
        self.client = client
        self.system = system
        self.labels = list(labels)
        self.calibration = calibration
        self.arrow_output = arrow_output

    def __call__(self, batch):
        out = score_batch(self.client, batch, self.system, self.labels, self.calibration)
        return result_arrow(out) if self.arrow_output else out


def result_arrow(pdf):
    """The result frame as an Arrow table with a fixed schema: an all-null column (e.g. no
    errors in a batch) must still be a string column in every Parquet file Ray writes."""
    import pyarrow as pa

    schema = pa.schema([("doc_id", pa.string()), ("label", pa.string()), ("probabilities_json", pa.string()),
                        ("calibration", pa.string()), ("latency_s", pa.float64()), ("tokens_in", pa.int64()),
                        ("tokens_out", pa.int64()), ("prefix_reused_tokens", pa.int64()), ("backend", pa.string()),
                        ("model", pa.string()), ("error", pa.string())])
    return pa.Table.from_pandas(pdf[list(RESULT_COLUMNS)], schema=schema, preserve_index=False)


# ----------------------------------------------------------------------------- prompt versions
@dataclass(frozen=True)
class PromptRef:
    version: str
    text: str
    kind: str | None = None
    alias: str | None = None


def task_aliases(ctx) -> dict[str, str]:
    """alias -> prompt version for the task (the latest promotion of each alias wins)."""
    from pyspark.sql import functions as F

    if not ctx.store.exists("prompt_aliases"):
        return {}
    rows = (ctx.store.read("prompt_aliases").where(F.col("task") == ctx.cfg.task.name)
            .select("alias", "prompt_version", "promoted_at").collect())
    latest: dict[str, tuple] = {}
    for r in rows:
        key = (r.promoted_at is not None, r.promoted_at or 0)
        if r.alias not in latest or key >= latest[r.alias][0]:
            latest[r.alias] = (key, r.prompt_version)
    return {a: v for a, (_, v) in latest.items()}


def alias_version(ctx, alias: str) -> str | None:
    """The prompt version an alias points at for the task, or None."""
    return task_aliases(ctx).get(alias)


def prompt_row(ctx, version: str):
    """The ``prompts`` row of a version, or None."""
    from pyspark.sql import functions as F

    if not ctx.store.exists("prompts"):
        return None
    return ctx.store.read("prompts").where(F.col("prompt_version") == version).first()


def resolve_prompt(ctx, ref: str | None = None) -> PromptRef:
    """A prompt version id or alias name -> its text. Default: alias 'live', else 'distilled'.

    Raises ConfigError naming everything that was looked for."""
    task = ctx.cfg.task.name
    aliases = task_aliases(ctx)
    if ref:
        row = prompt_row(ctx, ref)
        if row is not None:
            return PromptRef(row.prompt_version, row.text, row.kind)
        version = aliases.get(ref)
        if version is None:
            raise ConfigError(f"prompt '{ref}' is neither a prompt_version in table 'prompts' nor an alias of task "
                              f"'{task}' in table 'prompt_aliases'")
        row = prompt_row(ctx, version)
        if row is None:
            raise ConfigError(f"alias '{ref}' of task '{task}' points at prompt_version '{version}', "
                              f"which is not in table 'prompts'")
        return PromptRef(row.prompt_version, row.text, row.kind, alias=ref)
    for alias in ("live", "distilled"):
        version = aliases.get(alias)
        if version is not None:
            row = prompt_row(ctx, version)
            if row is None:
                raise ConfigError(f"alias '{alias}' of task '{task}' points at prompt_version '{version}', "
                                  f"which is not in table 'prompts'")
            return PromptRef(row.prompt_version, row.text, row.kind, alias=alias)
    raise ConfigError(f"no prompt version given and task '{task}' has no 'live' or 'distilled' alias in table "
                      f"'prompt_aliases'; run `pld distill` (or `pld prompt promote <version>`), or pass "
                      f"--prompt-version")


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
    from pld_spark.pipeline.ingest import current_examples
    from pld_spark.storage.catalog import TABLES

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


def scored_doc_ids(ctx, prompt_version: str, condition: str = CONDITION):
    """doc_ids already scored without error for (prompt_version, condition)."""
    from pyspark.sql import functions as F

    return (ctx.store.read("predictions")
            .where((F.col("prompt_version") == prompt_version) & (F.col("condition") == condition)
                   & F.col("error").isNull())
            .select("doc_id"))


# ----------------------------------------------------------------------------- engines
def to_predictions(results, prompt_version: str, condition: str, run_id: str):
    """Spark frame of :data:`RESULT_COLUMNS` -> rows of the ``predictions`` table."""
    from pyspark.sql import functions as F

    return (results
            .withColumn("probabilities", F.from_json("probabilities_json", "map<string,double>"))
            .drop("probabilities_json")
            .withColumn("prompt_version", F.lit(prompt_version))
            .withColumn("condition", F.lit(condition))
            .withColumn("run_id", F.lit(run_id))
            .withColumn("scored_at", F.current_timestamp()))


def score_pandas(scorer: StudentScorer, pdf, batch_size: int | None):
    """In-process engine: ``scorer`` over a pandas frame in batches (None: one batch)."""
    import pandas as pd

    if len(pdf) == 0:
        return result_frame([])
    size = batch_size or len(pdf)
    parts = [scorer(pdf.iloc[i:i + size]) for i in range(0, len(pdf), size)]
    return pd.concat(parts, ignore_index=True)


def results_to_spark(spark, pdf):
    from pld_spark.engines.handoff import RESULT_DDL

    if len(pdf) == 0:
        return spark.createDataFrame([], RESULT_DDL)
    return spark.createDataFrame(pdf[list(RESULT_COLUMNS)], RESULT_DDL)


def score_with_ray(ctx, df, n_rows: int, system: str, chunk_name: str):
    """One chunk through the Parquet handoff and the Ray actor pool. Needs a Ray runtime.

    Returns (Spark frame of results, Ray stats, handoff to clean up after the MERGE)."""
    from pld_spark.engines import handoff as ho
    from pld_spark.engines.ray import map_parquet_with_actors

    cfg = ctx.cfg
    rc = cfg.score.ray
    h = ho.new_handoff(cfg, ctx.run_id, chunk_name)
    ho.write_input(df, h, num_files=max(rc.num_actors, min(64, math.ceil(n_rows / (rc.batch_size * 4)))))
    kwargs = {"llm_cfg": cfg.student, "system": system, "labels": cfg.task.label_names,
              "calibration": cfg.student.calibration, "num_cpus": rc.num_cpus_per_actor, "arrow_output": True}
    try:
        stats = map_parquet_with_actors(ho.ray_path(h.input_path), ho.ray_path(h.output_path), StudentScorer, kwargs,
                                        rc, n_rows)
    except Exception as e:  # noqa: BLE001 - Ray wraps actor failures in its own classes; re-raised typed
        raise StageError(f"score: the Ray actor pool failed on {chunk_name} ({n_rows} rows): {type(e).__name__}: "
                         f"{str(e)[:1500]}; chunks merged before this one are kept, a re-run resumes") from e
    return ho.read_output(ctx.spark, h), stats, h


def run(ctx, prompt_version: str | None = None, input_ref: str | None = None) -> dict[str, Any]:
    """Score documents with a prompt version and MERGE the results into ``predictions``."""
    from pyspark.sql import functions as F

    cfg = ctx.cfg
    t0 = time.perf_counter()
    prompt = resolve_prompt(ctx, prompt_version)
    inputs, n_input = load_input(ctx, input_ref, with_count=True)
    todo = transform(inputs, scored_doc_ids(ctx, prompt.version)).cache()
    # Empty inputs are stored as error rows without a model call; they are bad input, not
    # model failures, so they do not count against the error budget.
    agg = todo.agg(F.count("*").alias("n"), F.coalesce(F.sum(F.when(
        F.col("input_text").isNull() | (F.trim("input_text") == ""), 1).otherwise(0)), F.lit(0)).alias("e")).first()
    n_todo, n_empty = int(agg.n), int(agg.e)
    engine = cfg.score.engine
    counts: dict[str, Any] = {"prompt_version": prompt.version, "alias": prompt.alias, "engine": engine,
                              "input_rows": n_input, "already_scored": n_input - n_todo, "scored": 0, "errors": 0,
                              "empty_inputs": n_empty}
    log.info("score: %d input rows, %d already scored for %s, %d to score (%s engine)", n_input,
             n_input - n_todo, prompt.version, n_todo, engine)
    if n_todo == 0:
        todo.unpersist()
        counts["wall_s"] = round(time.perf_counter() - t0, 3)
        ctx.record.add_counts(STAGE, **counts)
        return counts
    n_chunks = max(1, math.ceil(n_todo / cfg.score.chunk_rows))
    chunks = ([todo] if n_chunks == 1 else
              [todo.where(F.pmod(F.xxhash64("doc_id"), F.lit(n_chunks)) == i) for i in range(n_chunks)])
    scoring_s = 0.0
    ray_stats: list[dict[str, Any]] = []

    def merge(results, count_usage: bool) -> tuple[int, int]:
        preds = to_predictions(results, prompt.version, CONDITION, ctx.run_id).cache()
        try:
            ctx.store.merge("predictions", preds, update=True)
            agg = preds.agg(F.count("*").alias("n"), F.count("error").alias("e"),
                            F.coalesce(F.sum("tokens_in"), F.lit(0)).alias("tin"),
                            F.coalesce(F.sum("tokens_out"), F.lit(0)).alias("tout")).first()
        finally:
            preds.unpersist()
        if count_usage:  # the actors' clients are out of reach: count what the rows say they spent
            st = cfg.student
            ctx.record.add_usage(agg.tin, agg.tout, agg.n,
                                 agg.tin / 1000.0 * st.price_in_per_1k + agg.tout / 1000.0 * st.price_out_per_1k)
        return int(agg.n), int(agg.e)

    if engine == "ray":
        from pld_spark.engines.ray import ray_runtime

        with ray_runtime(cfg.score.ray) as rt:
            counts["ray_mode"] = rt["mode"]
            for i, chunk in enumerate(chunks):
                n = chunk.count() if n_chunks > 1 else n_todo
                if n == 0:
                    continue
                t1 = time.perf_counter()
                results, stats, h = score_with_ray(ctx, chunk, n, prompt.text, f"score-{prompt.version}-{i}")
                scoring_s += time.perf_counter() - t1
                ray_stats.append(stats)
                got, errs = merge(results, count_usage=True)
                h.cleanup()
                if got != n:
                    raise StageError(f"score: Ray returned {got} rows for {n} inputs in chunk {i}")
                counts["scored"] += got
                counts["errors"] += errs
    else:
        scorer = StudentScorer(system=prompt.text, labels=cfg.task.label_names, calibration=cfg.student.calibration,
                               client=ctx.student)
        for chunk in chunks:
            pdf = chunk.toPandas()
            if len(pdf) == 0:
                continue
            t1 = time.perf_counter()
            res = score_pandas(scorer, pdf, cfg.score.ray.batch_size)
            scoring_s += time.perf_counter() - t1
            got, errs = merge(results_to_spark(ctx.spark, res), count_usage=False)
            counts["scored"] += got
            counts["errors"] += errs
        ctx.collect_usage(ctx.student)
    todo.unpersist()
    counts["scoring_s"] = round(scoring_s, 3)
    counts["rows_per_s"] = round(counts["scored"] / scoring_s, 3) if scoring_s > 0 else None
    if ray_stats:
        counts["ray"] = ray_stats
    counts["wall_s"] = round(time.perf_counter() - t0, 3)
    ctx.record.add_counts(STAGE, **counts)
    model_errors = counts["errors"] - n_empty
    sent = counts["scored"] - n_empty
    rate = model_errors / sent if sent > 0 else 0.0
    if rate > cfg.score.max_error_rate:
        raise StageError(f"score: {model_errors} of {sent} rows failed ({rate:.0%} > "
                         f"score.max_error_rate {cfg.score.max_error_rate:.0%}); the rows are stored with their "
                         f"error in 'predictions' and a re-run retries only them")
    return counts
