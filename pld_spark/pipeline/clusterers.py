"""Clusterers, chosen by ``cluster.clusterer.type`` through a registry.

Input: an L2-normalised matrix (see :mod:`pld_spark.pipeline.embedders`). Output: one integer
label per row, ``-1`` for noise (DBSCAN/HDBSCAN only; k-means and agglomerative assign every
row), and the parameters actually used (stored with every cluster row). All are seeded or
deterministic.

- ``dbscan``: ``sklearn.cluster.DBSCAN(metric="cosine", eps, min_samples)`` (paper: 0.4, 6).
  ``eps: null`` chooses it from the data: the knee of the sorted distances of each rule to its
  ``min_samples``-th nearest neighbour (the point farthest from the chord of that curve), so
  the radius fits the embedding model instead of being one tuned for another model.
  ``min_samples: null`` scales with the group: ``clamp(round(n / 10), 2, 6)``.
- ``hdbscan``: ``sklearn.cluster.HDBSCAN(min_cluster_size=max(2, min_samples), min_samples)``
  on the normalised rows (Euclidean on unit vectors is monotone in cosine distance).
- ``kmeans``: ``KMeans(n_clusters=min(n_clusters, n), random_state=seed, n_init=10)``.
- ``agglomerative``: ``AgglomerativeClustering(n_clusters=min(n_clusters, n), metric="cosine",
  linkage="average")``.

Adding a clusterer is one :func:`register` decorator: config validation and the stored
parameters read the registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pld_spark.errors import ConfigError

#: what a clusterer returns: labels per row, and the parameters it used
Result = tuple[Any, dict[str, Any]]


@dataclass(frozen=True)
class ClustererSpec:
    """A registered clusterer: ``fn(x, cfg) -> (labels, params used)``, the ``cluster.clusterer``
    fields it reads, and whether it can call rows noise (``-1``)."""

    name: str
    fn: Callable[[Any, Any], Result]
    params: tuple[str, ...] = ()
    noise: bool = False


CLUSTERERS: dict[str, ClustererSpec] = {}


def register(name: str, *, params: tuple[str, ...] = (), noise: bool = False):
    """Register a clusterer. One decorator is the whole extension point: config validation
    (``cluster.clusterer.type``) and the stored parameters read it."""
    def deco(fn):
        CLUSTERERS[name] = ClustererSpec(name, fn, tuple(params), noise)
        return fn
    return deco


def auto_min_samples(n: int) -> int:
    return int(min(6, max(2, round(n / 10))))


def knee_eps(x, min_samples: int, lo: float = 0.05, hi: float = 0.8) -> float:
    """The knee of the sorted k-distance curve (cosine), clamped to [lo, hi]."""
    import numpy as np

    n = len(x)
    k = max(1, min(min_samples, n) - 1)  # DBSCAN counts the point itself in min_samples
    d = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    kth = np.sort(np.sort(d, axis=1)[:, k])
    if n < 3 or kth[-1] - kth[0] < 1e-9:
        return float(np.clip(kth[-1] if n else hi, lo, hi))
    i = np.arange(n, dtype=float)
    # distance of each point of the curve from the chord joining its ends (Kneedle)
    x0, y0, x1, y1 = 0.0, kth[0], n - 1.0, kth[-1]
    dist = np.abs((y1 - y0) * i - (x1 - x0) * kth + x1 * y0 - y1 * x0) / np.hypot(y1 - y0, x1 - x0)
    return float(np.clip(kth[int(np.argmax(dist))], lo, hi))


@register("dbscan", params=("eps", "min_samples"), noise=True)
def dbscan(x, cfg) -> Result:
    from sklearn.cluster import DBSCAN

    ms = cfg.min_samples if cfg.min_samples is not None else auto_min_samples(len(x))
    eps = cfg.eps if cfg.eps is not None else knee_eps(x, ms)
    labels = DBSCAN(eps=eps, min_samples=ms, metric="cosine").fit_predict(x)
    return labels, {"eps": round(float(eps), 4), "min_samples": int(ms),
                    "eps_from": "config" if cfg.eps is not None else "k-distance knee"}


@register("hdbscan", params=("min_samples",), noise=True)
def hdbscan(x, cfg) -> Result:
    import numpy as np
    from sklearn.cluster import HDBSCAN

    ms = cfg.min_samples if cfg.min_samples is not None else auto_min_samples(len(x))
    mcs = max(2, ms)
    if len(x) < mcs:
        return np.full(len(x), -1, dtype=int), {"min_samples": ms}
    return HDBSCAN(min_cluster_size=mcs, min_samples=ms, copy=True).fit_predict(x), {"min_samples": ms}


@register("kmeans", params=("n_clusters", "seed"))
def kmeans(x, cfg) -> Result:
    from sklearn.cluster import KMeans

    k = max(1, min(cfg.n_clusters, len(x)))
    return KMeans(n_clusters=k, random_state=cfg.seed, n_init=10).fit_predict(x), {"n_clusters": k}


@register("agglomerative", params=("n_clusters",))
def agglomerative(x, cfg) -> Result:
    import numpy as np
    from sklearn.cluster import AgglomerativeClustering

    k = min(cfg.n_clusters, len(x))
    if k < 2:
        return np.zeros(len(x), dtype=int), {"n_clusters": k}
    return (AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(x),
            {"n_clusters": k})


def cluster_matrix(x, cfg) -> Result:
    """Labels for the rows of ``x`` with the configured clusterer, and the parameters used."""
    import numpy as np

    spec = get(cfg.type)
    if len(x) == 0:
        return np.zeros(0, dtype=int), {}
    if len(x) == 1:
        alone = spec.noise and (cfg.min_samples is None or cfg.min_samples > 1)
        return np.array([-1 if alone else 0]), {}
    labels, used = spec.fn(x, cfg)
    return np.asarray(labels, dtype=int), used


def get(name: str) -> ClustererSpec:
    try:
        return CLUSTERERS[name]
    except KeyError:
        raise ConfigError(f"unknown cluster.clusterer.type {name!r}; known: {sorted(CLUSTERERS)}") from None


def params(cfg) -> dict[str, Any]:
    """The configured parameters of this clusterer (stored as JSON with each row)."""
    return {k: getattr(cfg, k) for k in get(cfg.type).params}
