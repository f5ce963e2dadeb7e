"""Calibration of per-label log-probabilities (pure functions, no model).

Small models put most of their mass on one label whatever the input (a label prior). Per-batch
options, applied inside ``classify``:

- ``none``: softmax of the raw label log-probabilities.
- ``content_free``: contextual calibration (Zhao et al. 2021): subtract the label
  log-probabilities the model gives a content-free input (e.g. ``"N/A"``) with the same
  rule prompt. Costs one extra scoring call per batch.
- ``batch``: subtract, per label, the mean log-probability over the batch (batch-centring).
  Free, but it assumes the batch is balanced over the labels: a rare label is over-predicted.

Calibration chosen on validation (``student.calibration: auto``, the default): a prompt's
raw label scores on the validation split decide, and the choice is stored with the prompt
version as fixed per-label offsets (:class:`Calibration`), so scoring applies it row by row,
whatever the batch:

- ``none``: offsets 0;
- ``val_centred``: minus the mean validation log-probability per label (batch centring, with the
  validation split as the batch);
- ``prior``: ``val_centred`` plus the log of the train label prior (centring assumes balanced
  labels; this puts the real label frequencies back);
- ``fitted``: offsets fitted to maximise validation macro-F1 (coordinate search from ``prior``).

:func:`choose` keeps the candidate with the best macro-F1 on validation (ties: the simpler). Scored
in-sample, ``fitted`` can never lose to ``prior`` (it starts there and keeps only gains), even where
a rare label has three validation rows and its offset is noise. With ``folds`` >= 2 the candidates
are judged by cross-validated macro-F1 instead and the winner is fitted on the whole split. That is
an option, not the default: on the benchmarks it changed two choices of nine and neither helped on
test (BENCHMARKS.md, issue 19).
Every function returns probabilities over exactly the given labels that sum to 1.
"""
from __future__ import annotations

import math
import json
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

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


# ----------------------------------------------------------------------------- chosen on validation
#: fixed-offset calibrations, simplest first (ties on validation go to the earlier one)
FIXED_METHODS: tuple[str, ...] = ("none", "val_centred", "prior", "fitted")


@dataclass(frozen=True)
class Calibration:
    """Fixed per-label offsets added to the renormalised log-probabilities of every row.

    ``method`` says how they were chosen; ``val_macro_f1`` holds each candidate's validation
    score (the evidence for the choice). Serialised as JSON with the prompt version."""

    method: str
    offsets: dict[str, float] = field(default_factory=dict)
    val_macro_f1: dict[str, float] = field(default_factory=dict)
    n_val: int = 0
    #: each candidate's macro-F1 on out-of-fold validation rows (what decided, with folds >= 2; empty
    #: when judged in-sample, the default, or when the split was too small to cross-validate)
    cv_macro_f1: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "Calibration | None":
        if not text:
            return None
        d = json.loads(text)
        return cls(d["method"], {k: float(v) for k, v in (d.get("offsets") or {}).items()},
                   {k: float(v) for k, v in (d.get("val_macro_f1") or {}).items()}, int(d.get("n_val") or 0),
                   {k: float(v) for k, v in (d.get("cv_macro_f1") or {}).items()})

    def apply(self, raw: Sequence[Mapping[str, float] | None], labels: Sequence[str]) -> list[dict[str, float] | None]:
        """Calibrated probabilities per row (``None`` rows stay ``None``)."""
        out: list[dict[str, float] | None] = []
        for r in raw:
            if r is None:
                out.append(None)
                continue
            n = log_softmax(r, labels)
            out.append(softmax({lab: n[lab] + self.offsets.get(lab, 0.0) for lab in labels}, labels))
        return out


def _norm_rows(raw: Sequence[Mapping[str, float] | None], labels: Sequence[str]) -> list[dict[str, float] | None]:
    return [log_softmax(r, labels) if r is not None else None for r in raw]


def _predict(norm: Sequence[dict[str, float] | None], labels: Sequence[str], offsets: Mapping[str, float]) -> list:
    out = []
    for r in norm:
        if r is None:
            out.append(None)
            continue
        best, best_v = None, -math.inf
        for lab in labels:
            v = r[lab] + offsets.get(lab, 0.0)
            if v > best_v:
                best, best_v = lab, v
        out.append(best)
    return out


def centring_offsets(norm: Sequence[dict[str, float] | None], labels: Sequence[str]) -> dict[str, float]:
    ok = [r for r in norm if r is not None]
    return {lab: (-sum(r[lab] for r in ok) / len(ok) if ok else 0.0) for lab in labels}


def prior_offsets(centred: Mapping[str, float], prior: Mapping[str, float] | None, labels: Sequence[str]) -> dict[str, float]:
    if not prior:
        return dict(centred)
    total = sum(max(0.0, float(prior.get(lab, 0.0))) for lab in labels) or 1.0
    return {lab: centred[lab] + math.log(max(float(prior.get(lab, 0.0)) / total, 1e-4)) for lab in labels}


def fit_offsets(norm: Sequence[dict[str, float] | None], gold: Sequence[str], labels: Sequence[str],
                start: Mapping[str, float], *, passes: int = 3,
                steps: Sequence[float] = (-2.0, -1.0, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1.0, 2.0)) -> dict[str, float]:
    """Per-label offsets maximising macro-F1 on (``norm``, ``gold``) by coordinate search from
    ``start``: each pass tries each step on each label and keeps a change only if it raises the
    score (strictly), so the result is deterministic and never worse than ``start``."""
    from pld_spark.metrics import macro_f1

    cur = {lab: float(start.get(lab, 0.0)) for lab in labels}
    best = macro_f1(gold, _predict(norm, labels, cur), labels)
    for _ in range(passes):
        improved = False
        for lab in labels[1:]:  # offsets are defined up to a constant: the first label stays fixed
            for step in steps:
                trial = {**cur, lab: cur[lab] + step}
                score = macro_f1(gold, _predict(norm, labels, trial), labels)
                if score > best + 1e-12:
                    cur, best, improved = trial, score, True
        if not improved:
            break
    return cur


def _candidates(norm: Sequence[dict[str, float] | None], gold: Sequence[str], labels: Sequence[str],
                prior: Mapping[str, float] | None, methods: Sequence[str]) -> dict[str, dict[str, float]]:
    centred = centring_offsets(norm, labels)
    cands: dict[str, dict[str, float]] = {"none": {lab: 0.0 for lab in labels}, "val_centred": centred,
                                          "prior": prior_offsets(centred, prior, labels)}
    if "fitted" in methods:
        cands["fitted"] = fit_offsets(norm, gold, labels, cands["prior"])
    return cands


def stratified_folds(gold: Sequence[str], k: int, seed: int = 0) -> list[int]:
    """A fold number per row: each label's rows dealt round-robin over ``k`` folds after a seeded
    shuffle, so every fold holds about 1/k of each label (deterministic for a seed)."""
    import random

    rng = random.Random(seed)
    fold = [0] * len(gold)
    start = 0
    for lab in sorted(set(gold), key=str):
        idx = [i for i, g in enumerate(gold) if g == lab]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            fold[i] = (start + j) % k
        start += len(idx)  # the next label's first row goes to the next fold: folds stay the same size
    return fold


def cross_validated_scores(norm: Sequence[dict[str, float] | None], gold: Sequence[str], labels: Sequence[str],
                           prior: Mapping[str, float] | None, methods: Sequence[str], folds: int,
                           seed: int = 0) -> dict[str, float]:
    """Macro-F1 of each method's out-of-fold predictions: the offsets are computed on k-1 folds
    and predict the held-out one; the predictions of all folds are scored together."""
    from pld_spark.metrics import macro_f1

    fold = stratified_folds(gold, folds, seed)
    pred: dict[str, list] = {m: [None] * len(gold) for m in methods}
    for f in range(folds):
        fit_i = [i for i in range(len(gold)) if fold[i] != f]
        held = [i for i in range(len(gold)) if fold[i] == f]
        if not held:
            continue
        cands = _candidates([norm[i] for i in fit_i], [gold[i] for i in fit_i], labels, prior, methods)
        for m in methods:
            for i, p in zip(held, _predict([norm[i] for i in held], labels, cands[m])):
                pred[m][i] = p
    return {m: macro_f1(gold, pred[m], labels) for m in methods}


#: fewer validation rows than this: the candidates are judged in-sample (too few to hold rows out)
MIN_ROWS_TO_CROSS_VALIDATE = 20


def choose(raw: Sequence[Mapping[str, float] | None], gold: Sequence[str], labels: Sequence[str],
           prior: Mapping[str, float] | None = None, methods: Sequence[str] = FIXED_METHODS,
           folds: int = 0, seed: int = 0) -> Calibration:
    """The best fixed-offset calibration on validation (``raw``: the prompt's raw label scores of the
    validation rows, ``gold`` their labels; ``prior``: train label counts or shares).

    Chosen by in-sample macro-F1 on those rows, or with ``folds`` >= 2 (and at least
    :data:`MIN_ROWS_TO_CROSS_VALIDATE` rows) by ``folds``-fold cross-validated macro-F1; the winner's
    offsets are fitted on all of them."""
    from pld_spark.metrics import macro_f1

    labels = list(labels)
    unknown = [m for m in methods if m not in FIXED_METHODS]
    if unknown:
        raise ValueError(f"unknown calibration methods {unknown}; expected some of {FIXED_METHODS}")
    norm = _norm_rows(raw, labels)
    cands = _candidates(norm, gold, labels, prior, methods)
    scores = {m: macro_f1(gold, _predict(norm, labels, cands[m]), labels) for m in methods}
    cv = (cross_validated_scores(norm, gold, labels, prior, methods, folds, seed)
          if folds >= 2 and len(gold) >= MIN_ROWS_TO_CROSS_VALIDATE else {})
    judge = cv or scores
    best = max(methods, key=lambda m: (round(judge[m], 12), -list(FIXED_METHODS).index(m)))
    return Calibration(best, {k: round(v, 6) for k, v in cands[best].items()},
                       {m: round(v, 6) for m, v in scores.items()}, n_val=len(gold),
                       cv_macro_f1={m: round(v, 6) for m, v in cv.items()})
