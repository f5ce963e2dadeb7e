"""Champion/challenger: does the challenger prompt replace ``live``? -> ``promotions`` + the alias.

The weekly distillation's prompt (alias ``distilled``, set by resolve when it beats zero-shot) is
the **challenger**; ``live`` is the **champion**. After resolve moves ``distilled`` (``promotion.auto``)
the two are compared on the same labelled rows (``promotion.split``, val by default) with the paired
statistics of ``pld compare`` (:func:`pld_spark.monitor.stats.compare_stats`: paired bootstrap CI of
the macro-F1 difference at ``promotion.confidence``, per-label F1). :func:`decide` (pure) promotes
only when

- the lower bound of the paired CI of (challenger - champion) is above ``promotion.margin``
  (:func:`pld_spark.validation.beats`), and
- no label's F1 drops by more than ``promotion.max_label_drop``;

otherwise the challenger stays a **candidate** and the reason names the failed condition(s) with
their values. With no champion yet, the first challenger becomes live (reason "no champion").
Every decision is a ``promotions`` row; a manual ``pld prompt promote`` writes one too (decision
``manual``, who did it, no statistics).

Where the predictions come from:

- inside resolve (:func:`after_resolve`): the resolve stage's judge scores both prompts on the
  rows, each with its own calibration chosen on val (as resolve compares prompts); those val
  predictions are stored (condition ``promotion``) so the decision can be recomputed from the table;
- ``pld prompt challenge`` (:func:`run`): stored predictions of both versions on the rows (any
  condition, as ``pld compare``), scoring only the rows a version has none for.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

STAGE = "promotion"
CONDITION = "promotion"
PROMOTED, CANDIDATE, MANUAL = "promoted", "candidate", "manual"
NO_CHAMPION = "no champion"


@dataclass(frozen=True)
class Decision:
    """One champion/challenger decision (the statistics are None when nothing was compared)."""

    decision: str
    reason: str
    n: int | None = None
    challenger_macro_f1: float | None = None
    champion_macro_f1: float | None = None
    statistic: float | None = None  # macro-F1 challenger - champion
    ci_low: float | None = None
    ci_high: float | None = None
    p_better: float | None = None
    worst_label: str | None = None
    worst_label_drop: float | None = None  # largest F1 drop of a label; negative: every label improved
    per_label: dict[str, Any] = field(default_factory=dict)


def decide(gold: Sequence[Any], challenger: Sequence[Any], champion: Sequence[Any], labels: Sequence[str], pcfg, *,
           n_resamples: int = 1000, seed: int = 0) -> Decision:
    """Promote ``challenger`` over ``champion`` (predictions on the same rows as ``gold``)? Pure.

    ``pcfg``: :class:`pld_spark.config_sections.PromotionConfig` (margin, max_label_drop, confidence).
    Labels without gold rows are left out of the per-label check (their F1 is 0 on both sides)."""
    from pld_spark.monitor.stats import compare_stats
    from pld_spark.validation import beats

    st = compare_stats(gold, challenger, champion, labels, top=0, n_resamples=n_resamples, seed=seed,
                       level=pcfg.confidence)
    if st["n"] == 0:
        return Decision(CANDIDATE, "no labelled rows to compare on", n=0)
    drops = {lab: -v["delta"] for lab, v in st["per_label"].items() if v["support"] > 0}
    worst = max(labels, key=lambda lab: drops.get(lab, float("-inf")))
    head = (f"macro-F1 {st['macro_f1_a']:.4f} vs {st['macro_f1_b']:.4f}: challenger - champion "
            f"{st['delta']:+.4f}, {pcfg.confidence:.0%} paired CI [{st['ci_low']:+.4f}, {st['ci_high']:+.4f}], "
            f"n={st['n']}; worst label {worst} F1 {-drops[worst]:+.4f}")
    failed = []
    if not beats(st, pcfg.margin):
        failed.append(f"the CI lower bound {st['ci_low']:+.4f} is not above promotion.margin {pcfg.margin}")
    if drops[worst] > pcfg.max_label_drop:
        failed.append(f"label '{worst}' F1 drops by {drops[worst]:.4f} > promotion.max_label_drop "
                      f"{pcfg.max_label_drop}")
    reason = head + ("; " + " and ".join(failed) if failed else "; beats the champion")
    return Decision(CANDIDATE if failed else PROMOTED, reason, n=st["n"], challenger_macro_f1=st["macro_f1_a"],
                    champion_macro_f1=st["macro_f1_b"], statistic=st["delta"], ci_low=st["ci_low"],
                    ci_high=st["ci_high"], p_better=st["p_a_better"], worst_label=worst,
                    worst_label_drop=drops[worst], per_label=st["per_label"])


def summary_line(d: dict[str, Any]) -> str:
    """One line on a decision (:func:`gate`'s dict) for a command's output."""
    if not d.get("decision"):
        return f"champion/challenger: nothing decided ({d.get('reason')})"
    return (f"champion/challenger: {d.get('challenger_version')} {d['decision']} (live was "
            f"{d.get('champion_version') or 'unset'}): {d.get('reason')}")


# ----------------------------------------------------------------------------- records
def record(ctx, d: Decision, challenger: str, champion: str | None, *, alias: str = "live", split: str | None = None,
           decided_by: str = "pld") -> dict[str, Any]:
    """Write the ``promotions`` row of a decision (MERGE on run, task, alias, challenger); returns it."""
    from pld_spark.storage.catalog import PROMOTIONS
    from pld_spark.storage.writers import frame

    p = ctx.cfg.promotion
    row = {**{k: v for k, v in asdict(d).items() if k != "per_label"}, "per_label": json.dumps(d.per_label,
           sort_keys=True) if d.per_label else None, "task": ctx.cfg.task.name, "alias": alias,
           "challenger_version": challenger, "champion_version": champion, "split": split,
           "confidence": p.confidence if d.statistic is not None else None,
           "margin": p.margin if d.decision != MANUAL else None,
           "max_label_drop": p.max_label_drop if d.decision != MANUAL else None, "decided_by": decided_by,
           "run_id": ctx.run_id, "decided_at": datetime.now(timezone.utc)}
    ctx.store.merge("promotions", frame(ctx.spark, PROMOTIONS, [row]), update=True)
    return row


def manual(ctx, version: str, previous: str | None, alias: str, by: str, note: str = "") -> dict[str, Any]:
    """The ``promotions`` row of a manual ``pld prompt promote``."""
    why = f"manual promotion by {by}" + (f": {note}" if note else "")
    return record(ctx, Decision(MANUAL, why), version, previous, alias=alias, decided_by=by)


# ----------------------------------------------------------------------------- the gate
def gate(ctx, versions, challenger: str, rows: Sequence[dict], predict: Callable[[str, str], list], *,
         split: str, by: str) -> dict[str, Any]:
    """Challenger version vs the current ``live`` on ``rows`` (dicts with ``label``); ``predict(version,
    text)`` -> labels in row order. Moves ``live`` when promoted (and ``promotion.auto``), writes the
    ``promotions`` row; returns the decision as a dict (``decision`` None: nothing to decide)."""
    from pld_spark.prompts.versions import ALIAS_LIVE

    pcfg, labels = ctx.cfg.promotion, ctx.cfg.task.label_names
    champion = versions.aliases().get(ALIAS_LIVE)
    if champion == challenger:
        return {"decision": None, "challenger_version": challenger, "champion_version": champion,
                "reason": f"{challenger} is already live"}
    if champion is None:
        d = Decision(PROMOTED, f"{NO_CHAMPION}: the first challenger becomes live")
    else:
        gold = [r["label"] for r in rows]
        ch, cp = versions.resolve(challenger), versions.resolve(champion)
        d = decide(gold, predict(ch.version, ch.text), predict(cp.version, cp.text), labels, pcfg,
                   n_resamples=ctx.cfg.evaluate.bootstrap, seed=ctx.cfg.evaluate.seed)
    if d.decision == PROMOTED and not pcfg.auto:
        d = Decision(CANDIDATE, d.reason + "; not moved: promotion.auto is false", **{
            k: v for k, v in asdict(d).items() if k not in ("decision", "reason")})
    if d.decision == PROMOTED:
        versions.set_alias(ALIAS_LIVE, challenger, by=by, note=f"run {ctx.run_id}: {d.reason}"[:2000])
        log.info("champion/challenger: %s promoted to live (was %s): %s", challenger, champion, d.reason)
    else:
        log.warning("champion/challenger: %s stays a candidate, live stays %s: %s", challenger, champion, d.reason)
    record(ctx, d, challenger, champion, split=split, decided_by=by)
    out = {"challenger_version": challenger, "champion_version": champion, "split": split,
           **{k: v for k, v in asdict(d).items() if k != "per_label"}}
    ctx.record.add_counts(STAGE, **out)
    return out


def store_predictions(ctx, version: str, rows: Sequence[dict], preds: Sequence[str], calibration: Any) -> None:
    """Val predictions a decision used (condition ``promotion``), so it can be recomputed from ``predictions``."""
    from pld_spark.storage.catalog import PREDICTIONS
    from pld_spark.storage.writers import frame

    labels, now = set(ctx.cfg.task.label_names), datetime.now(timezone.utc)
    cal = getattr(calibration, "method", calibration)
    out = [{"doc_id": r["example_id"], "prompt_version": version, "condition": CONDITION,
            "label": p if p in labels else None, "calibration": str(cal), "backend": ctx.student.backend,
            "model": ctx.student.model_id, "error": None if p in labels else "no label", "run_id": ctx.run_id,
            "scored_at": now} for r, p in zip(rows, preds)]
    if out:
        ctx.commit_predictions(frame(ctx.spark, PREDICTIONS, out))


def after_resolve(ctx, versions, judge, val: Sequence[dict], challenger: str) -> dict[str, Any]:
    """The gate after resolve moved ``distilled`` to ``challenger``: both prompts scored by resolve's judge,
    each with its calibration chosen on ``val``; the rows are ``promotion.split``."""
    from pld_spark.storage.readers import example_rows

    split = ctx.cfg.promotion.split
    rows = list(val) if split == "val" else example_rows(ctx, split)

    def predict(version: str, text: str) -> list:
        fit = judge.fit(text, val)  # label scores are cached by content: the challenger's cost nothing here
        preds = fit.preds if split == "val" else judge.apply(text, rows, fit.calibration).preds
        store_predictions(ctx, version, rows, preds, fit.calibration)
        return preds

    return gate(ctx, versions, challenger, rows, predict, split=split, by="pld resolve")


def run(ctx, challenger: str = "distilled", split: str | None = None) -> dict[str, Any]:
    """``pld prompt challenge``: the gate on stored predictions of both versions (rows a version has no
    prediction for are scored with the student, as ``pld compare`` does)."""
    from pld_spark.monitor.compare import load_rows, score_missing, stored_labels
    from pld_spark.prompts.versions import PromptVersions

    versions = PromptVersions(ctx.store, ctx.cfg.task.name)
    split = split or ctx.cfg.promotion.split
    target = versions.resolve(challenger).version
    pdf, _ = load_rows(ctx, split)
    rows = [{"example_id": d, "input_text": t, "label": lab} for d, t, lab in
            zip(pdf["doc_id"], pdf["input_text"], pdf["label"])]
    ids_df = ctx.spark.createDataFrame([(d,) for d in pdf["doc_id"]], "doc_id STRING")

    def predict(version: str, text: str) -> list:
        got = stored_labels(ctx, version, ids_df)
        missing = pdf[~pdf["doc_id"].isin(list(got))]
        if len(missing):
            got.update(score_missing(ctx, versions, {version: (versions.resolve(version), missing)})[version])
        return [got.get(d) for d in pdf["doc_id"]]

    return gate(ctx, versions, target, rows, predict, split=split, by=f"pld prompt challenge ({ctx.run_id})")
