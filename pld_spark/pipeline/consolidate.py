"""consolidate: ``instruction_clusters`` + ``micro_instructions`` -> ``rules``, ``prompts``.

One teacher call per non-noise cluster of the latest clustering of the current rules sees the
member rules (at most ``consolidate.max_members``, a seeded sample) and returns JSON
``{topic, instruction, label}``. The answer is validated (label in the label set, instruction
non-empty, names a label, length bounds, no injection pattern); when it fails and
``consolidate.fallback_to_medoid`` is on, the member rule nearest the centroid is used instead
(``origin='medoid'``, the teacher's problem kept in ``error``). When the clustering has no
cluster at all (a tiny model's few valid rules are all noise), one medoid rule per label is
taken from the valid micro-instructions (``origin='medoid_label'``), so a prompt always exists.

``rule_id`` is a content hash (origin, label, instruction, members, parent): re-running on the
same clustering gives the same ids, so human reviews keep applying.

The student prompt is assembled deterministically by :func:`pld_spark.prompts.student.assemble`
with the student's tokenizer and ``consolidate.prompt_token_budget``, after applying the latest
``rule_reviews`` row per rule (disable: left out; pin: kept first, also when the pinned rule is
from an earlier run; edit: new text; approve: recorded). The prompt row is immutable and
content-addressed (``prompt_version`` = ``pv-`` + sha256 prefix of its text); the alias
``clustered`` of the task then points at it in ``prompt_aliases``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from pld_spark.prompts.teacher import parse_consolidate, render_consolidate, validate_rule

log = logging.getLogger(__name__)

STAGE = "consolidate"
KIND = "pld_cluster"
ALIAS = "clustered"


def rule_id(origin: str, label: str, instruction: str, member_micro_ids: Sequence[str] = (),
            parent_rule_id: str | None = None) -> str:
    """Content-addressed rule id (same content, same id)."""
    blob = json.dumps([origin, label, instruction.strip(), sorted(member_micro_ids), parent_rule_id or ""])
    return "r-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def canonical_label(value: str | None, label_names: Sequence[str]) -> str | None:
    """The label-set spelling of ``value`` (case/space-insensitive), or None."""
    norm = lambda s: "".join(ch for ch in s.lower() if ch.isalnum())  # noqa: E731
    v = norm(value or "")
    for name in label_names:
        if norm(name) == v and v:
            return name
    return None


# ----------------------------------------------------------------------------- cluster -> rule
def sample_members(members: list[dict], max_members: int, seed: int, cluster_id: int) -> list[dict]:
    """Members sorted by micro_id, then a seeded sample of at most ``max_members``."""
    ordered = sorted(members, key=lambda m: m["micro_id"])
    if len(ordered) <= max_members:
        return ordered
    rng = random.Random(f"{seed}:{cluster_id}")
    picked = rng.sample(range(len(ordered)), max_members)
    return [ordered[i] for i in sorted(picked)]


def medoid(members: list[dict]) -> dict:
    """The member nearest the centroid (ties: smallest micro_id)."""
    def key(m):
        d = m.get("dist_to_centroid")
        return (float("inf") if d is None or d != d else d, m["micro_id"])
    return min(members, key=key)


@dataclass
class ClusterRule:
    """One consolidated rule before it is written (a ``rules`` row minus run bookkeeping)."""

    rule_id: str
    cluster_id: int
    topic: str
    instruction: str
    label: str
    support: int
    origin: str
    member_micro_ids: list[str]
    valid: bool = True
    invalid_reason: str | None = None
    error: str | None = None
    parent_rule_id: str | None = None
    source_example_ids: list[str] | None = None
    usage: dict[str, float] = field(default_factory=dict)


def transform(clusters: dict[int, list[dict]], task, teacher, ccfg, *, max_tokens: int | None = None) -> list[ClusterRule]:
    """Clusters (cluster_id -> member dicts with micro_id, label, rule, dist_to_centroid) -> rules.

    One batched ``teacher.chat`` call with one request per cluster; per-cluster failures and
    invalid answers become medoid rules (or invalid rows) here, never exceptions.
    """
    ids = sorted(c for c in clusters if c >= 0)
    if not ids:
        return []
    reqs = []
    for cid in ids:
        shown = sample_members(clusters[cid], ccfg.max_members, ccfg.seed, cid)
        reqs.append(render_consolidate(task, [(m["label"], m["rule"]) for m in shown],
                                       template_version=ccfg.template_version, max_tokens=max_tokens,
                                       request_id=f"cluster-{cid}"))
    responses = teacher.chat(reqs)
    out: list[ClusterRule] = []
    for cid, resp in zip(ids, responses):
        members = clusters[cid]
        member_ids = sorted(m["micro_id"] for m in members)
        usage = {"tokens_in": resp.tokens_in or 0, "tokens_out": resp.tokens_out or 0, "cost": resp.cost_usd or 0.0}
        topic, instruction, label = "", "", None
        if resp.error is not None:
            problem = f"teacher call failed: {resp.error_type or 'error'}: {resp.error}"[:1000]
        else:
            topic, instruction, raw_label = parse_consolidate(resp.data, resp.text)
            label = canonical_label(raw_label, task.label_names)
            ok, reason = validate_rule(instruction, task.label_names, require_label=label)
            if label is None:
                problem = f"label {raw_label!r} is not in the label set"
            elif not ok:
                problem = reason
            else:
                problem = None
        if problem is None:
            out.append(ClusterRule(rule_id("consolidate", label, instruction, member_ids), cid, topic[:200],
                                   instruction, label, len(members), "consolidate", member_ids, usage=usage))
        elif ccfg.fallback_to_medoid:
            m = medoid(members)
            out.append(ClusterRule(rule_id("medoid", m["label"], m["rule"], member_ids), cid, topic[:200],
                                   m["rule"], m["label"], len(members), "medoid", member_ids,
                                   error=f"consolidation rejected: {problem}"[:2000], usage=usage))
        else:
            out.append(ClusterRule(rule_id("consolidate", label or "", instruction, member_ids), cid, topic[:200],
                                   instruction, label or (raw_label if resp.error is None else ""), len(members),
                                   "consolidate", member_ids, valid=False, invalid_reason=problem, usage=usage))
    return out


def fallback_per_label(micro: list[dict], task, seed: int = 0) -> list[ClusterRule]:
    """One medoid rule per label (TF-IDF cosine, most central rule) from valid micro-instructions."""
    import numpy as np

    from pld_spark.pipeline.embedders import TfidfSvdEmbedder

    out = []
    for lab in task.label_names:
        ms = sorted((m for m in micro if m["label"] == lab and m.get("rule")), key=lambda m: m["micro_id"])
        if not ms:
            continue
        x = TfidfSvdEmbedder(64, seed)([m["rule"] for m in ms])
        centrality = (x @ x.T).mean(axis=1) if len(ms) > 1 else np.ones(1)
        best = ms[int(np.argmax(centrality))]
        out.append(ClusterRule(rule_id("medoid_label", lab, best["rule"], [best["micro_id"]]), -1, "",
                               best["rule"], lab, len(ms), "medoid_label", [best["micro_id"]]))
    return out


# ----------------------------------------------------------------------------- reviews + prompt
def latest_reviews(store) -> dict[str, dict]:
    """rule_id -> the latest ``rule_reviews`` row (by created_at, then review_id)."""
    rows = store.read("rule_reviews").collect()
    latest: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r.created_at, r.review_id)):
        latest[r.rule_id] = r.asDict()
    return latest


@dataclass
class BuiltPrompt:
    assembled: Any
    review_ids: list[str]
    dropped_rule_ids: list[str]
    rules: list[Any]  # the PromptRule objects offered to the assembler


def build_prompt(task, rules: Sequence[dict], reviews: dict[str, dict], *, count_tokens: Callable[[str], int],
                 token_budget: int, max_rules: int | None = None, extra_pinned: Sequence[dict] = ()) -> BuiltPrompt:
    """Apply reviews, cap at ``max_rules`` (pinned first, then by support), assemble within budget.

    ``rules``: dicts with rule_id, label, instruction, support, topic. ``extra_pinned``: rules
    of the task pinned by a reviewer that are not in ``rules`` (kept too).
    """
    from pld_spark.prompts.student import PromptRule, assemble

    used_reviews: list[str] = []
    candidates: list[PromptRule] = []
    seen = set()
    for r in list(rules) + [p for p in extra_pinned if p["rule_id"] not in {x["rule_id"] for x in rules}]:
        if r["rule_id"] in seen:
            continue
        seen.add(r["rule_id"])
        rev = reviews.get(r["rule_id"])
        text, pinned = r["instruction"], False
        if rev is not None:
            used_reviews.append(rev["review_id"])
            if rev["action"] == "disable":
                continue
            if rev["action"] == "pin":
                pinned = True
            elif rev["action"] == "edit" and rev.get("new_text"):
                text = rev["new_text"]
        candidates.append(PromptRule(rule_id=r["rule_id"], label=r["label"], instruction=text,
                                     support=int(r.get("support") or 0), topic=r.get("topic") or "", pinned=pinned))
    over_cap: list[str] = []
    if max_rules is not None and len(candidates) > max_rules:
        ranked = sorted(candidates, key=lambda p: (not p.pinned, -p.support, p.rule_id))
        keep = ranked[:max(max_rules, sum(p.pinned for p in candidates))]
        over_cap = [p.rule_id for p in ranked if p not in keep]
        candidates = [p for p in candidates if p in keep]
    assembled = assemble(task, candidates, count_tokens=count_tokens, token_budget=token_budget)
    return BuiltPrompt(assembled, sorted(used_reviews), over_cap + assembled.dropped_rule_ids, candidates)


def pinned_rules(store, task_name: str, reviews: dict[str, dict]) -> list[dict]:
    """Valid rules of the task whose latest review is 'pin'."""
    from pyspark.sql import functions as F

    ids = [rid for rid, rev in reviews.items() if rev["action"] == "pin"]
    if not ids:
        return []
    rows = (store.read("rules").where((F.col("task") == task_name) & F.col("rule_id").isin(ids) & F.col("valid"))
            .select("rule_id", "label", "instruction", "support", "topic").collect())
    return [r.asDict() for r in rows]


def write_rules(ctx, rules: Sequence[ClusterRule], cluster_run_id: str | None, teacher_model: str | None) -> None:
    """Insert rules (first write wins: a rule id is its content)."""
    from pld_spark.storage.catalog import RULES

    if not rules:
        return
    now = datetime.now(timezone.utc)
    recs = [{
        "rule_id": r.rule_id, "task": ctx.cfg.task.name, "cluster_run_id": cluster_run_id, "cluster_id": r.cluster_id,
        "topic": r.topic, "instruction": r.instruction, "label": r.label, "support": r.support, "origin": r.origin,
        "parent_rule_id": r.parent_rule_id, "member_micro_ids": list(r.member_micro_ids or []),
        "source_example_ids": r.source_example_ids, "valid": r.valid, "invalid_reason": r.invalid_reason,
        "teacher_model": teacher_model, "error": r.error, "run_id": ctx.run_id, "created_at": now,
    } for r in rules]
    df = ctx.spark.createDataFrame([tuple(d[c] for c in RULES.columns) for d in recs], RULES.ddl)
    ctx.store.merge("rules", df, update=False)


def write_prompt(ctx, built: BuiltPrompt, kind: str, parent_version: str | None = None) -> str:
    """Insert the prompt version (immutable; an identical text is the same version) -> version."""
    from pld_spark.storage.catalog import PROMPTS

    a = built.assembled
    row = {"prompt_version": a.version, "task": ctx.cfg.task.name, "kind": kind, "text": a.text, "sha256": a.sha256,
           "parent_version": parent_version, "rule_ids": list(a.rule_ids), "dropped_rule_ids": built.dropped_rule_ids,
           "review_ids": built.review_ids, "token_count": int(a.token_count), "token_budget": int(a.token_budget),
           "run_id": ctx.run_id, "created_at": datetime.now(timezone.utc)}
    df = ctx.spark.createDataFrame([tuple(row[c] for c in PROMPTS.columns)], PROMPTS.ddl)
    ctx.store.merge("prompts", df, update=False)
    return a.version


def set_alias(ctx, alias: str, version: str, by: str, note: str = "") -> None:
    """Append a ``prompt_aliases`` row: the latest row per (task, alias) is current."""
    from pld_spark.storage.catalog import PROMPT_ALIASES

    row = (ctx.cfg.task.name, alias, version, by, note, datetime.now(timezone.utc))
    ctx.store.append("prompt_aliases", ctx.spark.createDataFrame([row], PROMPT_ALIASES.ddl))


def student_token_counter(ctx) -> Callable[[str], int]:
    """``count_tokens`` of the student (its tokenizer; loads the student model once)."""
    return ctx.student.count_tokens


# ----------------------------------------------------------------------------- stage
def latest_cluster_run(ctx, micro_ids_df) -> str | None:
    """This run's clustering if it made one, else the most recent clustering of these rules."""
    from pyspark.sql import functions as F

    ic = ctx.store.read("instruction_clusters").join(micro_ids_df, "micro_id", "left_semi")
    runs = ic.groupBy("cluster_run_id").agg(F.max("created_at").alias("t")).collect()
    if not runs:
        return None
    if any(r.cluster_run_id == ctx.run_id for r in runs):
        return ctx.run_id
    return max(runs, key=lambda r: (r.t, r.cluster_run_id)).cluster_run_id


def run(ctx, count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Consolidate the latest clustering into rules, assemble and store the prompt, set the
    ``clustered`` alias. ``count_tokens`` defaults to the student's tokenizer."""
    from pyspark.sql import functions as F

    from pld_spark.pipeline.cluster import current_micro
    from pld_spark.pipeline.extract import teacher_model_id

    cfg, store = ctx.cfg, ctx.store
    ccfg = cfg.consolidate
    micro = current_micro(ctx).select("micro_id", "example_id", "label", "rule").cache()
    cluster_run = latest_cluster_run(ctx, micro.select("micro_id"))
    clusters: dict[int, list[dict]] = {}
    if cluster_run is not None:
        rows = (store.read("instruction_clusters").where(F.col("cluster_run_id") == cluster_run)
                .select("micro_id", "cluster_id", "dist_to_centroid")
                .join(micro.select("micro_id", "label", "rule"), "micro_id").collect())
        for r in rows:
            clusters.setdefault(int(r.cluster_id), []).append(r.asDict())
    n_clusters = len([c for c in clusters if c >= 0])
    usage = {"tokens_in": 0, "tokens_out": 0, "cost": 0.0}
    if n_clusters:
        rules = transform(clusters, cfg.task, ctx.teacher, ccfg, max_tokens=cfg.teacher.max_tokens)
        calls = n_clusters
    else:
        log.warning("consolidate: the clustering has no clusters; falling back to one medoid rule per label")
        rules = fallback_per_label([r.asDict() for r in micro.collect()], cfg.task, seed=cfg.cluster.clusterer.seed)
        calls = 0
    micro.unpersist()
    for r in rules:
        for k in usage:
            usage[k] += r.usage.get(k, 0)
    ctx.record.add_usage(usage["tokens_in"], usage["tokens_out"], calls, usage["cost"])
    write_rules(ctx, rules, cluster_run, teacher_model_id(cfg.teacher))

    reviews = latest_reviews(store)
    valid = [{"rule_id": r.rule_id, "label": r.label, "instruction": r.instruction, "support": r.support,
              "topic": r.topic} for r in rules if r.valid]
    built = build_prompt(cfg.task, valid, reviews, count_tokens=count_tokens or student_token_counter(ctx),
                         token_budget=ccfg.prompt_token_budget, max_rules=ccfg.max_rules,
                         extra_pinned=pinned_rules(store, cfg.task.name, reviews))
    version = write_prompt(ctx, built, KIND)
    set_alias(ctx, ALIAS, version, by="pld consolidate", note=f"run {ctx.run_id}")
    counts = {
        "cluster_run_id": cluster_run, "clusters": n_clusters, "teacher_calls": calls, "rules": len(rules),
        "by_origin": {o: sum(r.origin == o for r in rules) for o in sorted({r.origin for r in rules})},
        "invalid_rules": sum(not r.valid for r in rules), "prompt_version": version,
        "prompt_rules": len(built.assembled.rule_ids), "dropped_rules": len(built.dropped_rule_ids),
        "prompt_tokens": built.assembled.token_count, "token_budget": ccfg.prompt_token_budget,
        "reviews_applied": len(built.review_ids),
    }
    ctx.record.add_counts(STAGE, **counts)
    log.info("consolidate: prompt %s with %d rules (%d tokens)", version, len(built.assembled.rule_ids),
             built.assembled.token_count)
    return counts
