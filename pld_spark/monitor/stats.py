"""Pure statistics of the monitor (numpy and scipy; no Spark, no model).

- :func:`compare_stats`: two prompts' predictions on the same gold rows -> macro-F1 of each, the
  paired bootstrap CI of the difference (:func:`pld_spark.metrics.paired_bootstrap`), per-label F1
  and its difference, McNemar's test on the discordant pairs (:func:`pld_spark.metrics.mcnemar`)
  and the rows where the two disagree.
- :func:`psi`, :func:`chi_square`: a day's predicted-label counts against a baseline's.
- :func:`nearest_distances`: cosine distance of each row to its nearest reference row.
- :func:`drift_reasons`: which ``drift.*`` thresholds a day's statistics cross.

Conventions are those of :mod:`pld_spark.metrics`: a failed prediction (None, or a label outside
the set) is wrong; rows whose gold label is outside the label set are dropped (and counted).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from pld_spark.metrics import classification_report, mcnemar, paired_bootstrap

#: share given to a label with no rows on one side, so PSI stays finite (ln(p/0))
PSI_FLOOR = 1e-4
#: characters of an input shown with a disagreement (report and table row)
SNIPPET_CHARS = 300


# ----------------------------------------------------------------------------- comparing two prompts
def _ok(pred: Any, labels: Sequence[str]) -> Any:
    return pred if isinstance(pred, str) and pred in labels else None


def compare_stats(gold: Sequence[Any], pred_a: Sequence[Any], pred_b: Sequence[Any], labels: Sequence[str], *,
                  doc_ids: Sequence[str] | None = None, texts: Sequence[str] | None = None, top: int = 20,
                  n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Prompt A against prompt B on the same rows (``gold[i]``, ``pred_a[i]``, ``pred_b[i]``).

    Returns ``n`` (rows kept), ``dropped`` (gold outside ``labels``), ``macro_f1_a``/``_b``,
    ``delta`` (A - B), ``ci_low``/``ci_high``/``p_a_better`` (paired bootstrap, CI at ``level``), ``mcnemar``
    (``a_only``, ``b_only``, ``p_value``), ``per_label`` (label -> f1_a, f1_b, delta, support),
    ``n_disagree`` and ``disagreements``: the first ``top`` rows where the two answers differ,
    rows exactly one prompt gets right first (those McNemar counts), then rows both get wrong,
    each group in ``doc_ids`` order."""
    labels = list(labels)
    n_all = len(gold)
    if not (n_all == len(pred_a) == len(pred_b)):
        raise ValueError(f"compare needs the same rows: {n_all} gold, {len(pred_a)} and {len(pred_b)} predictions")
    ids = [str(d) for d in doc_ids] if doc_ids is not None else [str(i) for i in range(n_all)]
    keep = [i for i in range(n_all) if isinstance(gold[i], str) and gold[i] in labels]
    g = [gold[i] for i in keep]
    a = [_ok(pred_a[i], labels) for i in keep]
    b = [_ok(pred_b[i], labels) for i in keep]
    rep_a, rep_b = classification_report(g, a, labels), classification_report(g, b, labels)
    boot = paired_bootstrap(g, a, b, labels, n_resamples=n_resamples, seed=seed, level=level)
    mc = mcnemar(g, a, b)
    per_label = {lab: {"f1_a": rep_a["per_class"][lab]["f1"], "f1_b": rep_b["per_class"][lab]["f1"],
                       "delta": rep_a["per_class"][lab]["f1"] - rep_b["per_class"][lab]["f1"],
                       "support": rep_a["per_class"][lab]["support"]} for lab in labels}
    rows = []
    for j, i in enumerate(keep):
        if a[j] == b[j]:
            continue
        right = "a" if a[j] == g[j] else "b" if b[j] == g[j] else "neither"
        text = texts[i] if texts is not None else None
        rows.append({"doc_id": ids[i], "gold": g[j], "a": a[j], "b": b[j], "right": right,
                     "input_text": text[:SNIPPET_CHARS] if isinstance(text, str) else None})
    rows.sort(key=lambda r: (r["right"] == "neither", r["doc_id"]))
    return {"n": len(keep), "dropped": n_all - len(keep), "macro_f1_a": rep_a["macro_f1"],
            "macro_f1_b": rep_b["macro_f1"], "delta": boot["delta"], "ci_low": boot["ci_low"],
            "ci_high": boot["ci_high"], "p_a_better": boot["p_a_better"], "mcnemar": mc, "per_label": per_label,
            "accuracy_a": rep_a["accuracy"], "accuracy_b": rep_b["accuracy"], "n_disagree": len(rows),
            "disagreements": rows[:max(0, top)]}


# ----------------------------------------------------------------------------- label distributions
def _vector(counts: Mapping[str, float], labels: Sequence[str]) -> list[float]:
    return [float(counts.get(lab) or 0) for lab in labels]


def psi(actual: Mapping[str, float], expected: Mapping[str, float], labels: Sequence[str],
        floor: float = PSI_FLOOR) -> float | None:
    """Population stability index of ``actual`` counts against ``expected`` counts over ``labels``:
    ``sum((p - q) * ln(p / q))`` over the labels' shares, each share at least ``floor`` (an
    empty bin on either side would make it infinite). None when either side has no rows."""
    a, e = _vector(actual, labels), _vector(expected, labels)
    if sum(a) <= 0 or sum(e) <= 0:
        return None
    p = [max(x / sum(a), floor) for x in a]
    q = [max(x / sum(e), floor) for x in e]
    return float(sum((pi - qi) * math.log(pi / qi) for pi, qi in zip(p, q)))


def chi_square(actual: Mapping[str, float], expected: Mapping[str, float],
               labels: Sequence[str]) -> tuple[float, float] | None:
    """Chi-square test of homogeneity of two count vectors (a 2 x labels contingency table;
    labels with no rows on either side are left out): ``(statistic, p-value)``. The baseline's own
    sampling error counts too (a baseline from a 40-row test split is not taken as exact). (0, 1)
    when fewer than two labels have rows; None when either side has no rows."""
    from scipy.stats import chi2_contingency

    a, e = _vector(actual, labels), _vector(expected, labels)
    if sum(a) <= 0 or sum(e) <= 0:
        return None
    cols = [i for i in range(len(labels)) if a[i] + e[i] > 0]
    if len(cols) < 2:
        return 0.0, 1.0
    res = chi2_contingency([[a[i] for i in cols], [e[i] for i in cols]], correction=False)
    return float(res[0]), float(res[1])


def nearest_distances(rows, reference):
    """Cosine distance (``1 - cos``) of each row of ``rows`` to its nearest row of ``reference``
    (both L2-normalised matrices, as every embedder returns), clipped to [0, 2]."""
    import numpy as np

    rows, reference = np.asarray(rows, dtype=float), np.asarray(reference, dtype=float)
    if not len(rows) or not len(reference):
        return np.zeros(0)
    return np.clip(1.0 - (rows @ reference.T).max(axis=1), 0.0, 2.0)


def drift_reasons(stats: Mapping[str, Any], cfg) -> list[str]:
    """The thresholds of ``cfg`` (a :class:`~pld_spark.config_sections.DriftConfig`) that a day's
    ``stats`` (n, psi, chi2_p, error_share, input_distance) cross, each named with its value and
    threshold. Nothing crosses on a day with fewer than ``cfg.min_rows`` rows (too few to tell)."""
    if (stats.get("n") or 0) < cfg.min_rows:
        return []
    out = []
    if stats.get("psi") is not None and stats["psi"] > cfg.psi_threshold:
        out.append(f"PSI {stats['psi']:.3f} > drift.psi_threshold {cfg.psi_threshold}")
    if stats.get("chi2_p") is not None and stats["chi2_p"] < cfg.chi2_p_threshold:
        out.append(f"chi-square p {stats['chi2_p']:.2g} < drift.chi2_p_threshold {cfg.chi2_p_threshold}")
    if stats.get("error_share") is not None and stats["error_share"] > cfg.error_share_threshold:
        out.append(f"error share {stats['error_share']:.3f} > drift.error_share_threshold "
                   f"{cfg.error_share_threshold}")
    thr = cfg.input_distance_threshold
    if thr is not None and stats.get("input_distance") is not None and stats["input_distance"] > thr:
        out.append(f"input distance {stats['input_distance']:.3f} > drift.input_distance_threshold {thr}")
    return out
