"""Evaluation metrics over a fixed label set (pure numpy; no Spark, no model).

Conventions, chosen once and used everywhere:

- Every label of the task's label set counts in macro-F1, even one with no support in the
  sample (its F1 is then 0: ``zero_division = 0``, as scikit-learn's default). Macro-F1 is
  therefore comparable across conditions scored on the same split.
- A failed prediction (``None``, an error, or a label outside the set) is **wrong**: it
  counts in the support of its true class (lowering recall) and in no class's predictions.
  The confusion matrix is square over the label set; failures are counted separately.
- The 95% CI of macro-F1 is a seeded percentile bootstrap over examples.
- Latency percentiles use numpy's linear interpolation.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _encode(values: Sequence[Any], labels: Sequence[str]) -> np.ndarray:
    """Label index per value; -1 for a failure (None, NaN, or outside the label set)."""
    pos = {lab: i for i, lab in enumerate(labels)}
    out = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, str) and v in pos:
            out[i] = pos[v]
    return out


def confusion(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, failures): ``matrix[i, j]`` counts true label i predicted as j; ``failures[i]``
    counts true label i with no valid prediction. Rows whose *true* label is not in the set
    are ignored (ingest guarantees there are none)."""
    t = _encode(y_true, labels)
    p = _encode(y_pred, labels)
    k = len(labels)
    keep = t >= 0
    t, p = t[keep], p[keep]
    ok = p >= 0
    mat = np.zeros((k, k), dtype=np.int64)
    np.add.at(mat, (t[ok], p[ok]), 1)
    failures = np.bincount(t[~ok], minlength=k).astype(np.int64)
    return mat, failures


def _prf_from_counts(mat: np.ndarray, failures: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(mat).astype(float)
    pred_n = mat.sum(axis=0).astype(float)
    support = mat.sum(axis=1).astype(float) + failures
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_n > 0, tp / pred_n, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return precision, recall, f1, support


def macro_f1(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[str]) -> float:
    """Unweighted mean F1 over every label of ``labels`` (failures count as wrong)."""
    mat, failures = confusion(y_true, y_pred, labels)
    return float(_prf_from_counts(mat, failures)[2].mean())


def classification_report(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[str]) -> dict[str, Any]:
    """Macro-F1, accuracy, per-class precision/recall/F1/support, confusion matrix, failures."""
    mat, failures = confusion(y_true, y_pred, labels)
    precision, recall, f1, support = _prf_from_counts(mat, failures)
    n = int(mat.sum() + failures.sum())
    return {
        "n": n,
        "macro_f1": float(f1.mean()),
        "accuracy": float(np.trace(mat) / n) if n else 0.0,
        "errors": int(failures.sum()),
        "per_class": {lab: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, lab in enumerate(labels)},
        "confusion": {"labels": list(labels), "matrix": mat.tolist(), "failures": failures.tolist()},
    }


def bootstrap_macro_f1(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[str], n_resamples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of macro-F1: resample examples with replacement ``n_resamples``
    times (seeded), recompute macro-F1, take the (1-level)/2 and (1+level)/2 quantiles."""
    t = _encode(y_true, labels)
    p = _encode(y_pred, labels)
    keep = t >= 0
    t, p = t[keep], p[keep]
    n, k = len(t), len(labels)
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    ok = p >= 0
    # One flat bincount per resample: cell id true*(k+1) + (pred or k for a failure).
    cell = t * (k + 1) + np.where(ok, p, k)
    scores = np.empty(n_resamples)
    for b in range(n_resamples):
        counts = np.bincount(cell[idx[b]], minlength=k * (k + 1)).reshape(k, k + 1)
        scores[b] = _prf_from_counts(counts[:, :k], counts[:, k])[2].mean()
    lo, hi = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap(y_true: Sequence[Any], pred_a: Sequence[Any], pred_b: Sequence[Any], labels: Sequence[str],
                     n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Paired comparison of two conditions on the same rows: the macro-F1 difference ``a - b``
    and its percentile bootstrap CI, resampling rows (each resample scores both conditions on
    the same rows, so row difficulty cancels out). Also the share of resamples where ``a`` wins.

    Returns ``{"delta", "ci_low", "ci_high", "p_a_better", "n"}``. Rows whose gold label is not
    in ``labels`` are dropped; a failed prediction (None or outside the set) counts as wrong."""
    t = _encode(y_true, labels)
    a = _encode(pred_a, labels)
    b = _encode(pred_b, labels)
    if not (len(t) == len(a) == len(b)):
        raise ValueError(f"paired comparison needs the same rows: {len(t)} gold, {len(a)} and {len(b)} predictions")
    keep = t >= 0
    t, a, b = t[keep], a[keep], b[keep]
    n, k = len(t), len(labels)
    if n == 0:
        return {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_a_better": 0.5, "n": 0}
    cell_a = t * (k + 1) + np.where(a >= 0, a, k)
    cell_b = t * (k + 1) + np.where(b >= 0, b, k)

    def f1(cells: np.ndarray) -> float:
        counts = np.bincount(cells, minlength=k * (k + 1)).reshape(k, k + 1)
        return float(_prf_from_counts(counts[:, :k], counts[:, k])[2].mean())

    delta = f1(cell_a) - f1(cell_b)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        diffs[i] = f1(cell_a[idx]) - f1(cell_b[idx])
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"delta": float(delta), "ci_low": float(lo), "ci_high": float(hi),
            "p_a_better": float((diffs > 0).mean() + 0.5 * (diffs == 0).mean()), "n": int(n)}


def mcnemar(y_true: Sequence[Any], pred_a: Sequence[Any], pred_b: Sequence[Any]) -> dict[str, float]:
    """McNemar's exact test on the discordant pairs (rows exactly one of the two gets right):
    ``{"a_only", "b_only", "p_value"}`` (two-sided binomial test with p = 1/2)."""
    from math import comb

    a_ok = [x == g for x, g in zip(pred_a, y_true)]
    b_ok = [x == g for x, g in zip(pred_b, y_true)]
    a_only = sum(1 for x, y in zip(a_ok, b_ok) if x and not y)
    b_only = sum(1 for x, y in zip(a_ok, b_ok) if y and not x)
    n = a_only + b_only
    if n == 0:
        return {"a_only": 0, "b_only": 0, "p_value": 1.0}
    tail = sum(comb(n, i) for i in range(0, min(a_only, b_only) + 1)) / 2 ** n
    return {"a_only": a_only, "b_only": b_only, "p_value": float(min(1.0, 2 * tail))}


def latency_stats(latencies: Sequence[float | None]) -> dict[str, float | None]:
    """p50 / p95 / mean / first (the first request: cold prefill, no prefix reuse yet).

    ``None``/NaN entries (failed rows with no timing) are ignored."""
    arr = np.array([np.nan if v is None else float(v) for v in latencies], dtype=float)
    first = float(arr[0]) if len(arr) and not np.isnan(arr[0]) else None
    arr = arr[~np.isnan(arr)]
    if not len(arr):
        return {"p50": None, "p95": None, "mean": None, "first": first}
    p50, p95 = np.percentile(arr, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "mean": float(arr.mean()), "first": first}


def token_stats(tokens_in: Sequence[int | None], tokens_out: Sequence[int | None],
                prefix_reused: Sequence[int | None]) -> dict[str, float]:
    """Mean prompt and output tokens per example; prefix reuse as the share of examples that
    reused any cached prefix (``prefix_hit_rate``) and the share of prompt tokens served from
    the cache (``prefix_reused_share``)."""
    def arr(xs):
        return np.array([0 if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in xs], dtype=float)

    tin, tout, reused = arr(tokens_in), arr(tokens_out), arr(prefix_reused)
    n = len(tin)
    if n == 0:
        return {"prompt_tokens_mean": 0.0, "output_tokens_mean": 0.0, "prefix_hit_rate": 0.0,
                "prefix_reused_share": 0.0, "prefix_reused_mean": 0.0}
    return {
        "prompt_tokens_mean": float(tin.mean()),
        "output_tokens_mean": float(tout.mean()),
        "prefix_hit_rate": float((reused > 0).mean()),
        "prefix_reused_share": float(reused.sum() / tin.sum()) if tin.sum() > 0 else 0.0,
        "prefix_reused_mean": float(reused.mean()),
    }


def condition_metrics(pdf, labels: Sequence[str], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All metrics of one condition from a pandas frame with columns ``gold``, ``label``
    (prediction), ``latency_s``, ``tokens_in``, ``tokens_out``, ``prefix_reused_tokens``,
    ``error``. A row with an error counts as wrong whatever its label."""
    pred = [None if (isinstance(e, str) and e) else lab for lab, e in zip(pdf["label"], pdf["error"])]
    gold = list(pdf["gold"])
    rep = classification_report(gold, pred, labels)
    lo, hi = bootstrap_macro_f1(gold, pred, labels, n_resamples=n_resamples, seed=seed)
    lat = latency_stats(list(pdf["latency_s"]))
    tok = token_stats(list(pdf["tokens_in"]), list(pdf["tokens_out"]), list(pdf["prefix_reused_tokens"]))
    return {**rep, "ci_low": lo, "ci_high": hi,
            "latency_p50": lat["p50"], "latency_p95": lat["p95"], "latency_mean": lat["mean"],
            "latency_first": lat["first"], **tok}
