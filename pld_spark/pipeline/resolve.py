"""resolve: the conflict-resolution loop -> ``resolution_rounds``, new ``rules``/``prompts``.

Start: the task's ``clustered`` prompt (latest alias row) and its rules. Round 0 scores it.
Round t (1..``resolve.max_rounds``):

1. The student (``ctx.student.classify`` in-process on the driver, batches of
   ``resolve.score_batch_size``) has scored a seeded sample of ``resolve.train_sample`` train
   rows and all val rows with the current prompt.
2. A stratified, seeded sample of train failures (up to ``failures_per_class`` per gold
   label, spread round-robin over the (gold, predicted) strata) and successes (up to
   ``successes_per_class`` per gold label) goes to the teacher with the current rules.
3. The teacher returns operations ``[{op: modify|add|delete, rule_id?, instruction?, label?}]``;
   valid ones are applied (invalid ones are skipped with a reason in the rule diff), and the
   candidate prompt is assembled with the same reviews and budget as consolidate.
4. The candidate is scored on val. It is accepted only if its val macro-F1 is at least the
   best so far plus ``min_delta``; otherwise the loop stops. No failures, no valid operation
   or an unchanged prompt also stop it.

The run's output is the best-scoring prompt: alias ``distilled`` points at it (the starting
prompt when nothing beat it, so the loop can never ship a worse prompt than it started from).
Every round writes a ``resolution_rounds`` row (metrics, sample ids, rule diff JSON,
accepted). Rejected candidates are stored too (kind ``pld_rejected``) so they can be
inspected; accepted ones have kind ``pld_resolved``. Macro-F1 is scikit-learn's
``f1_score(average='macro', labels=<label set>)``; a student error counts as a wrong answer.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from pld_spark.errors import ContractError
from pld_spark.pipeline.consolidate import (ClusterRule, build_prompt, canonical_label, latest_reviews, pinned_rules,
                                            rule_id, set_alias, student_token_counter, write_prompt, write_rules)
from pld_spark.prompts.teacher import parse_operations, render_resolve, validate_rule

log = logging.getLogger(__name__)

STAGE = "resolve"
KIND_ACCEPTED = "pld_resolved"
KIND_REJECTED = "pld_rejected"
ALIAS = "distilled"
START_ALIAS = "clustered"
NO_LABEL = "<none>"


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Macro-F1 over the label set (a prediction outside it only costs recall)."""
    from sklearn.metrics import f1_score

    if not gold:
        return 0.0
    return float(f1_score(list(gold), list(pred), average="macro", labels=list(labels), zero_division=0))


def score(student, system: str, texts: Sequence[str], labels: Sequence[str], calibration: str,
          batch_size: int = 16) -> list[str]:
    """Student labels for ``texts`` (``NO_LABEL`` where the student returned an error)."""
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        res = student.classify(system, list(texts[i: i + batch_size]), list(labels), calibration=calibration)
        out.extend(r.label if (r.error is None and r.label is not None) else NO_LABEL for r in res)
    return out


def stratified_sample(rows: Sequence[dict], per_class: int, seed: int, labels: Sequence[str]) -> list[dict]:
    """Up to ``per_class`` rows per gold label, round-robin over that label's predicted-label
    strata (each stratum shuffled with ``seed``): every kind of confusion gets a turn."""
    rng = random.Random(seed)
    picked: list[dict] = []
    for gold in labels:
        strata: dict[str, list[dict]] = {}
        for r in sorted((r for r in rows if r["label"] == gold), key=lambda r: r["example_id"]):
            strata.setdefault(r["pred"], []).append(r)
        queues = []
        for key in sorted(strata):
            q = list(strata[key])
            rng.shuffle(q)
            queues.append(q)
        taken = 0
        while taken < per_class and any(queues):
            for q in queues:
                if q and taken < per_class:
                    picked.append(q.pop(0))
                    taken += 1
    return picked


@dataclass
class RuleSet:
    """The rules behind one prompt: rule dicts with rule_id, label, instruction, support, topic."""

    rules: list[dict]

    def ids(self) -> list[str]:
        return [r["rule_id"] for r in self.rules]


def apply_operations(ruleset: RuleSet, ops: Sequence[dict], label_names: Sequence[str], *,
                     source_example_ids: Sequence[str] = (), limits=None) -> tuple[RuleSet, list[ClusterRule], dict]:
    """Apply teacher operations -> (new rule set, new rule rows, diff). Pure.

    modify: a new rule (``parent_rule_id`` = old id, inheriting its micro-instruction lineage)
    replaces the old one; add: a new rule; delete: removes the rule. Invalid operations
    (unknown rule id, label outside the set, rule failing validation) are skipped with a reason.
    """
    from pld_spark.prompts.teacher import RuleLimits

    limits = limits or RuleLimits()
    by_id = {r["rule_id"]: dict(r) for r in ruleset.rules}
    order = list(by_id)
    new_rows: list[ClusterRule] = []
    diff: dict[str, list] = {"modified": [], "added": [], "deleted": [], "skipped": []}
    for op in ops:
        kind = (op.get("op") or "").lower()
        rid = op.get("rule_id") or ""
        if kind == "delete":
            if rid in by_id:
                del by_id[rid]
                order.remove(rid)
                diff["deleted"].append(rid)
            else:
                diff["skipped"].append({**op, "reason": "unknown rule_id"})
            continue
        if kind not in ("modify", "add"):
            diff["skipped"].append({**op, "reason": f"unknown op {kind!r}"})
            continue
        if kind == "modify" and rid not in by_id:
            diff["skipped"].append({**op, "reason": "unknown rule_id"})
            continue
        old = by_id.get(rid) if kind == "modify" else None
        label = canonical_label(op.get("label") or (old or {}).get("label"), label_names)
        if label is None:
            diff["skipped"].append({**op, "reason": "label not in the label set"})
            continue
        text = (op.get("instruction") or "").strip()
        ok, reason = validate_rule(text, label_names, require_label=label, limits=limits)
        if not ok:
            diff["skipped"].append({**op, "reason": reason})
            continue
        members = list((old or {}).get("member_micro_ids") or [])
        new_id = rule_id("resolve", label, text, members, rid or None)
        if new_id in by_id:
            diff["skipped"].append({**op, "reason": "no change"})
            continue
        row = ClusterRule(new_id, int((old or {}).get("cluster_id", -1) if old else -1), (old or {}).get("topic") or "",
                          text, label, int((old or {}).get("support") or 0) if old else 0, "resolve", members,
                          parent_rule_id=rid or None, source_example_ids=list(source_example_ids))
        new_rows.append(row)
        entry = {"rule_id": new_id, "label": label, "instruction": text, "support": row.support, "topic": row.topic,
                 "member_micro_ids": members, "cluster_id": row.cluster_id}
        if old is not None:
            pos = order.index(rid)
            del by_id[rid]
            order[pos] = new_id
            by_id[new_id] = entry
            diff["modified"].append({"from": rid, "to": new_id})
        else:
            by_id[new_id] = entry
            order.append(new_id)
            diff["added"].append(new_id)
    return RuleSet([by_id[i] for i in order]), new_rows, diff


def load_rules(store, rule_ids: Sequence[str]) -> list[dict]:
    """Rule dicts (in ``rule_ids`` order) from the ``rules`` table."""
    from pyspark.sql import functions as F

    if not rule_ids:
        return []
    rows = {r.rule_id: r.asDict() for r in store.read("rules").where(F.col("rule_id").isin(list(rule_ids)))
            .select("rule_id", "label", "instruction", "support", "topic", "member_micro_ids", "cluster_id").collect()}
    return [rows[i] for i in rule_ids if i in rows]


def start_prompt(ctx) -> dict:
    """The task's ``clustered`` prompt row (latest alias row)."""
    from pld_spark.pipeline.review import resolve_version

    version = resolve_version(ctx, START_ALIAS)
    row = ctx.store.read("prompts").where(f"prompt_version = '{version}'").first()
    return row.asDict()


def _sample_rows(pdf_rows: list[dict], n: int | None, seed: int) -> list[dict]:
    rows = sorted(pdf_rows, key=lambda r: r["example_id"])
    if n is None or len(rows) <= n:
        return rows
    rng = random.Random(seed)
    return sorted(rng.sample(rows, n), key=lambda r: r["example_id"])


def run(ctx, count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Run the loop (see module doc); returns counts including the final prompt version."""
    from pld_spark.pipeline.extract import teacher_model_id
    from pld_spark.pipeline.ingest import current_examples
    from pld_spark.storage.catalog import RESOLUTION_ROUNDS

    cfg, store, spark = ctx.cfg, ctx.store, ctx.spark
    rcfg, labels = cfg.resolve, cfg.task.label_names
    start = start_prompt(ctx)
    train = _sample_rows([r.asDict() for r in current_examples(ctx, "train").select("example_id", "input_text", "label")
                          .collect()], rcfg.train_sample, rcfg.seed)
    try:
        val = sorted((r.asDict() for r in current_examples(ctx, "val").select("example_id", "input_text", "label")
                      .collect()), key=lambda r: r["example_id"])
    except ContractError:
        raise ContractError(f"resolve needs val examples to compare prompts; none for task '{cfg.task.name}' "
                            f"(dataset.split.val={cfg.dataset.split.val})") from None
    student = ctx.student
    counter = count_tokens or student_token_counter(ctx)
    reviews = latest_reviews(store)
    extra_pinned = pinned_rules(store, cfg.task.name, reviews)

    def evaluate(text: str, rows: list[dict]) -> tuple[float, list[str]]:
        preds = score(student, text, [r["input_text"] for r in rows], labels, cfg.student.calibration,
                      rcfg.score_batch_size)
        return macro_f1([r["label"] for r in rows], preds, labels), preds

    now = lambda: datetime.now(timezone.utc)  # noqa: E731
    cur_version, cur_text = start["prompt_version"], start["text"]
    cur_rules = RuleSet(load_rules(store, start["rule_ids"] or []))
    best_val, _ = evaluate(cur_text, val)
    start_val = best_val
    train_f1, train_pred = evaluate(cur_text, train) if rcfg.max_rounds > 0 else (None, [])
    rounds = [(ctx.run_id, 0, cur_version, None, train_f1, best_val, None, 0, 0, [], None, True, "start prompt",
               now())]
    usage = {"tokens_in": 0, "tokens_out": 0, "calls": 0, "cost": 0.0}
    accepted_rounds = 0
    stop_reason = "max_rounds reached" if rcfg.max_rounds else "max_rounds is 0"
    for t in range(1, rcfg.max_rounds + 1):
        scored = [{**r, "pred": p} for r, p in zip(train, train_pred)]
        fails = stratified_sample([r for r in scored if r["pred"] != r["label"]], rcfg.failures_per_class,
                                  rcfg.seed + t, labels)
        oks = stratified_sample([r for r in scored if r["pred"] == r["label"]], rcfg.successes_per_class,
                                rcfg.seed + 1000 + t, labels)
        sampled_ids = [r["example_id"] for r in fails + oks]
        base = (ctx.run_id, t, cur_version)
        if not fails:
            stop_reason = "no train failures"
            rounds.append((*base, None, train_f1, best_val, None, 0, len(oks), sampled_ids, None, False,
                           stop_reason, now()))
            break
        req = render_resolve(cfg.task, [(r["rule_id"], r["label"], r["instruction"]) for r in cur_rules.rules],
                             [(r["input_text"], r["label"], r["pred"]) for r in fails],
                             [(r["input_text"], r["label"]) for r in oks], template_version=rcfg.template_version,
                             max_input_chars=rcfg.max_input_chars, max_operations=rcfg.max_operations,
                             max_tokens=rcfg.max_tokens or cfg.teacher.max_tokens, request_id=f"resolve-{t}")
        resp = ctx.teacher.chat([req])[0]
        usage["tokens_in"] += resp.tokens_in or 0
        usage["tokens_out"] += resp.tokens_out or 0
        usage["cost"] += resp.cost_usd or 0.0
        usage["calls"] += 1
        if resp.error is not None:
            stop_reason = f"teacher call failed: {resp.error_type}: {resp.error}"[:500]
            rounds.append((*base, None, train_f1, best_val, None, len(fails), len(oks), sampled_ids, None, False,
                           stop_reason, now()))
            break
        ops = parse_operations(resp.data, resp.text)[: rcfg.max_operations]
        cand_rules, new_rows, diff = apply_operations(cur_rules, ops, labels, source_example_ids=sampled_ids)
        diff_json = json.dumps(diff, sort_keys=True)
        if not (diff["modified"] or diff["added"] or diff["deleted"]):
            stop_reason = "teacher proposed no valid operation"
            rounds.append((*base, None, train_f1, best_val, None, len(fails), len(oks), sampled_ids, diff_json,
                           False, stop_reason, now()))
            break
        built = build_prompt(cfg.task, cand_rules.rules, reviews, count_tokens=counter,
                             token_budget=cfg.consolidate.prompt_token_budget, max_rules=cfg.consolidate.max_rules,
                             extra_pinned=extra_pinned)
        cand_version = built.assembled.version
        if cand_version == cur_version:
            stop_reason = "candidate prompt is identical to the current one"
            rounds.append((*base, cand_version, train_f1, best_val, best_val, len(fails), len(oks), sampled_ids,
                           diff_json, False, stop_reason, now()))
            break
        cand_val, _ = evaluate(built.assembled.text, val)
        accepted = cand_val >= best_val + rcfg.min_delta
        write_rules(ctx, new_rows, None, teacher_model_id(cfg.teacher))
        write_prompt(ctx, built, KIND_ACCEPTED if accepted else KIND_REJECTED, parent_version=cur_version)
        note = (f"accepted: val macro-F1 {best_val:.4f} -> {cand_val:.4f}" if accepted else
                f"rejected: val macro-F1 {cand_val:.4f} < {best_val:.4f} + min_delta {rcfg.min_delta}")
        rounds.append((*base, cand_version, train_f1, best_val, cand_val, len(fails), len(oks), sampled_ids,
                       diff_json, accepted, note, now()))
        log.info("resolve round %d: %s", t, note)
        if not accepted:
            stop_reason = "candidate did not improve val macro-F1 by min_delta"
            break
        accepted_rounds += 1
        cur_version, cur_text, cur_rules, best_val = cand_version, built.assembled.text, cand_rules, cand_val
        if t < rcfg.max_rounds:
            train_f1, train_pred = evaluate(cur_text, train)
        else:
            train_f1 = None
    store.merge("resolution_rounds", spark.createDataFrame(rounds, RESOLUTION_ROUNDS.ddl), update=True)
    set_alias(ctx, ALIAS, cur_version, by="pld resolve",
              note=f"run {ctx.run_id}: val macro-F1 {start_val:.4f} -> {best_val:.4f}")
    ctx.record.add_usage(usage["tokens_in"], usage["tokens_out"], usage["calls"], usage["cost"])
    counts = {"start_version": start["prompt_version"], "final_version": cur_version, "rounds": len(rounds) - 1,
              "accepted_rounds": accepted_rounds, "start_val_macro_f1": round(start_val, 4),
              "final_val_macro_f1": round(best_val, 4), "train_rows": len(train), "val_rows": len(val),
              "teacher_calls": usage["calls"], "stop_reason": stop_reason}
    ctx.record.add_counts(STAGE, **counts)
    return counts
