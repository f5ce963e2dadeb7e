"""Student scoring: the one result schema and the one batch function, for every engine and stage.

:data:`RESULT_FIELDS` is the schema of a scored row, defined once; the pandas frame
(:func:`result_frame`), the Arrow table Ray actors write (:func:`result_arrow`), the Spark DDL the
handoff reads back (:data:`RESULT_DDL`) and the ``predictions`` rows (:func:`to_predictions`) are all
derived from it. :func:`score_batch` classifies one batch with a student client; :class:`StudentScorer`
is the same as a callable built once per Ray actor or in-process. The ``score`` and ``evaluate``
stages both use these; neither imports the other.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from pld_spark.errors import LLMError, StageError

log = logging.getLogger(__name__)

#: (column, Spark SQL type) of one scored row; probabilities travel as a JSON object string
#: because Arrow has no schema-stable map type coming out of pandas
RESULT_FIELDS: tuple[tuple[str, str], ...] = (
    ("doc_id", "STRING"), ("label", "STRING"), ("probabilities_json", "STRING"), ("calibration", "STRING"),
    ("latency_s", "DOUBLE"), ("tokens_in", "BIGINT"), ("tokens_out", "BIGINT"), ("prefix_reused_tokens", "BIGINT"),
    ("backend", "STRING"), ("model", "STRING"), ("error", "STRING"))
RESULT_COLUMNS: tuple[str, ...] = tuple(n for n, _ in RESULT_FIELDS)
RESULT_DDL = ", ".join(f"{n} {t}" for n, t in RESULT_FIELDS)
_PANDAS = {"STRING": object, "DOUBLE": "float64", "BIGINT": "int64"}


def result_row(doc_id: str, backend: str, model: str, calibration: str, label=None, probabilities=None,
               latency_s=None, tokens_in=0, tokens_out=0, prefix_reused_tokens=0, error=None) -> dict[str, Any]:
    """One scored row keyed by column (``latency_s`` None: not measured, e.g. a cached score)."""
    return {"doc_id": doc_id, "label": label,
            "probabilities_json": json.dumps(probabilities, sort_keys=True) if probabilities else None,
            "calibration": calibration, "latency_s": None if latency_s is None else float(latency_s),
            "tokens_in": int(tokens_in or 0),
            "tokens_out": int(tokens_out or 0), "prefix_reused_tokens": int(prefix_reused_tokens or 0),
            "backend": backend, "model": model, "error": error}


def result_frame(rows: Sequence[dict[str, Any]]):
    """A pandas frame with exactly :data:`RESULT_COLUMNS` and stable dtypes (also when empty)."""
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=list(RESULT_COLUMNS))
    return df.astype({n: _PANDAS[t] for n, t in RESULT_FIELDS})


def result_arrow(pdf):
    """The result frame as an Arrow table with a fixed schema: an all-null column (e.g. no
    errors in a batch) must still be a string column in every Parquet file Ray writes."""
    import pyarrow as pa

    types = {"STRING": pa.string(), "DOUBLE": pa.float64(), "BIGINT": pa.int64()}
    schema = pa.schema([(n, types[t]) for n, t in RESULT_FIELDS])
    return pa.Table.from_pandas(pdf[list(RESULT_COLUMNS)], schema=schema, preserve_index=False)


def score_batch(client, batch, system: str, labels: Sequence[str], calibration: str | None = None):
    """Classify one batch (pandas frame with ``doc_id``, ``input_text``) with ``client``.

    Returns a frame with :data:`RESULT_COLUMNS`, one row per input row, same order. Per-row
    failures (empty input, a failed model call, a label outside the set) are rows with
    ``error`` and no label; a whole-batch model failure marks every row of the batch.
    """
    labels = list(labels)
    backend, model = client.backend, client.model_id
    cal = calibration or client.calibration
    cal_name = getattr(cal, "method", cal)  # a fixed Calibration is stored by its method name
    doc_ids = [str(d) for d in batch["doc_id"]]
    texts = ["" if t is None else str(t) for t in batch["input_text"]]
    rows: list[dict[str, Any] | None] = [None] * len(doc_ids)
    todo = []
    for i, t in enumerate(texts):
        if not t.strip():
            rows[i] = result_row(doc_ids[i], backend, model, cal_name, error="empty input_text")
        else:
            todo.append(i)
    if todo:
        try:
            results = client.classify(system, [texts[i] for i in todo], labels, calibration=cal)
        except LLMError as e:
            log.warning("classify failed for a batch of %d: %s", len(todo), e)
            results = None
            for i in todo:
                rows[i] = result_row(doc_ids[i], backend, model, cal_name, error=f"{type(e).__name__}: {e}"[:2000])
        if results is not None:
            if len(results) != len(todo):
                raise StageError(f"{backend}: classify returned {len(results)} results for {len(todo)} inputs")
            for i, r in zip(todo, results):
                err, label = r.error, r.label
                if err is None and label not in labels:
                    err = f"label outside the label set: {label!r}"
                if err is not None:
                    label = None
                probs = {k: float(v) for k, v in (r.probabilities or {}).items()} or None
                rows[i] = result_row(doc_ids[i], backend, model, r.calibration or cal_name, label=label,
                                     probabilities=probs, latency_s=r.latency_s, tokens_in=r.tokens_in,
                                     tokens_out=r.tokens_out, prefix_reused_tokens=r.prefix_reused_tokens, error=err)
    return result_frame(rows)  # type: ignore[arg-type]


class StudentScorer:
    """Callable batch scorer: builds (or takes) the student once, then scores batches.

    Used as the Ray Data actor class (``__init__`` runs once per actor and loads the model
    through the process-level registry cache; llama.cpp gets the actor's ``num_cpus`` as its
    thread count) and in-process by the local engine.
    """

    def __init__(self, llm_cfg=None, system: str = "", labels: Sequence[str] = (), calibration: str | None = None,
                 num_cpus: float | None = None, client=None, arrow_output: bool = False):
        if client is None:
            from pld_spark.llm.registry import get_or_build
            from pld_spark.llm.threads import with_owned_cores

            client = get_or_build(with_owned_cores(llm_cfg, num_cpus, source="ray actor"), role="student")
        self.client = client
        self.system = system
        self.labels = list(labels)
        self.calibration = calibration
        self.arrow_output = arrow_output

    def __call__(self, batch):
        out = score_batch(self.client, batch, self.system, self.labels, self.calibration)
        return result_arrow(out) if self.arrow_output else out


def score_pandas(scorer: StudentScorer, pdf, batch_size: int | None):
    """In-process engine: ``scorer`` over a pandas frame in batches (None: one batch)."""
    import pandas as pd

    if len(pdf) == 0:
        return result_frame([])
    size = batch_size or len(pdf)
    return pd.concat([scorer(pdf.iloc[i:i + size]) for i in range(0, len(pdf), size)], ignore_index=True)


def results_to_spark(spark, pdf, extra: Sequence[tuple[str, str]] = ()):
    """A result frame (plus ``extra`` (column, type) fields it carries) as a Spark frame."""
    ddl = ", ".join([RESULT_DDL, *(f"{n} {t}" for n, t in extra)])
    cols = list(RESULT_COLUMNS) + [n for n, _ in extra]
    if len(pdf) == 0:
        return spark.createDataFrame([], ddl)
    return spark.createDataFrame(pdf[cols], ddl)


def to_predictions(results, run_id: str, prompt_version: str | None = None, condition: str | None = None):
    """Spark frame of results -> rows of the ``predictions`` table. ``prompt_version`` and
    ``condition`` are constants, or (None) columns the frame already carries."""
    from pyspark.sql import functions as F

    out = (results.withColumn("probabilities", F.from_json("probabilities_json", "map<string,double>"))
           .drop("probabilities_json"))
    if prompt_version is not None:
        out = out.withColumn("prompt_version", F.lit(prompt_version))
    if condition is not None:
        out = out.withColumn("condition", F.lit(condition))
    return out.withColumn("run_id", F.lit(run_id)).withColumn("scored_at", F.current_timestamp())


def score_on_ray(ctx, df, n_rows: int, system: str, calibration: str | None, name: str):
    """One chunk of ``(doc_id, input_text)`` rows through the Parquet handoff and the Ray actor pool
    (:class:`StudentScorer` actors). Needs a Ray runtime. Returns (Spark frame of results, Ray stats,
    the handoff to remove after the results are stored)."""
    from pld_spark.engines import handoff as ho
    from pld_spark.engines.ray import map_frame_with_actors

    cfg, rc = ctx.cfg, ctx.cfg.score.ray
    h = ho.new_handoff(cfg, ctx.run_id, name)
    kwargs = {"llm_cfg": cfg.student, "system": system, "labels": cfg.task.label_names, "calibration": calibration,
              "num_cpus": rc.num_cpus_per_actor, "arrow_output": True}
    results, stats = map_frame_with_actors(ctx.spark, df, n_rows, handoff=h, actor_cls=StudentScorer,
                                           constructor_kwargs=kwargs, ray_cfg=rc, out_ddl=RESULT_DDL)
    return results, stats, h
