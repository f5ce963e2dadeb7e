"""Calibration of per-label log-probabilities (pure functions, no model).

Small models put most of their mass on one label whatever the input (a label prior).
Three options, chosen by ``student.calibration``:

- ``none``: softmax of the raw label log-probabilities.
- ``content_free``: contextual calibration (Zhao et al. 2021): subtract the label
  log-probabilities the model gives a content-free input (e.g. ``"N/A"``) with the same
  rule prompt. Costs one extra scoring call per batch.
- ``batch``: subtract, per label, the mean log-probability over the batch (batch-centring).
  Free, but needs a batch that is not all one class (at least a few inputs).

Every function returns probabilities over exactly the given labels that sum to 1.
"""
from __future__ import annotations

import math
from typing import Literal, Mapping, Sequence

Calibration = Literal["none", "content_free", "batch"]
CALIBRATIONS: tuple[str, ...] = ("none", "content_free", "batch")
CONTENT_FREE_INPUT = "N/A"
FLOOR_LOGPROB = -1e4  # stands in for -inf so differences stay finite


def _finite(x: float) -> float:
    if x is None or math.isnan(x):
        return FLOOR_LOGPROB
    return max(FLOOR_LOGPROB, x) if x != math.inf else 0.0


def log_softmax(logps: Mapping[str, float], labels: Sequence[str]) -> dict[str, float]:
    """Renormalise over ``labels`` (missing labels count as the floor)."""
    vals = [_finite(logps.get(lab, FLOOR_LOGPROB)) for lab in labels]
    m = max(vals)
    lse = m + math.log(sum(math.exp(v - m) for v in vals))
    return {lab: v - lse for lab, v in zip(labels, vals)}


def softmax(logps: Mapping[str, float], labels: Sequence[str]) -> dict[str, float]:
    """Probabilities over ``labels`` (sum 1)."""
    ls = log_softmax(logps, labels)
    return {lab: math.exp(v) for lab, v in ls.items()}


def argmax_label(probs: Mapping[str, float], labels: Sequence[str]) -> str:
    """The most probable label; ties go to the earlier label in ``labels`` (deterministic)."""
    best = labels[0]
    for lab in labels[1:]:
        if probs.get(lab, 0.0) > probs.get(best, 0.0):
            best = lab
    return best


def calibrate(raw: Sequence[Mapping[str, float] | None], labels: Sequence[str], method: str = "none",
              content_free: Mapping[str, float] | None = None) -> list[dict[str, float] | None]:
    """Calibrated probabilities per row (``None`` rows stay ``None``: they errored).

    ``raw`` holds per-label log-probabilities (any scale; each row is renormalised first).
    ``content_free`` is required for ``method="content_free"``.
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {method!r}; expected one of {CALIBRATIONS}")
    labels = list(labels)
    norm = [log_softmax(r, labels) if r is not None else None for r in raw]
    if method == "none":
        shift = {lab: 0.0 for lab in labels}
    elif method == "content_free":
        if content_free is None:
            raise ValueError("content_free calibration needs the content-free input's label log-probabilities")
        shift = log_softmax(content_free, labels)
    else:
        ok = [r for r in norm if r is not None]
        shift = {lab: (sum(r[lab] for r in ok) / len(ok) if ok else 0.0) for lab in labels}
    out: list[dict[str, float] | None] = []
    for r in norm:
        if r is None:
            out.append(None)
            continue
        out.append(softmax({lab: r[lab] - shift[lab] for lab in labels}, labels))
    return out
