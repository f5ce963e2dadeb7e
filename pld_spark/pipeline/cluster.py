"""cluster: ``micro_instructions`` -> ``instruction_clusters``.

The valid, non-errored micro-instructions of the current train set, teacher and extract
template (all non-errored ones with ``cluster.include_invalid``) are embedded once
(:mod:`pld_spark.pipeline.embedders`) and clustered (:mod:`pld_spark.pipeline.clusterers`),
over all rules or per label (``cluster.per_label``). Noise keeps its row with
``cluster_id = -1`` (size, purity and distance are NULL for noise). Each cluster row records
its size, label purity (share of the majority gold label), the member's cosine distance to
the cluster centroid, the embedder, the clusterer and its parameters as JSON.
``cluster_run_id`` is the run id, so several clusterings of the same rules can coexist.

Rules are collected to the driver: one short string per train example is small even at
100k examples, and the scikit-learn clusterers are single-machine anyway.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from pld_spark.pipeline.clusterers import cluster_matrix, params
from pld_spark.pipeline.embedders import build_embedder, describe

log = logging.getLogger(__name__)

STAGE = "cluster"
INPUT_COLUMNS = ("micro_id", "example_id", "label", "rule")


def current_micro(ctx, include_invalid: bool | None = None):
    """Micro-instructions of the current train set, teacher and template, without errors
    (and only valid ones unless ``include_invalid``)."""
    from pyspark.sql import functions as F

    from pld_spark.pipeline.extract import teacher_model_id
    from pld_spark.pipeline.ingest import current_examples

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


def transform(pdf, cluster_cfg, embedder):
    """pandas (micro_id, example_id, label, rule) -> the same rows plus cluster_id, cluster_size,
    label_purity, dist_to_centroid. Deterministic: rows are sorted by micro_id first and
    cluster ids are numbered in that order (0, 1, ...; -1 = noise)."""
    import numpy as np
    import pandas as pd

    missing = [c for c in INPUT_COLUMNS if c not in pdf.columns]
    if missing:
        from pld_spark.errors import ContractError

        raise ContractError(f"stage '{STAGE}': input is missing columns {missing}")
    df = pdf.sort_values("micro_id").reset_index(drop=True).copy()
    n = len(df)
    cols = ["cluster_id", "cluster_size", "label_purity", "dist_to_centroid"]
    if n == 0:
        return df.assign(**{c: pd.Series(dtype="float64") for c in cols})
    x = embedder(df["rule"].astype(str).tolist())
    raw = np.full(n, -1, dtype=int)
    groups = [np.arange(n)] if not cluster_cfg.per_label else [
        np.flatnonzero(df["label"].to_numpy() == lab) for lab in sorted(df["label"].unique())]
    next_id = 0
    for idx in groups:
        if len(idx) == 0:
            continue
        local = cluster_matrix(x[idx], cluster_cfg.clusterer)
        mapping: dict[int, int] = {}
        for pos, lab in zip(idx, local):  # renumber in micro_id order: ids unique across groups
            if lab < 0:
                continue
            if lab not in mapping:
                mapping[lab] = next_id
                next_id += 1
            raw[pos] = mapping[lab]
    df["cluster_id"] = raw
    size = np.full(n, np.nan)
    purity = np.full(n, np.nan)
    dist = np.full(n, np.nan)
    for cid in sorted(set(raw.tolist()) - {-1}):
        members = np.flatnonzero(raw == cid)
        centroid = x[members].mean(axis=0)
        norm = np.linalg.norm(centroid)
        centroid = centroid / norm if norm else centroid
        size[members] = len(members)
        purity[members] = df.loc[members, "label"].value_counts().iloc[0] / len(members)
        dist[members] = np.clip(1.0 - x[members] @ centroid, 0.0, 2.0)
    df["cluster_size"] = size
    df["label_purity"] = purity
    df["dist_to_centroid"] = dist
    return df


def run(ctx, embedder=None) -> dict[str, Any]:
    """Cluster the current micro-instructions and MERGE the assignments (``embedder`` may be
    injected; default: built from ``cluster.embedder``)."""
    from pld_spark.storage.catalog import INSTRUCTION_CLUSTERS

    cfg, store, spark = ctx.cfg, ctx.store, ctx.spark
    ccfg = cfg.cluster
    pdf = current_micro(ctx).select(*INPUT_COLUMNS).toPandas()
    if embedder is None:
        client = ctx.teacher if ccfg.embedder.type == "llamacpp" and not ccfg.embedder.model else None
        embedder = build_embedder(ccfg.embedder, client=client, seed=ccfg.clusterer.seed)
    out = transform(pdf, ccfg, embedder)
    prm = json.dumps({"clusterer": params(ccfg.clusterer), "embedder": ccfg.embedder.model_dump(mode="json"),
                      "per_label": ccfg.per_label, "include_invalid": ccfg.include_invalid}, sort_keys=True)
    now = datetime.now(timezone.utc)

    def _num(v, cast):
        return None if v != v else cast(v)  # NaN -> NULL

    records = [
        (ctx.run_id, r.micro_id, r.example_id, r.label, int(r.cluster_id), _num(r.cluster_size, int),
         _num(r.label_purity, float), _num(r.dist_to_centroid, float), describe(ccfg.embedder),
         ccfg.clusterer.type, prm, ctx.run_id, now)
        for r in out.itertuples(index=False)
    ]
    if records:
        store.merge("instruction_clusters", spark.createDataFrame(records, INSTRUCTION_CLUSTERS.ddl), update=True)
    else:
        log.warning("cluster: no valid micro-instructions to cluster; consolidate will fall back to one rule per label")
    ids = out["cluster_id"].tolist() if len(out) else []
    clusters = sorted(set(ids) - {-1})
    sizes = [ids.count(c) for c in clusters]
    counts = {"rules": len(ids), "clusters": len(clusters), "noise": ids.count(-1),
              "largest_cluster": max(sizes) if sizes else 0,
              "mean_label_purity": round(float(out.loc[out.cluster_id >= 0, "label_purity"].mean()), 4)
              if clusters else None,
              "embedder": describe(ccfg.embedder), "clusterer": ccfg.clusterer.type, "cluster_run_id": ctx.run_id}
    ctx.record.add_counts(STAGE, **counts)
    return counts
