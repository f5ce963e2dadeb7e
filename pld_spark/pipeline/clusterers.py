"""Clusterers, chosen by ``cluster.clusterer.type`` through a registry.

Input: an L2-normalised matrix (see :mod:`pld_spark.pipeline.embedders`). Output: one integer
label per row, ``-1`` for noise (DBSCAN/HDBSCAN only; k-means and agglomerative assign every
row). All are seeded or deterministic.

- ``dbscan``: ``sklearn.cluster.DBSCAN(metric="cosine", eps, min_samples)`` (paper: 0.4, 6).
- ``hdbscan``: ``sklearn.cluster.HDBSCAN(min_cluster_size=max(2, min_samples), min_samples)``
  on the normalised rows (Euclidean on unit vectors is monotone in cosine distance).
- ``kmeans``: ``KMeans(n_clusters=min(n_clusters, n), random_state=seed, n_init=10)``.
- ``agglomerative``: ``AgglomerativeClustering(n_clusters=min(n_clusters, n), metric="cosine",
  linkage="average")``.
"""
from __future__ import annotations

from typing import Any, Callable

from pld_spark.errors import ConfigError

CLUSTERERS: dict[str, Callable[[Any, Any], Any]] = {}


def register(name: str):
    def deco(fn):
        CLUSTERERS[name] = fn
        return fn
    return deco


@register("dbscan")
def dbscan(x, cfg):
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, metric="cosine").fit_predict(x)


@register("hdbscan")
def hdbscan(x, cfg):
    import numpy as np
    from sklearn.cluster import HDBSCAN

    mcs = max(2, cfg.min_samples)
    if len(x) < mcs:
        return np.full(len(x), -1, dtype=int)
    return HDBSCAN(min_cluster_size=mcs, min_samples=cfg.min_samples, copy=True).fit_predict(x)


@register("kmeans")
def kmeans(x, cfg):
    from sklearn.cluster import KMeans

    k = max(1, min(cfg.n_clusters, len(x)))
    return KMeans(n_clusters=k, random_state=cfg.seed, n_init=10).fit_predict(x)


@register("agglomerative")
def agglomerative(x, cfg):
    import numpy as np
    from sklearn.cluster import AgglomerativeClustering

    k = min(cfg.n_clusters, len(x))
    if k < 2:
        return np.zeros(len(x), dtype=int)
    return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(x)


def cluster_matrix(x, cfg):
    """Labels for the rows of ``x`` with the configured clusterer (empty input -> empty)."""
    import numpy as np

    if len(x) == 0:
        return np.zeros(0, dtype=int)
    try:
        fn = CLUSTERERS[cfg.type]
    except KeyError:
        raise ConfigError(f"unknown cluster.clusterer.type {cfg.type!r}; known: {sorted(CLUSTERERS)}") from None
    if len(x) == 1:
        return np.array([-1 if cfg.type in ("dbscan", "hdbscan") and cfg.min_samples > 1 else 0])
    return np.asarray(fn(x, cfg), dtype=int)


def params(cfg) -> dict[str, Any]:
    """The parameters that matter for this clusterer (stored as JSON with each row)."""
    keys = {"dbscan": ("eps", "min_samples"), "hdbscan": ("min_samples",), "kmeans": ("n_clusters", "seed"),
            "agglomerative": ("n_clusters",)}[cfg.type]
    return {k: getattr(cfg, k) for k in keys}
