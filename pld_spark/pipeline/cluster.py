"""cluster: ``micro_instructions`` -> ``instruction_clusters``.

The valid, non-errored micro-instructions of the current train set, teacher and extract
template (all non-errored ones with ``cluster.include_invalid``) are embedded once
(:mod:`pld_spark.pipeline.embedders`) and clustered (:mod:`pld_spark.pipeline.clusterers`)
within each group of ``cluster.group_by`` (default: per label; ``pair`` groups Contract-NLI
rules by hypothesis; null: all together). Noise keeps its row with ``cluster_id = -1`` (size,
purity and distance are NULL for noise). A group whose rules are all noise gets one cluster
around its most central rule and its nearest neighbours (``cluster.central_fallback``,
``assignment = 'central_fallback'``), so no label or hypothesis is left without a rule. Each
row records its group, size, label purity (share of the majority gold label), the member's
cosine distance to the cluster centroid, the embedder, and the clusterer with the parameters it
used per group (e.g. an eps chosen from the data) as JSON.
``cluster_run_id`` is the run id, so several clusterings of the same rules can coexist.

Rules are collected to the driver: one short string per train example is small even at
100k examples, and the scikit-learn clusterers are single-machine anyway.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from pld_spark.pipeline.clusterers import auto_min_samples, cluster_matrix, params
from pld_spark.pipeline.embedders import build_embedder, describe

log = logging.getLogger(__name__)

STAGE = "cluster"
INPUT_COLUMNS = ("micro_id", "example_id", "label", "rule")


def _central_cluster(x, size: int):
    """Positions (within ``x``) of the most central row and its ``size - 1`` nearest neighbours."""
    import numpy as np

    sims = x @ x.T
    center = int(np.argmax(sims.mean(axis=1)))
    return np.argsort(-sims[center], kind="stable")[:size]


def transform(pdf, cluster_cfg, embedder, group_col: str | None = None):
    """pandas (micro_id, example_id, label, rule[, group column]) -> the same rows plus cluster_id,
    cluster_size, label_purity, dist_to_centroid, group_key, assignment; and the parameters used
    per group. Deterministic: rows are sorted by micro_id first and cluster ids are numbered in
    that order (0, 1, ...; -1 = noise)."""
    import numpy as np
    import pandas as pd

    need = list(INPUT_COLUMNS) + ([group_col] if group_col and group_col not in INPUT_COLUMNS else [])
    missing = [c for c in need if c not in pdf.columns]
    if missing:
        from pld_spark.errors import ContractError

        raise ContractError(f"stage '{STAGE}': input is missing columns {missing}")
    df = pdf.sort_values("micro_id").reset_index(drop=True).copy()
    n = len(df)
    cols = ["cluster_id", "cluster_size", "label_purity", "dist_to_centroid"]
    if n == 0:
        return df.assign(**{c: pd.Series(dtype="float64") for c in cols}, group_key=pd.Series(dtype=object),
                         assignment=pd.Series(dtype=object)), {}
    x = embedder(df["rule"].astype(str).tolist())
    keys = df[group_col].astype(str).to_numpy() if group_col else np.full(n, "all", dtype=object)
    raw = np.full(n, -1, dtype=int)
    assignment = np.full(n, "noise", dtype=object)
    used: dict[str, dict] = {}
    next_id = 0
    for key in sorted(set(keys.tolist())):
        idx = np.flatnonzero(keys == key)
        local, prm = cluster_matrix(x[idx], cluster_cfg.clusterer)
        if (local < 0).all() and cluster_cfg.central_fallback:
            size = cluster_cfg.clusterer.min_samples or auto_min_samples(len(idx))
            local = np.full(len(idx), -1)
            local[_central_cluster(x[idx], min(size, len(idx)))] = 0
            prm = {**prm, "fallback": "central"}
            assignment[idx[local == 0]] = "central_fallback"
        else:
            assignment[idx[local >= 0]] = "clustered"
        used[key] = {**prm, "rules": int(len(idx)), "clusters": int(len(set(local.tolist()) - {-1})),
                     "noise": int((local < 0).sum())}
        mapping: dict[int, int] = {}
        for pos, lab in zip(idx, local):  # renumber in micro_id order: ids unique across groups
            if lab < 0:
                continue
            if lab not in mapping:
                mapping[lab] = next_id
                next_id += 1
            raw[pos] = mapping[lab]
    df["cluster_id"] = raw
    size, purity, dist = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for cid in sorted(set(raw.tolist()) - {-1}):
        members = np.flatnonzero(raw == cid)
        centroid = x[members].mean(axis=0)
        norm = np.linalg.norm(centroid)
        centroid = centroid / norm if norm else centroid
        size[members] = len(members)
        purity[members] = df.loc[members, "label"].value_counts().iloc[0] / len(members)
        dist[members] = np.clip(1.0 - x[members] @ centroid, 0.0, 2.0)
    df["cluster_size"], df["label_purity"], df["dist_to_centroid"] = size, purity, dist
    df["group_key"], df["assignment"] = keys, assignment
    return df, used


def run(ctx, embedder=None) -> dict[str, Any]:
    """Cluster the current micro-instructions and MERGE the assignments (``embedder`` may be
    injected; default: built from ``cluster.embedder``)."""
    from pld_spark.storage import readers
    from pld_spark.storage.catalog import INSTRUCTION_CLUSTERS
    from pld_spark.storage.writers import frame

    cfg, store = ctx.cfg, ctx.store
    ccfg = cfg.cluster
    group_col = ccfg.group_by
    micro = readers.current_micro(ctx).select(*INPUT_COLUMNS)
    if group_col and group_col not in INPUT_COLUMNS:
        micro = micro.join(readers.current_examples(ctx, "train").select("example_id", group_col), "example_id")
    pdf = micro.toPandas()
    if embedder is None:
        client = ctx.teacher if ccfg.embedder.type == "llamacpp" and not ccfg.embedder.model else None
        embedder = build_embedder(ccfg.embedder, client=client, seed=ccfg.clusterer.seed)
    out, used = transform(pdf, ccfg, embedder, group_col)
    prm = json.dumps({"clusterer": params(ccfg.clusterer), "embedder": ccfg.embedder.model_dump(mode="json"),
                      "group_by": group_col, "include_invalid": ccfg.include_invalid, "groups": used},
                     sort_keys=True)
    now = datetime.now(timezone.utc)
    emb_name = describe(ccfg.embedder)  # once: for 'auto' it looks up the installed model

    def _num(v, cast):
        return None if v != v else cast(v)  # NaN -> NULL

    rows = [{"cluster_run_id": ctx.run_id, "micro_id": r.micro_id, "example_id": r.example_id, "label": r.label,
             "cluster_id": int(r.cluster_id), "cluster_size": _num(r.cluster_size, int),
             "label_purity": _num(r.label_purity, float), "dist_to_centroid": _num(r.dist_to_centroid, float),
             "embedder": emb_name, "clusterer": ccfg.clusterer.type, "params": prm,
             "run_id": ctx.run_id, "created_at": now, "group_key": r.group_key, "assignment": r.assignment}
            for r in out.itertuples(index=False)]
    if rows:
        store.merge("instruction_clusters", frame(ctx.spark, INSTRUCTION_CLUSTERS, rows), update=True)
    else:
        log.warning("cluster: no valid micro-instructions to cluster; consolidate will fall back to one rule per label")
    ids = out["cluster_id"].tolist() if len(out) else []
    clusters = sorted(set(ids) - {-1})
    sizes = [ids.count(c) for c in clusters]
    counts = {"rules": len(ids), "clusters": len(clusters), "noise": ids.count(-1),
              "noise_share": round(ids.count(-1) / len(ids), 4) if ids else None,
              "central_fallback_groups": sorted(k for k, u in used.items() if u.get("fallback")),
              "largest_cluster": max(sizes) if sizes else 0,
              "mean_label_purity": round(float(out.loc[out.cluster_id >= 0, "label_purity"].mean()), 4)
              if clusters else None,
              "embedder": emb_name, "clusterer": ccfg.clusterer.type, "group_by": group_col,
              "cluster_run_id": ctx.run_id}
    ctx.record.add_counts(STAGE, **counts)
    return counts
