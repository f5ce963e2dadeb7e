"""resolve: the conflict-resolution loop -> ``resolution_rounds``, new ``rules``/``prompts``.

Start: the task's ``selected`` prompt (``clustered`` when select has not run since consolidate)
and its rules. Round 0 scores it.
Round t (1..``resolve.max_rounds``):

1. The student (in-process on the driver, :class:`pld_spark.validation.PromptJudge`) has scored
   all val rows with the current prompt (choosing its calibration there) and a seeded sample of
   ``resolve.train_sample`` train rows with that calibration.
2. A stratified, seeded sample of train failures (up to ``failures_per_class`` per gold
   label, spread round-robin over the (gold, predicted) strata) and successes (up to
   ``successes_per_class`` per gold label) goes to the teacher with the current rules.
3. The teacher returns operations ``[{op: modify|add|delete, rule_id?, instruction?, label?}]``;
   valid ones are applied (invalid ones are skipped with a reason in the rule diff), and the
   candidate prompt is assembled with the same reviews and budget as consolidate.
4. The candidate is scored on val (its own calibration chosen there) and compared with the current
   prompt on the same rows (paired bootstrap): it is accepted only if the comparison favours it
   in at least ``accept_confidence`` of the resamples and by at least ``min_delta``; otherwise the
   loop stops. No failures, no valid operation (after one retry with a different sample,
   ``retry_empty``) or an unchanged prompt also stop it.

The loop's best prompt gets alias ``resolved`` (the starting prompt when nothing beat it, so the
loop never ships a worse prompt than it started from). It is promoted to ``distilled`` only if it
beats the better zero-shot prompt (label descriptions or bare names) on val by the same paired
test; otherwise the run says so and ``distilled`` stays where it was. A new ``distilled`` is then the
challenger of ``live`` (:mod:`pld_spark.monitor.promotion`: ``live`` moves only when the paired CI on
val clears ``promotion.margin`` and no label drops by more than ``promotion.max_label_drop``; the
decision and its reason are a ``promotions`` row and ``champion`` in the stage counts).
Every round writes a ``resolution_rounds`` row (metrics, sample ids, rule diff JSON,
accepted). Rejected candidates are stored too (kind ``pld_rejected``) so they can be
inspected; accepted ones have kind ``pld_resolved``. Macro-F1 is :func:`pld_spark.metrics.macro_f1`;
a student error counts as a wrong answer.

The loop itself (:func:`run_loop`) is pure: it takes the student's scoring, the teacher's
proposal and the prompt assembly as plain functions, so its decisions are unit-tested without
Spark or a model; :func:`run` wires them to the run context and writes the tables.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from pld_spark.errors import ContractError
from pld_spark.prompts.rules import BuiltPrompt, Rule, canonical_label, rule_id
from pld_spark.prompts.teacher import RuleLimits, validate_rule

log = logging.getLogger(__name__)

STAGE = "resolve"
KIND_ACCEPTED = "pld_resolved"
KIND_REJECTED = "pld_rejected"


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


def apply_operations(rules: list[dict], ops: Sequence[dict], label_names: Sequence[str], *,
                     source_example_ids: Sequence[str] = (),
                     limits: RuleLimits | None = None) -> tuple[list[dict], list[Rule], dict]:
    """Apply teacher operations -> (new rule list, new rule rows, diff). Pure.

    modify: a new rule (``parent_rule_id`` = old id, inheriting its micro-instruction lineage)
    replaces the old one; add: a new rule; delete: removes the rule. Invalid operations
    (unknown rule id, label outside the set, rule failing validation) are skipped with a reason.
    """
    limits = limits or RuleLimits()
    by_id = {r["rule_id"]: dict(r) for r in rules}
    order = list(by_id)
    new_rows: list[Rule] = []
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
        if old is not None and label == old.get("label") and " ".join(text.split()) == " ".join(
                (old.get("instruction") or "").split()):
            diff["skipped"].append({**op, "reason": "no change"})  # a 1.5B teacher restates rules verbatim
            continue
        ok, reason = validate_rule(text, label_names, require_label=label, limits=limits)
        if not ok:
            diff["skipped"].append({**op, "reason": reason})
            continue
        members = list((old or {}).get("member_micro_ids") or [])
        new_id = rule_id("resolve", label, text, members, rid or None)
        if new_id in by_id:
            diff["skipped"].append({**op, "reason": "no change"})
            continue
        # a modified rule keeps its cluster's exemplar while the label stays (the cluster did not change)
        keep = old is not None and label == old.get("label") and old.get("example_label") == label
        row = Rule(new_id, int(old.get("cluster_id", -1)) if old else -1, (old or {}).get("topic") or "", text, label,
                   int(old.get("support") or 0) if old else 0, "resolve", members, parent_rule_id=rid or None,
                   source_example_ids=list(source_example_ids),
                   example_id=old.get("example_id") if keep else None,
                   example_text=old.get("example_text") if keep else None,
                   example_label=label if keep else None)
        new_rows.append(row)
        entry = {**row.as_prompt_rule(), "member_micro_ids": members, "cluster_id": row.cluster_id,
                 "example_id": row.example_id}
        if old is not None:
            order[order.index(rid)] = new_id
            del by_id[rid]
            diff["modified"].append({"from": rid, "to": new_id})
        else:
            order.append(new_id)
            diff["added"].append(new_id)
        by_id[new_id] = entry
    return [by_id[i] for i in order], new_rows, diff


# ----------------------------------------------------------------------------- the loop (pure)
@dataclass
class RoundRecord:
    """One ``resolution_rounds`` row (without run bookkeeping)."""

    round: int
    prompt_version: str
    candidate_version: str | None = None
    train_macro_f1: float | None = None
    val_macro_f1: float | None = None
    candidate_val_macro_f1: float | None = None
    failures_sampled: int = 0
    successes_sampled: int = 0
    sampled_example_ids: list[str] = field(default_factory=list)
    rule_diff: str | None = None
    accepted: bool = False
    note: str = ""


@dataclass
class Proposal:
    """The teacher's answer for one round: operations, or the error of a failed call."""

    operations: list[dict] = field(default_factory=list)
    error: str | None = None


@dataclass
class LoopResult:
    rounds: list[RoundRecord]
    best_version: str
    best_rules: list[dict]
    start_val: float
    best_val: float
    stop_reason: str
    best: Any = None  # the best prompt's pld_spark.validation.Scored on val
    new_rules: list[Rule] = field(default_factory=list)
    #: (built prompt, kind, parent version, its Scored on val) of every candidate that was scored
    candidates: list[tuple[BuiltPrompt, str, str, Any]] = field(default_factory=list)

    @property
    def accepted_rounds(self) -> int:
        return sum(r.accepted for r in self.rounds[1:])


def run_loop(start_version: str, start_text: str, start_rules: list[dict], train: list[dict], val: list[dict],
             labels: Sequence[str], rcfg, *, judge, propose: Callable[..., Proposal],
             build: Callable[[list[dict]], BuiltPrompt]) -> LoopResult:
    """The conflict-resolution loop over plain data (see the module docstring).

    ``judge``: ``fit(text, rows) -> Scored`` (val, chooses the calibration), ``apply(text, rows,
    calibration) -> Scored`` (train) and ``compare(rows, a, b) -> paired stats`` (see
    :class:`pld_spark.validation.PromptJudge`); ``propose(round, rules, failures, successes)``;
    ``build(rules) -> BuiltPrompt``. Rows are dicts with example_id, input_text, label."""
    cur_version, cur_rules = start_version, list(start_rules)
    cur = judge.fit(start_text, val)
    tr = judge.apply(start_text, train, cur.calibration) if rcfg.max_rounds > 0 else None
    res = LoopResult([RoundRecord(0, cur_version, train_macro_f1=tr.f1 if tr else None, val_macro_f1=cur.f1,
                                  accepted=True, note="start prompt")], cur_version, cur_rules, cur.f1, cur.f1,
                     "max_rounds reached" if rcfg.max_rounds else "max_rounds is 0", best=cur)
    for t in range(1, rcfg.max_rounds + 1):
        scored = [{**r, "pred": p} for r, p in zip(train, tr.preds)]
        rec = RoundRecord(t, cur_version, train_macro_f1=tr.f1, val_macro_f1=cur.f1)
        res.rounds.append(rec)
        diff: dict = {}
        for attempt in range(2 if rcfg.retry_empty else 1):
            seed = rcfg.seed + t + 500 * attempt
            fails = stratified_sample([r for r in scored if r["pred"] != r["label"]], rcfg.failures_per_class,
                                      seed, labels)
            oks = stratified_sample([r for r in scored if r["pred"] == r["label"]], rcfg.successes_per_class,
                                    seed + 1000, labels)
            rec.failures_sampled, rec.successes_sampled = len(fails), len(oks)
            rec.sampled_example_ids = [r["example_id"] for r in fails + oks]
            if not fails:
                break
            prop = propose(t, cur_rules, fails, oks)
            if prop.error is not None:
                break
            cand_rules, new_rows, diff = apply_operations(cur_rules, prop.operations[: rcfg.max_operations], labels,
                                                          source_example_ids=rec.sampled_example_ids)
            diff["attempt"] = attempt + 1
            if diff["modified"] or diff["added"] or diff["deleted"]:
                break
        rec.rule_diff = json.dumps(diff, sort_keys=True) if diff else None
        if not fails:
            rec.note = res.stop_reason = "no train failures"
            break
        if prop.error is not None:
            rec.note = res.stop_reason = f"teacher call failed: {prop.error}"[:500]
            break
        if not (diff["modified"] or diff["added"] or diff["deleted"]):
            rec.note = res.stop_reason = "teacher proposed no valid operation" + (
                " (twice, with two different samples)" if rcfg.retry_empty else "")
            break
        built = build(cand_rules)
        rec.candidate_version = built.assembled.version
        if rec.candidate_version == cur_version:
            rec.candidate_val_macro_f1 = cur.f1
            rec.note = res.stop_reason = "candidate prompt is identical to the current one"
            break
        cand = judge.fit(built.assembled.text, val)
        stat = judge.compare(val, cand, cur)
        rec.candidate_val_macro_f1 = cand.f1
        rec.accepted = stat["p_a_better"] >= rcfg.accept_confidence and stat["delta"] >= rcfg.min_delta
        res.new_rules.extend(new_rows)
        res.candidates.append((built, KIND_ACCEPTED if rec.accepted else KIND_REJECTED, cur_version, cand))
        rec.note = (f"{'accepted' if rec.accepted else 'rejected'}: val macro-F1 {cur.f1:.4f} -> {cand.f1:.4f}, "
                    f"paired delta {stat['delta']:+.4f} [{stat['ci_low']:+.4f}, {stat['ci_high']:+.4f}], "
                    f"candidate better in {stat['p_a_better']:.0%} of resamples (needs {rcfg.accept_confidence:.0%} "
                    f"and delta >= {rcfg.min_delta})")
        log.info("resolve round %d: %s", t, rec.note)
        if not rec.accepted:
            res.stop_reason = "candidate not better than the current prompt on the paired val test"
            break
        cur_version, cur_rules, cur = rec.candidate_version, cand_rules, cand
        tr = judge.apply(cand.text, train, cand.calibration) if t < rcfg.max_rounds else None
    res.best_version, res.best_rules, res.best_val, res.best = cur_version, cur_rules, cur.f1, cur
    return res


# ----------------------------------------------------------------------------- stage
def sample_rows(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """A seeded sample of ``n`` rows (all when ``n`` is None or larger), sorted by example_id."""
    rows = sorted(rows, key=lambda r: r["example_id"])
    if n is None or len(rows) <= n:
        return rows
    return sorted(random.Random(seed).sample(rows, n), key=lambda r: r["example_id"])


def promotion(judge, val: list[dict], best, zero_shots: dict[str, Any], confidence: float) -> tuple[bool, str, dict]:
    """Does ``best`` beat the better zero-shot prompt on val (paired)? -> (promote, reason, stats)."""
    name, zs = max(zero_shots.items(), key=lambda kv: (kv[1].f1, kv[0]))
    stat = judge.compare(val, best, zs)
    ok = stat["p_a_better"] >= confidence and stat["delta"] > 0
    why = (f"val macro-F1 {best.f1:.4f} vs {name} {zs.f1:.4f}: paired delta {stat['delta']:+.4f} "
           f"[{stat['ci_low']:+.4f}, {stat['ci_high']:+.4f}], better in {stat['p_a_better']:.0%} of resamples")
    return ok, ("promoted: " if ok else "NOT promoted (does not beat zero-shot on val): ") + why, {**stat, "vs": name}


def _store(ctx, versions, res: LoopResult, promote: bool, why: str) -> None:
    """Rules, candidate prompts and their calibrations, rounds, and the aliases the loop moves."""
    from pld_spark.prompts.versions import ALIAS_DISTILLED, ALIAS_RESOLVED, PromptVersion
    from pld_spark.storage import readers
    from pld_spark.storage.catalog import RESOLUTION_ROUNDS
    from pld_spark.storage.writers import frame, write_rules

    cfg = ctx.cfg
    write_rules(ctx, res.new_rules, None, readers.teacher_model_id(cfg.teacher))
    versions.write([PromptVersion.from_assembled(cfg.task.name, kind, b.assembled, parent_version=parent,
                                                 review_ids=b.review_ids, dropped_rule_ids=b.dropped_rule_ids,
                                                 run_id=ctx.run_id) for b, kind, parent, _ in res.candidates])
    student_id = f"{ctx.student.backend}:{ctx.student.model_id}"
    for version, scored in [(res.best_version, res.best)] + [(b.assembled.version, s) for b, _, _, s in res.candidates]:
        if not isinstance(scored.calibration, str):
            versions.set_calibration(version, student_id, scored.calibration, ctx.run_id)
    now = datetime.now(timezone.utc)
    ctx.store.merge("resolution_rounds", frame(ctx.spark, RESOLUTION_ROUNDS, [
        {**asdict(r), "run_id": ctx.run_id, "created_at": now} for r in res.rounds]), update=True)
    versions.set_alias(ALIAS_RESOLVED, res.best_version, by="pld resolve", note=f"run {ctx.run_id}: {res.stop_reason}")
    if promote:
        versions.set_alias(ALIAS_DISTILLED, res.best_version, by="pld resolve", note=f"run {ctx.run_id}: {why}")
    else:
        log.warning("resolve: %s", why)


def _challenge(ctx, versions, judge, val: list[dict], best_version: str, promoted: bool) -> dict[str, Any]:
    """Champion/challenger after ``distilled`` moved (:mod:`pld_spark.monitor.promotion`): may it replace ``live``?"""
    from pld_spark.monitor import promotion as champion_gate  # not this module's promotion() (distilled)

    if not promoted:
        return {"decision": None, "reason": "no challenger: 'distilled' did not move in this run"}
    return champion_gate.after_resolve(ctx, versions, judge, val, best_version)


def run(ctx, count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Run the loop from the selected prompt; see the module docstring for the aliases it moves."""
    from pld_spark.prompts.rules import build_prompt
    from pld_spark.prompts.student import assemble
    from pld_spark.prompts.teacher import parse_operations, render_resolve
    from pld_spark.prompts.versions import ALIAS_CLUSTERED, ALIAS_SELECTED, PromptVersions
    from pld_spark.storage import readers
    from pld_spark.validation import PromptJudge

    cfg, store, rcfg, labels = ctx.cfg, ctx.store, ctx.cfg.resolve, ctx.cfg.task.label_names
    versions = PromptVersions(store, cfg.task.name)
    start = versions.resolve(versions.latest_alias([ALIAS_SELECTED, ALIAS_CLUSTERED]) or ALIAS_CLUSTERED)
    all_train = readers.example_rows(ctx, "train")
    train = sample_rows(all_train, rcfg.train_sample, rcfg.seed)
    try:
        val = readers.example_rows(ctx, "val")
    except ContractError:
        raise ContractError(f"resolve needs val examples to compare prompts; none for task '{cfg.task.name}' "
                            f"(dataset.split.val={cfg.dataset.split.val})") from None
    judge = PromptJudge.from_ctx(ctx, all_train)
    reviews = readers.latest_reviews(store)
    pinned = readers.pinned_rules(store, cfg.task.name, reviews)
    shots = readers.prompt_shots(ctx, versions.get(start.version))  # the start prompt's label examples stay
    counter = count_tokens or ctx.student.count_tokens

    def propose(t: int, rules: list[dict], fails: list[dict], oks: list[dict]) -> Proposal:
        req = render_resolve(cfg.task, [(r["rule_id"], r["label"], r["instruction"]) for r in rules],
                             [(r["input_text"], r["label"], r["pred"]) for r in fails],
                             [(r["input_text"], r["label"]) for r in oks], template_version=rcfg.template_version,
                             max_input_chars=rcfg.max_input_chars, max_operations=rcfg.max_operations,
                             max_tokens=rcfg.max_tokens or cfg.teacher.max_tokens, request_id=f"resolve-{t}")
        resp = ctx.teacher.chat([req])[0]
        if resp.error is not None:
            return Proposal(error=f"{resp.error_type}: {resp.error}")
        return Proposal(parse_operations(resp.data, resp.text))

    res = run_loop(start.version, start.text, readers.load_rules(store, versions.get(start.version).rule_ids), train,
                   val, labels, rcfg, judge=judge, propose=propose,
                   build=lambda rules: build_prompt(cfg.task, rules, reviews, count_tokens=counter,
                                                    token_budget=cfg.consolidate.prompt_token_budget,
                                                    max_rules=cfg.consolidate.max_rules, extra_pinned=pinned,
                                                    exemplars=cfg.consolidate.exemplars, shots=shots))
    zero = {n: judge.fit(assemble(cfg.task, count_tokens=counter, bare_labels=n.endswith("bare")).text, val)
            for n in ("zero_shot", "zero_shot_bare")}
    promote, why, stat = promotion(judge, val, res.best, zero, rcfg.accept_confidence)
    _store(ctx, versions, res, promote, why)
    champion = _challenge(ctx, versions, judge, val, res.best_version, promote)
    ctx.collect_usage(ctx.teacher, STAGE)
    ctx.collect_usage(ctx.student, STAGE)
    counts = {"start_version": start.version, "final_version": res.best_version, "rounds": len(res.rounds) - 1,
              "accepted_rounds": res.accepted_rounds, "start_val_macro_f1": round(res.start_val, 4),
              "final_val_macro_f1": round(res.best_val, 4), "train_rows": len(train), "val_rows": len(val),
              "stop_reason": res.stop_reason, "promoted": promote, "promotion": why,
              "zero_shot_val_macro_f1": {k: round(v.f1, 4) for k, v in zero.items()}, "champion": champion}
    ctx.record.add_counts(STAGE, **counts)
    return counts
