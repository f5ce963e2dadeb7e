"""select: the clustered prompt's rules, each judged by the student on validation -> ``rule_evaluations``,
a ``pld_selected`` prompt (alias ``selected``) and ``prompt_calibrations``.

Not every consolidated rule helps: a narrow or misleading rule can lower the student's
macro-F1. Backward ablation (``select.mode: backward``) scores the prompt on the validation
split, then the prompt without each rule in turn (prefix reuse makes each pass cheap after its
first input; every prompt gets its own calibration chosen on validation, :mod:`pld_spark.validation`).
A rule's *contribution* is the macro-F1 it adds (full minus without). Rules whose removal raises
val macro-F1 by more than ``select.min_gain`` are dropped together, and the reduced prompt replaces
the full one only if a paired bootstrap on validation favours it in at least
``select.accept_confidence`` of the resamples (the loop's acceptance test); else every rule
stays, and the run says why. A bare gain is not enough: on 240 val rows a few changed answers
move macro-F1 by a point or two, and a reduced prompt chosen on such a gain lost 0.042 on test
(BENCHMARKS.md). With ``select.coverage`` each rule's coverage is recorded too: the share of its
cluster's train examples the student labels correctly with the selected prompt.

The loop (``resolve``) starts from the selected prompt.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

STAGE = "select"
KIND = "pld_selected"


def ablate(rules: Sequence[dict], val: Sequence[dict], *, fit: Callable[[list[dict]], Any], min_gain: float = 0.0,
           compare: Callable[[Any, Any], dict] | None = None, confidence: float = 0.0
           ) -> tuple[list[dict], dict[str, float], dict[str, float], Any, Any, str]:
    """Backward ablation over plain data. ``fit(rules) -> Scored`` (a prompt built from the rules,
    scored on val with its calibration); ``compare(a, b)`` the paired bootstrap of a - b on val
    (``p_a_better``), which must reach ``confidence`` for the reduced prompt to replace the full one.
    Returns (kept rules, contribution per rule id, val F1 without each rule, the full prompt's
    score, the kept prompt's score, a note). Pure."""
    full = fit(list(rules))
    contribution, without = {}, {}
    if len(rules) < 2:
        return list(rules), {r["rule_id"]: 0.0 for r in rules}, {}, full, full, "fewer than two rules: nothing to ablate"
    for r in rules:
        s = fit([x for x in rules if x["rule_id"] != r["rule_id"]])
        without[r["rule_id"]] = s.f1
        contribution[r["rule_id"]] = full.f1 - s.f1
    drop = {rid for rid, c in contribution.items() if c < -min_gain}
    if not drop:
        return list(rules), contribution, without, full, full, "every rule contributes on val"
    if len(drop) == len(rules):  # keep the most useful one: a rule prompt needs a rule
        drop.discard(max(rules, key=lambda r: (contribution[r["rule_id"]], r["rule_id"]))["rule_id"])
    kept = [r for r in rules if r["rule_id"] not in drop]
    reduced = fit(kept)
    if reduced.f1 < full.f1:
        return (list(rules), contribution, without, full, full, f"dropping the {len(drop)} harmful-looking rule(s) "
                f"together scored {reduced.f1:.4f} < {full.f1:.4f}: kept all")
    p = compare(reduced, full)["p_a_better"] if compare is not None else 1.0
    if p < confidence:
        return (list(rules), contribution, without, full, full, f"dropping {len(drop)} rule(s) scored {full.f1:.4f} -> "
                f"{reduced.f1:.4f}, better in {p:.0%} of paired resamples on val (needs {confidence:.0%}): kept all")
    return (kept, contribution, without, full, reduced, f"dropped {len(drop)} rule(s) whose removal raised val "
            f"macro-F1; {full.f1:.4f} -> {reduced.f1:.4f}, better in {p:.0%} of paired resamples")


def coverage(rules: Sequence[dict], train: Sequence[dict], preds: Sequence[str],
             micro_example: dict[str, str]) -> dict[str, tuple[float | None, int]]:
    """rule_id -> (share of its cluster's train examples predicted right, how many), from the
    rule's ``member_micro_ids`` and ``micro_example`` (micro_id -> example_id). Pure."""
    right = {r["example_id"]: p == r["label"] for r, p in zip(train, preds)}
    out = {}
    for rule in rules:
        ids = [micro_example[m] for m in (rule.get("member_micro_ids") or []) if micro_example.get(m) in right]
        out[rule["rule_id"]] = (sum(right[i] for i in ids) / len(ids) if ids else None, len(ids))
    return out


def run(ctx) -> dict[str, Any]:
    """Select the clustered prompt's rules on validation; alias ``selected`` points at the result."""
    from pld_spark.prompts.rules import build_prompt
    from pld_spark.prompts.versions import ALIAS_CLUSTERED, ALIAS_SELECTED, PromptVersion, PromptVersions
    from pld_spark.storage import readers
    from pld_spark.storage.catalog import RULE_EVALUATIONS
    from pld_spark.storage.writers import frame
    from pld_spark.validation import PromptJudge

    cfg, store, scfg = ctx.cfg, ctx.store, ctx.cfg.select
    versions = PromptVersions(store, cfg.task.name)
    start = versions.resolve(ALIAS_CLUSTERED)
    rules = readers.load_rules(store, versions.get(start.version).rule_ids)
    val, train = readers.example_rows(ctx, "val"), readers.example_rows(ctx, "train")
    judge = PromptJudge.from_ctx(ctx, train)
    reviews = readers.latest_reviews(store)
    pinned = readers.pinned_rules(store, cfg.task.name, reviews)
    shots = readers.prompt_shots(ctx, versions.get(start.version))  # the start prompt's label examples stay
    built: dict[str, Any] = {}

    def fit(rs: list[dict]):
        b = build_prompt(cfg.task, rs, reviews, count_tokens=ctx.student.count_tokens,
                         token_budget=cfg.consolidate.prompt_token_budget, max_rules=cfg.consolidate.max_rules,
                         extra_pinned=pinned, exemplars=cfg.consolidate.exemplars, shots=shots)
        s = judge.fit(b.assembled.text, val)
        built[b.assembled.version] = (b, s)
        return s

    if scfg.mode == "backward":
        kept, contrib, without, full, chosen, note = ablate(
            rules, val, fit=fit, min_gain=scfg.min_gain, compare=lambda a, b: judge.compare(val, a, b),
            confidence=scfg.accept_confidence)
    else:
        full = chosen = fit(rules)
        kept, contrib, without, note = rules, {}, {}, "select.mode is off: every rule kept"
    version = next(v for v, (_, s) in built.items() if s is chosen)
    b = built[version][0]
    versions.write(PromptVersion.from_assembled(cfg.task.name, KIND, b.assembled, parent_version=start.version,
                                                review_ids=b.review_ids, dropped_rule_ids=b.dropped_rule_ids,
                                                run_id=ctx.run_id))
    student_id = f"{ctx.student.backend}:{ctx.student.model_id}"
    for v, (_, s) in built.items():
        if s is chosen or s is full:
            if not isinstance(s.calibration, str):
                versions.set_calibration(v, student_id, s.calibration, ctx.run_id)
    versions.set_alias(ALIAS_SELECTED, version, by="pld select", note=f"run {ctx.run_id}: {note}")
    cov: dict[str, tuple[float | None, int]] = {}
    if scfg.coverage and train:
        micro = readers.current_micro(ctx).select("micro_id", "example_id").collect()
        preds = judge.apply(chosen.text, train, chosen.calibration).preds
        cov = coverage(rules, train, preds, {m.micro_id: m.example_id for m in micro})
    kept_ids = {r["rule_id"] for r in kept}
    now = datetime.now(timezone.utc)
    rows = [{"run_id": ctx.run_id, "prompt_version": start.version, "rule_id": r["rule_id"],
             "contribution": contrib.get(r["rule_id"]), "val_macro_f1_without": without.get(r["rule_id"]),
             "kept": r["rule_id"] in kept_ids, "coverage": cov.get(r["rule_id"], (None, 0))[0],
             "coverage_n": cov.get(r["rule_id"], (None, 0))[1], "note": None, "created_at": now} for r in rules]
    if rows:
        store.merge("rule_evaluations", frame(ctx.spark, RULE_EVALUATIONS, rows), update=True)
    ctx.collect_usage(ctx.student, STAGE)
    counts = {"start_version": start.version, "selected_version": version, "rules": len(rules), "kept": len(kept),
              "val_macro_f1_full": round(full.f1, 4), "val_macro_f1_selected": round(chosen.f1, 4),
              "calibration": getattr(chosen.calibration, "method", chosen.calibration), "note": note,
              "val_rows": len(val)}
    log.info("select: %s", note)
    ctx.record.add_counts(STAGE, **counts)
    return counts
