"""consolidate: ``instruction_clusters`` + ``micro_instructions`` -> ``rules``, ``prompts``.

One teacher call per non-noise cluster of the latest clustering of the current rules sees the
member rules (at most ``consolidate.max_members``, a seeded sample) and returns JSON
``{topic, instruction, label}``. The answer is validated (label in the label set, instruction
non-empty, names a label, length bounds, no injection pattern); when it fails and
``consolidate.fallback_to_medoid`` is on, the member rule nearest the centroid is used instead
(``origin='medoid'``, the teacher's problem kept in ``error``). When the clustering has no
cluster at all (a tiny model's few valid rules are all noise), one medoid rule per label is
taken from the valid micro-instructions (``origin='medoid_label'``), so a prompt always exists.

Rule ids, review application and prompt assembly are :mod:`pld_spark.prompts.rules` (with the
student's tokenizer and ``consolidate.prompt_token_budget``); the prompt version is written and
the task's ``clustered`` alias moved through :mod:`pld_spark.prompts.versions`.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Callable

from pld_spark.prompts.rules import Rule, build_prompt, canonical_label, rule_id
from pld_spark.prompts.teacher import parse_consolidate, render_consolidate, validate_rule

log = logging.getLogger(__name__)

STAGE = "consolidate"
KIND = "pld_cluster"


# ----------------------------------------------------------------------------- cluster -> rule
def sample_members(members: list[dict], max_members: int, seed: int, cluster_id: int) -> list[dict]:
    """At most ``max_members`` members, diverse: half nearest the centroid (the cluster's core),
    the rest spread evenly over the remaining members by distance (its range), in micro_id order
    within each part. Deterministic (``seed``/``cluster_id`` break distance ties)."""
    rng = random.Random(f"{seed}:{cluster_id}")
    jitter = {m["micro_id"]: rng.random() for m in sorted(members, key=lambda m: m["micro_id"])}

    def dist(m):
        d = m.get("dist_to_centroid")
        return (float("inf") if d is None or d != d else d, jitter[m["micro_id"]])

    ordered = sorted(members, key=dist)
    if len(ordered) <= max_members:
        return sorted(ordered, key=lambda m: m["micro_id"])
    core_n = (max_members + 1) // 2
    core, rest = ordered[:core_n], ordered[core_n:]
    k = max_members - core_n
    spread = [rest[round(i * (len(rest) - 1) / max(1, k - 1))] for i in range(k)] if k else []
    return sorted({m["micro_id"]: m for m in core + spread}.values(), key=lambda m: m["micro_id"])


def medoid(members: list[dict], label: str | None = None) -> dict:
    """The member nearest the centroid (of ``label`` when given and present; ties: smallest micro_id)."""
    pool = [m for m in members if label is None or m.get("label") == label] or members

    def key(m):
        d = m.get("dist_to_centroid")
        return (float("inf") if d is None or d != d else d, m["micro_id"])
    return min(pool, key=key)


def _exemplar(members: list[dict], label: str, max_chars: int) -> dict:
    """The rule's example: the input of the member nearest the centroid with the rule's label."""
    from pld_spark.prompts.teacher import truncate

    m = medoid(members, label)
    text = m.get("input_text")
    return {"example_id": m.get("example_id"), "example_text": truncate(text, max_chars) if text else None,
            "example_label": m.get("label") if text else None}


def _judge(resp, task, members: list[dict], ccfg) -> tuple[str, str, str | None, str | None, str | None]:
    """(topic, instruction, raw label, canonical label, problem) of one consolidation answer."""
    from pld_spark.prompts.teacher import keyword_triggers

    if resp.error is not None:
        return "", "", None, None, f"teacher call failed: {resp.error_type or 'error'}: {resp.error}"[:1000]
    topic, instruction, raw_label = parse_consolidate(resp.data, resp.text)
    label = canonical_label(raw_label, task.label_names)
    ok, reason = validate_rule(instruction, task.label_names, require_label=label)
    if label is None:
        return topic, instruction, raw_label, None, f"label {raw_label!r} is not in the label set"
    if not ok:
        return topic, instruction, raw_label, label, reason
    if ccfg.keyword_check:
        trig = keyword_triggers(instruction, [m.get("input_text") or m["rule"] for m in members], task)
        if trig:
            return (topic, instruction, raw_label, label,
                    f"keyword trigger: {', '.join(repr(t) for t in trig[:3])} appears in only one member's input")
    return topic, instruction, raw_label, label, None


def transform(clusters: dict[int, list[dict]], task, teacher, ccfg, *, max_tokens: int | None = None) -> list[Rule]:
    """Clusters (cluster_id -> member dicts with micro_id, example_id, label, rule, input_text,
    dist_to_centroid) -> rules.

    One batched ``teacher.chat`` call with one request per cluster (a diverse sample of its
    members and their inputs); an answer that hinges on a phrase only one member contains gets
    one retry with that feedback (``consolidate.keyword_retry``). Per-cluster failures and
    invalid answers become medoid rules (or invalid rows) with the reason, never exceptions.
    Each rule carries its cluster's exemplar (the medoid member's input) for ``exemplars``.
    """
    ids = sorted(c for c in clusters if c >= 0)
    if not ids:
        return []

    def request(cid: int, feedback: str = ""):
        shown = sample_members(clusters[cid], ccfg.max_members, ccfg.seed, cid)
        return render_consolidate(task, [(m["label"], m["rule"]) for m in shown],
                                  member_inputs=[m["input_text"] for m in shown if m.get("input_text")][:6],
                                  template_version=ccfg.template_version, max_tokens=max_tokens,
                                  request_id=f"cluster-{cid}", feedback=feedback)

    verdicts = dict(zip(ids, (_judge(r, task, clusters[c], ccfg) for c, r in zip(ids, teacher.chat(
        [request(c) for c in ids])))))
    retry = [c for c in ids if ccfg.keyword_retry and (verdicts[c][4] or "").startswith("keyword trigger")]
    if retry:
        again = teacher.chat([request(c, f"your first answer was rejected ({verdicts[c][4]}); write the condition "
                                         f"in general terms that fit every case of the group") for c in retry])
        for c, r in zip(retry, again):
            v = _judge(r, task, clusters[c], ccfg)
            verdicts[c] = v if v[4] is None else (*v[:4], f"{v[4]} (after one retry)")
    out: list[Rule] = []
    for cid in ids:
        members = clusters[cid]
        member_ids = sorted(m["micro_id"] for m in members)
        topic, instruction, raw_label, label, problem = verdicts[cid]
        if problem is None:
            out.append(Rule(rule_id("consolidate", label, instruction, member_ids), cid, topic[:200], instruction,
                            label, len(members), "consolidate", member_ids,
                            **_exemplar(members, label, ccfg.exemplar_max_chars)))
        elif ccfg.fallback_to_medoid:
            m = medoid(members)
            out.append(Rule(rule_id("medoid", m["label"], m["rule"], member_ids), cid, topic[:200], m["rule"],
                            m["label"], len(members), "medoid", member_ids,
                            error=f"consolidation rejected: {problem}"[:2000],
                            **_exemplar(members, m["label"], ccfg.exemplar_max_chars)))
        else:
            out.append(Rule(rule_id("consolidate", label or "", instruction, member_ids), cid, topic[:200],
                            instruction, label or (raw_label or ""), len(members), "consolidate", member_ids,
                            valid=False, invalid_reason=problem))
    return out


def fallback_per_label(micro: list[dict], task, seed: int = 0) -> list[Rule]:
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
        out.append(Rule(rule_id("medoid_label", lab, best["rule"], [best["micro_id"]]), -1, "",
                        best["rule"], lab, len(ms), "medoid_label", [best["micro_id"]]))
    return out


# ----------------------------------------------------------------------------- stage
def run(ctx, count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Consolidate the latest clustering into rules, assemble and store the prompt, set the
    ``clustered`` alias. ``count_tokens`` defaults to the student's tokenizer."""
    from pld_spark.prompts.versions import ALIAS_CLUSTERED, PromptVersion, PromptVersions
    from pld_spark.storage import readers
    from pld_spark.storage.writers import write_rules

    cfg, store = ctx.cfg, ctx.store
    ccfg = cfg.consolidate
    micro = readers.current_micro(ctx).select("micro_id", "example_id", "label", "rule").cache()
    cluster_run = readers.latest_cluster_run(ctx, micro.select("micro_id"))
    clusters = readers.cluster_members(ctx, cluster_run, micro) if cluster_run is not None else {}
    n_clusters = len([c for c in clusters if c >= 0])
    if n_clusters:
        rules = transform(clusters, cfg.task, ctx.teacher, ccfg, max_tokens=cfg.teacher.max_tokens)
        ctx.collect_usage(ctx.teacher, STAGE)
    else:
        log.warning("consolidate: the clustering has no clusters; falling back to one medoid rule per label")
        rules = fallback_per_label([r.asDict() for r in micro.collect()], cfg.task, seed=cfg.cluster.clusterer.seed)
    micro.unpersist()
    write_rules(ctx, rules, cluster_run, readers.teacher_model_id(cfg.teacher))

    reviews = readers.latest_reviews(store)
    built = build_prompt(cfg.task, [r.as_prompt_rule() for r in rules if r.valid], reviews,
                         count_tokens=count_tokens or ctx.student.count_tokens,
                         token_budget=ccfg.prompt_token_budget, max_rules=ccfg.max_rules,
                         extra_pinned=readers.pinned_rules(store, cfg.task.name, reviews), exemplars=ccfg.exemplars)
    versions = PromptVersions(store, cfg.task.name)
    version, = versions.write(PromptVersion.from_assembled(
        cfg.task.name, KIND, built.assembled, review_ids=built.review_ids, dropped_rule_ids=built.dropped_rule_ids,
        run_id=ctx.run_id))
    versions.set_alias(ALIAS_CLUSTERED, version, by="pld consolidate", note=f"run {ctx.run_id}")
    counts = {
        "cluster_run_id": cluster_run, "clusters": n_clusters, "teacher_calls": n_clusters, "rules": len(rules),
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
