"""Choosing between student prompts on the validation split: one scorer for every decision.

Rule selection, the conflict loop, the promotion gate and evaluation all compare prompts the same
way (:class:`PromptJudge`):

1. the student scores the rows once per prompt with raw label scores (``classify`` with no
   calibration; scores are cached by content, so a prompt scored once is free afterwards);
2. the prompt's calibration is chosen on validation (``student.calibration: auto``: the best of
   none / val_centred / prior / fitted offsets, :func:`pld_spark.llm.calibrate.choose`), or the
   configured per-split method is applied over the whole split (``none``, ``batch``);
3. two prompts are compared on the same rows with a paired bootstrap of the macro-F1 difference
   (:func:`pld_spark.metrics.paired_bootstrap`), never by their marginal scores alone.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from pld_spark.llm.calibrate import Calibration, calibrate, choose
from pld_spark.metrics import macro_f1, paired_bootstrap

log = logging.getLogger(__name__)

NO_LABEL = "<none>"


@dataclass
class Scored:
    """A prompt scored on some rows: its calibration, predictions and macro-F1 on them."""

    text: str
    calibration: Calibration | str
    preds: list[str]
    f1: float
    raw: list[dict[str, float] | None] = field(repr=False, default_factory=list)

    @property
    def calibration_json(self) -> str | None:
        return self.calibration.to_json() if isinstance(self.calibration, Calibration) else None


class PromptJudge:
    """Scores prompts on rows (dicts with ``input_text`` and ``label``) with one student.

    ``calibration``: ``auto`` (chosen per prompt on the rows it is fitted on), or a method applied
    over the scored rows (``none``, ``batch``). ``prior``: train label counts (for ``prior``)."""

    def __init__(self, student, labels: Sequence[str], calibration: str = "auto",
                 prior: dict[str, float] | None = None, batch_size: int = 64, bootstrap: int = 1000, seed: int = 0,
                 folds: int = 0):
        self.student = student
        self.labels = list(labels)
        self.calibration = "batch" if calibration == "content_free" else calibration
        self.prior = prior
        self.batch_size = batch_size
        self.bootstrap = bootstrap
        self.seed = seed
        self.folds = folds

    @classmethod
    def from_ctx(cls, ctx, train_rows: Sequence[dict] | None = None, **kw) -> "PromptJudge":
        prior = dict(Counter(r["label"] for r in train_rows)) if train_rows else None
        return cls(ctx.student, ctx.cfg.task.label_names, ctx.cfg.student.calibration, prior,
                   bootstrap=ctx.cfg.evaluate.bootstrap, seed=ctx.cfg.evaluate.seed,
                   folds=ctx.cfg.student.calibration_folds, **kw)

    def raw(self, text: str, rows: Sequence[dict]) -> list[dict[str, float] | None]:
        """Raw label log-probabilities per row (None where the student failed)."""
        out: list[dict[str, float] | None] = []
        texts = [r["input_text"] for r in rows]
        for i in range(0, len(texts), self.batch_size):
            for res in self.student.classify(text, texts[i:i + self.batch_size], self.labels, calibration="none"):
                out.append(dict(res.raw_logprobs) if res.error is None and res.raw_logprobs else None)
        return out

    def predict(self, raw: Sequence[dict | None], calibration: Calibration | str) -> list[str]:
        if isinstance(calibration, Calibration):
            probs = calibration.apply(raw, self.labels)
        else:
            probs = calibrate(raw, self.labels, calibration)
        return [max(self.labels, key=lambda lab: (p[lab], -self.labels.index(lab))) if p else NO_LABEL for p in probs]

    def fit(self, text: str, rows: Sequence[dict]) -> Scored:
        """Score ``text`` on ``rows`` and choose its calibration on them (the validation split)."""
        raw = self.raw(text, rows)
        gold = [r["label"] for r in rows]
        cal: Calibration | str = (choose(raw, gold, self.labels, self.prior, folds=self.folds) if self.calibration == "auto"
                                  else self.calibration)
        preds = self.predict(raw, cal)
        return Scored(text, cal, preds, macro_f1(gold, preds, self.labels), raw)

    def apply(self, text: str, rows: Sequence[dict], calibration: Calibration | str) -> Scored:
        """Score ``text`` on ``rows`` with a calibration chosen elsewhere (e.g. train rows, test)."""
        raw = self.raw(text, rows)
        preds = self.predict(raw, calibration)
        return Scored(text, calibration, preds, macro_f1([r["label"] for r in rows], preds, self.labels), raw)

    def compare(self, rows: Sequence[dict], a: Scored, b: Scored) -> dict[str, Any]:
        """Paired bootstrap of macro-F1(a) - macro-F1(b) on the same rows."""
        return paired_bootstrap([r["label"] for r in rows], a.preds, b.preds, self.labels,
                                n_resamples=self.bootstrap, seed=self.seed)


def beats(stat: dict[str, Any], margin: float = 0.0) -> bool:
    """The paired comparison says A is better than B by more than ``margin`` (CI above it)."""
    return stat["ci_low"] > margin
