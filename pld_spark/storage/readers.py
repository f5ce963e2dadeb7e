"""Stage contracts: readers of what the stages store, in one place next to the catalogue.

A stage reads another stage's output only through these functions, never by importing that
stage: ``extract`` reads the current train examples here, ``cluster`` the current
micro-instructions, ``consolidate`` the latest clustering, ``resolve`` rules and reviews, and so
on. Each reader says which rows are *current* for a config (the dataset selection of
:func:`dataset_hash`, the teacher and template of the resume key) and fails with a
:class:`~pld_spark.errors.ContractError` naming the table and the command to run when they are
missing.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Sequence

from pld_spark.errors import ContractError


# ----------------------------------------------------------------------------- keys
def dataset_hash(cfg) -> str:
    """Identifies the example set a config selects: dataset, split, sample and input policy."""
    # the quality gates decide whether ingest fails, not which examples it selects
    ds = cfg.dataset.model_dump(mode="json", exclude={"allow_missing_labels", "max_reject_share"})
    blob = json.dumps({"task": cfg.task.name, "template": cfg.task.input_template, "dataset": ds,
                       "input_policy": cfg.input_policy.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def teacher_model_id(llm_cfg) -> str:
    """The teacher's identity in the extract resume key, from config (no model is loaded to know it)."""
    return f"{llm_cfg.type}:{llm_cfg.model}"


# ----------------------------------------------------------------------------- examples
def current_examples(ctx, split: str | None = None):
    """The examples the current config selects (fails clearly if ingest has not run for it)."""
    from pyspark.sql import functions as F

    df = ctx.store.read("examples").where((F.col("task") == ctx.cfg.task.name)
                                           & (F.col("dataset_hash") == dataset_hash(ctx.cfg)))
    if split:
        df = df.where(F.col("split") == split)
    if df.limit(1).count() == 0:
        raise ContractError(f"no '{split or 'any'}' examples in table 'examples' for task '{ctx.cfg.task.name}' "
                            f"with this dataset config; run `pld ingest --config {ctx.cfg.source}` first")
    return df


def example_rows(ctx, split: str, columns: Sequence[str] = ("example_id", "input_text", "label")) -> list[dict]:
    """The current examples of a split as dicts, sorted by example_id."""
    rows = [r.asDict() for r in current_examples(ctx, split).select(*columns).collect()]
    return sorted(rows, key=lambda r: r["example_id"])


def example_texts(ctx, split: str, ids) -> dict[str, str]:
    """example_id -> raw ``text`` of those current examples of ``split``: fetched for the few
    examples a prompt shows, as a contract can run to tens of kB."""
    from pyspark.sql import functions as F

    ids = sorted({i for i in ids if i})
    if not ids:
        return {}
    rows = current_examples(ctx, split).where(F.col("example_id").isin(ids)).select("example_id", "text").collect()
    return {r.example_id: r.text for r in rows}


# ----------------------------------------------------------------------------- micro-instructions
def current_micro(ctx, include_invalid: bool | None = None):
    """Micro-instructions of the current train set, teacher and template, without errors
    (and only valid ones unless ``include_invalid``)."""
    from pyspark.sql import functions as F

    cfg = ctx.cfg
    inc = cfg.cluster.include_invalid if include_invalid is None else include_invalid
    ids = current_examples(ctx, "train").select("example_id")
    m = ctx.store.read("micro_instructions").where(
        (F.col("teacher_model") == teacher_model_id(cfg.teacher))
        & (F.col("template_version") == cfg.extract.template_version)
        & F.col("error").isNull() & F.col("rule").isNotNull())
    if not inc:
        m = m.where(F.col("valid"))
    return m.join(ids, "example_id", "left_semi")


# ----------------------------------------------------------------------------- clusters
def latest_cluster_run(ctx, micro_ids_df) -> str | None:
    """This run's clustering of these micro-instructions if it made one, else the most recent."""
    from pyspark.sql import functions as F

    ic = ctx.store.read("instruction_clusters").join(micro_ids_df, "micro_id", "left_semi")
    runs = ic.groupBy("cluster_run_id").agg(F.max("created_at").alias("t")).collect()
    if not runs:
        return None
    if any(r.cluster_run_id == ctx.run_id for r in runs):
        return ctx.run_id
    return max(runs, key=lambda r: (r.t, r.cluster_run_id)).cluster_run_id


def cluster_members(ctx, cluster_run: str, micro) -> dict[int, list[dict]]:
    """cluster_id -> member dicts (micro_id, example_id, label, rule, input_text, pair,
    dist_to_centroid, group_key) of a clustering; not the raw ``text`` (:func:`example_texts`)."""
    from pyspark.sql import functions as F

    inputs = current_examples(ctx, "train").select("example_id", "input_text", "pair")
    rows = (ctx.store.read("instruction_clusters").where(F.col("cluster_run_id") == cluster_run)
            .select("micro_id", "cluster_id", "dist_to_centroid", "group_key")
            .join(micro.select("micro_id", "example_id", "label", "rule"), "micro_id")
            .join(inputs, "example_id", "left").collect())
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(int(r.cluster_id), []).append(r.asDict())
    return out


# ----------------------------------------------------------------------------- rules and reviews
def latest_reviews(store) -> dict[str, dict]:
    """rule_id -> the latest ``rule_reviews`` row (by created_at, then review_id)."""
    rows = store.read("rule_reviews").collect()
    latest: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r.created_at, r.review_id)):
        latest[r.rule_id] = r.asDict()
    return latest


def pinned_rules(store, task_name: str, reviews: dict[str, dict]) -> list[dict]:
    """Valid rules of the task whose latest review is 'pin'."""
    from pyspark.sql import functions as F

    ids = [rid for rid, rev in reviews.items() if rev["action"] == "pin"]
    if not ids:
        return []
    rows = (store.read("rules").where((F.col("task") == task_name) & F.col("rule_id").isin(ids) & F.col("valid"))
            .select("rule_id", "label", "instruction", "support", "topic", "example_text", "example_label")
            .collect())
    return [r.asDict() for r in rows]


def rules_by_fingerprint(store, task_name: str, fingerprints: Iterable[str]) -> list[dict[str, Any]]:
    """The task's stored rules whose ``cluster_fingerprint`` is one of ``fingerprints`` (what an
    incremental consolidate may reuse; it picks among them)."""
    from pyspark.sql import functions as F

    fps = sorted(set(fingerprints))
    if not fps:
        return []
    return [r.asDict() for r in store.read("rules").where(
        (F.col("task") == task_name) & F.col("cluster_fingerprint").isin(fps)).collect()]


def load_rules(store, rule_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Rule dicts (in ``rule_ids`` order) from the ``rules`` table."""
    from pyspark.sql import functions as F

    if not rule_ids:
        return []
    rows = {r.rule_id: r.asDict() for r in store.read("rules").where(F.col("rule_id").isin(list(rule_ids))).collect()}
    return [rows[i] for i in rule_ids if i in rows]


# ----------------------------------------------------------------------------- predictions
def scored_doc_ids(store, prompt_version: str, condition: str):
    """doc_ids already scored without error for (prompt_version, condition)."""
    from pyspark.sql import functions as F

    return (store.read("predictions")
            .where((F.col("prompt_version") == prompt_version) & (F.col("condition") == condition)
                   & F.col("error").isNull())
            .select("doc_id"))


def prompt_shots(ctx, version) -> list:
    """The label examples of a stored prompt version (its ``example_ids``, in order) as
    :class:`~pld_spark.prompts.student.FewShot`, so select and resolve re-assemble their prompts
    with the same examples; [] when it shows none. An example that is not among the current
    config's examples is a :class:`ContractError` naming it."""
    from pyspark.sql import functions as F

    from pld_spark.prompts.examples import SHOT_COLUMNS, as_shots

    ids = list(getattr(version, "example_ids", ()) or ())
    if not ids:
        return []
    got = {r.example_id: r.asDict() for r in current_examples(ctx).where(F.col("example_id").isin(ids))
           .select(*SHOT_COLUMNS).collect()}
    missing = [i for i in ids if i not in got]
    if missing:
        raise ContractError(f"prompt {version.prompt_version} shows examples that are not among this dataset "
                            f"config's examples: {missing[:5]}; run `pld consolidate` again to choose new ones")
    return as_shots([got[i] for i in ids], ctx.cfg.consolidate.exemplar_max_chars, ctx.cfg.task.input_template)
