"""Drift of bulk scoring, per scored day: is the student seeing (and answering) what it was built for?

For a prompt version and each day its ``score`` predictions were written (the date of
``predictions.scored_at``), :func:`check` computes over the stored tables:

- the predicted-label mix against a **baseline**: the prompt's own predictions on the test split in
  its latest evaluation run (``evaluations`` -> ``predictions``), else the test split's gold labels;
  as a population stability index (:func:`~pld_spark.monitor.stats.psi`) and a chi-square test
  (:func:`~pld_spark.monitor.stats.chi_square`);
- the share of the day's rows with an error;
- an input-side signal: the mean cosine distance of the day's inputs to their nearest train input,
  with the clustering embedder (``cluster.embedder``); TF-IDF is fitted on the train, test and day
  inputs together so they share one space; at most ``drift.max_rows`` of each are embedded.

One ``drift_daily`` row per (day, task, prompt_version) is MERGEd (a day scored again is
recomputed). ``pld score`` calls :func:`after_score` once its predictions are stored: with
``drift.enabled`` it checks the days of the rows it was given and, when a day crosses a ``drift.*``
threshold, logs one WARNING line per day and raises :class:`~pld_spark.errors.DriftDetected`
(exit status 3). Everything reads stored tables, so it runs (and is tested) without a model.
"""
from __future__ import annotations

import json
import logging
from datetime import date, datetime, timezone
from typing import Any, Sequence

from pld_spark.errors import ContractError, DriftDetected, PLDError

log = logging.getLogger(__name__)

STAGE = "score"
CONDITION = "score"
#: key of the error rows in ``label_counts``
ERROR_KEY = "<error>"


# ----------------------------------------------------------------------------- inputs
def _split_or_none(ctx, split: str):
    from pld_spark.storage.readers import current_examples

    if not ctx.store.exists("examples"):  # reading would create it: a monitor writes no empty tables
        return None
    try:
        return current_examples(ctx, split)
    except ContractError:  # not ingested with this config: that signal is simply not available
        return None


def _sample(df, id_col: str, max_rows: int) -> list[str]:
    """At most ``max_rows`` texts of ``df`` (``input_text``), a deterministic sample by id hash."""
    from pyspark.sql import functions as F

    if df is None:
        return []
    rows = df.orderBy(F.xxhash64(id_col), id_col).limit(max_rows).select("input_text").collect()
    return [r.input_text for r in rows if isinstance(r.input_text, str) and r.input_text.strip()]


def baseline(ctx, prompt_version: str) -> dict[str, Any] | None:
    """The label counts the day is compared with: ``source`` 'evaluation' (the prompt's error-free
    test predictions in its latest evaluation run) or 'test_gold'; None when neither exists."""
    from pyspark.sql import functions as F

    store, task = ctx.store, ctx.cfg.task.name
    test = _split_or_none(ctx, "test")
    ev = (store.read("evaluations").where((F.col("prompt_version") == prompt_version) & (F.col("task") == task))
          .orderBy(F.col("created_at").desc()).select("run_id", "condition").first()
          if store.exists("evaluations") else None)
    if ev is not None:
        preds = store.read("predictions").where((F.col("prompt_version") == prompt_version)
                                                 & (F.col("run_id") == ev.run_id) & F.col("error").isNull())
        if test is not None:
            preds = preds.join(test.select(F.col("example_id").alias("doc_id")), "doc_id", "left_semi")
        counts = {r.label: int(r["count"]) for r in preds.dropDuplicates(["doc_id"]).groupBy("label").count().collect()}
        if counts:
            return {"source": "evaluation", "run_id": ev.run_id, "n": sum(counts.values()), "counts": counts}
    if test is not None:
        counts = {r.label: int(r["count"]) for r in test.groupBy("label").count().collect()}
        return {"source": "test_gold", "n": sum(counts.values()), "counts": counts}
    return None


def _embedder(ctx):
    from pld_spark.pipeline.embedders import ConditionOnly, build_embedder

    ecfg = ctx.cfg.cluster.embedder
    client = ctx.teacher if ecfg.type == "llamacpp" and not ecfg.model else None
    emb = build_embedder(ecfg, client=client, seed=ctx.cfg.cluster.clusterer.seed)
    return emb.inner if isinstance(emb, ConditionOnly) else emb  # inputs are not rules: embed them whole


def input_distances(embed, day: Sequence[str], train: Sequence[str],
                    ref: Sequence[str] = ()) -> tuple[float | None, float | None]:
    """(mean distance of ``day`` to the nearest ``train`` text, the same for ``ref``), embedded in one
    call so a fitted embedder (TF-IDF) puts them in one space."""
    from pld_spark.monitor.stats import nearest_distances

    if not day or not train:
        return None, None
    x = embed(list(train) + list(ref) + list(day))
    t, r, d = x[:len(train)], x[len(train):len(train) + len(ref)], x[len(train) + len(ref):]
    mean = lambda rows: float(nearest_distances(rows, t).mean()) if len(rows) else None  # noqa: E731
    return mean(d), mean(r)


# ----------------------------------------------------------------------------- the check
def _days(preds, inputs) -> list[date]:
    from pyspark.sql import functions as F

    if inputs is not None:
        got = preds.join(inputs.select("doc_id"), "doc_id", "left_semi").select("day").distinct().collect()
        return sorted(r.day for r in got if r.day is not None)
    last = preds.agg(F.max("day").alias("d")).first().d
    return [last] if last is not None else []


def check(ctx, prompt_version: str, inputs=None, days: Sequence[date] | None = None) -> dict[str, Any]:
    """Drift of ``prompt_version``'s ``score`` predictions on ``days`` (default: the days the rows of
    ``inputs`` (doc_id, input_text) were scored on, else the latest scored day); MERGEs their
    ``drift_daily`` rows and logs one WARNING per drifted day. Returns ``{"days": [...],
    "drifted": {day: reasons}, "baseline": source}``; raises nothing (see :func:`after_score`)."""
    from pyspark.sql import functions as F

    from pld_spark.monitor.stats import chi_square, drift_reasons, psi
    from pld_spark.storage.catalog import DRIFT_DAILY
    from pld_spark.storage.writers import frame

    dcfg, labels, task = ctx.cfg.drift, ctx.cfg.task.label_names, ctx.cfg.task.name
    preds = (ctx.store.read("predictions").where((F.col("prompt_version") == prompt_version)
                                                  & (F.col("condition") == CONDITION))
             .withColumn("day", F.to_date("scored_at")))
    days = sorted(days) if days is not None else _days(preds, inputs)
    if not days:
        return {"days": [], "drifted": {}, "baseline": None}
    key = F.when(F.col("error").isNotNull() | F.col("label").isNull(), F.lit(ERROR_KEY)).otherwise(F.col("label"))
    per_day: dict[date, dict[str, int]] = {d: {} for d in days}
    for r in preds.where(F.col("day").isin(days)).groupBy("day", key.alias("k")).count().collect():
        per_day[r.day][r.k] = int(r["count"])
    base = baseline(ctx, prompt_version)
    train = _sample(_split_or_none(ctx, "train"), "example_id", dcfg.max_rows)
    ref = _sample(_split_or_none(ctx, "test"), "example_id", dcfg.max_rows) if train else []
    embed = None
    rows, summary, drifted = [], [], {}
    now = datetime.now(timezone.utc)
    for d in days:
        counts = per_day[d]
        n = sum(counts.values())
        valid = {k: v for k, v in counts.items() if k != ERROR_KEY}
        stats: dict[str, Any] = {"n": n, "error_share": counts.get(ERROR_KEY, 0) / n if n else None,
                                 "psi": None, "chi2": None, "chi2_p": None, "input_distance": None}
        if base is not None:
            stats["psi"] = psi(valid, base["counts"], labels)
            stats["chi2"], stats["chi2_p"] = chi_square(valid, base["counts"], labels) or (None, None)
        ref_distance = None
        if train:
            docs = preds.where(F.col("day") == F.lit(d)).select("doc_id")
            src = (inputs if inputs is not None else ctx.store.read("examples").where(F.col("task") == task)
                   .select(F.col("example_id").alias("doc_id"), "input_text"))  # train exists: so does examples
            day_texts = _sample(src.join(docs, "doc_id", "left_semi"), "doc_id", dcfg.max_rows)
            try:
                embed = embed or _embedder(ctx)
                stats["input_distance"], ref_distance = input_distances(embed, day_texts, train, ref)
            except (PLDError, ImportError, ValueError) as e:  # a side signal: never fails the scoring job
                log.warning("drift: input distance of %s not measured: %s: %s", d, type(e).__name__, e)
        reasons = drift_reasons(stats, dcfg)
        if reasons:
            drifted[d.isoformat()] = reasons
            log.warning("drift: day %s, prompt %s (task %s, %d rows): %s", d.isoformat(), prompt_version, task, n,
                        "; ".join(reasons))
        base_json = None if base is None else {**base, "input_distance_test": ref_distance}
        rows.append({"day": d, "task": task, "prompt_version": prompt_version, "run_id": ctx.run_id, "n": n,
                     "label_counts": json.dumps(counts, sort_keys=True),
                     "baseline": json.dumps(base_json, sort_keys=True) if base_json else None,
                     **{k: stats[k] for k in ("psi", "chi2", "chi2_p", "error_share", "input_distance")},
                     "drifted": bool(reasons), "reasons": "; ".join(reasons) or None, "created_at": now})
        summary.append({"day": d.isoformat(), "n": n, "drifted": bool(reasons), "reasons": reasons,
                        **{k: None if stats[k] is None else round(stats[k], 6)
                           for k in ("psi", "chi2_p", "error_share", "input_distance")}})
    ctx.store.merge("drift_daily", frame(ctx.spark, DRIFT_DAILY, rows), update=True)
    return {"days": summary, "drifted": drifted, "baseline": base["source"] if base else None}


def after_score(ctx, prompt_version: str, inputs, counts: dict[str, Any]) -> None:
    """``pld score``'s drift step (after its predictions are stored; no-op unless ``drift.enabled``):
    :func:`check` the days the scored inputs fall on, record it in ``counts`` and the run record,
    and raise :class:`DriftDetected` when any day crossed a threshold."""
    if not ctx.cfg.drift.enabled:
        return
    out = check(ctx, prompt_version, inputs=inputs)
    counts["drift"] = out
    ctx.record.add_counts(STAGE, drift=out)
    if out["drifted"]:
        days = "; ".join(f"{d}: {', '.join(r)}" for d, r in sorted(out["drifted"].items()))
        raise DriftDetected(f"prompt {prompt_version} of task {ctx.cfg.task.name} drifted on {len(out['drifted'])} "
                            f"scored day(s): {days}. The predictions and table drift_daily are stored; "
                            f"`pld sql query \"SELECT * FROM drift_status\"` shows the latest per prompt",
                            days=out["drifted"])
