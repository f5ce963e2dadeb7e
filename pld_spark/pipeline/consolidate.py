"""consolidate: ``instruction_clusters`` + ``micro_instructions`` -> ``rules``, ``prompts``.

One teacher call per non-noise cluster of the latest clustering of the current rules sees the
member rules (at most ``consolidate.max_members``, a seeded sample) and returns JSON
``{topic, instruction, label}``. The answer is validated (label in the label set, instruction
non-empty, names a label, length bounds, no injection pattern); when it fails and
``consolidate.fallback_to_medoid`` is on, the member rule nearest the centroid is used instead
(``origin='medoid'``, the teacher's problem kept in ``error``). When the clustering has no
cluster at all (a tiny model's few valid rules are all noise), one medoid rule per label is
taken from the valid micro-instructions (``origin='medoid_label'``), so a prompt always exists.

Incremental re-distillation. Each cluster's rule carries a fingerprint of what its consolidation
depends on (:func:`cluster_fingerprint`: the sorted member micro-instruction ids, which encode
example, teacher and extract template, plus the task, consolidate settings, template, teacher and
sampling). A cluster whose membership is unchanged (whatever its id) reuses the rule stored under
that fingerprint, same ``rule_id`` (reviews keep applying), without building a request. A medoid
fallback is reused too when the teacher answered (badly, which the same request would repeat), not
when the call got no answer (timeout, ...). Counts: ``clusters_reused``, ``teacher_calls_saved``.
With ``consolidate.group_priors``, each group's train label counts add a rule (pld_spark/prompts/priors.py).

Rule ids, review application and prompt assembly are :mod:`pld_spark.prompts.rules` (with the
student's tokenizer and ``consolidate.prompt_token_budget``); the prompt version is written and
the task's ``clustered`` alias moved through :mod:`pld_spark.prompts.versions`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from pld_spark.prompts.rules import Rule, build_prompt, canonical_label, rule_id
from pld_spark.prompts.teacher import parse_consolidate, render_consolidate, validate_rule

log = logging.getLogger(__name__)

STAGE = "consolidate"
KIND = "pld_cluster"
#: rule origins made from one cluster (reusable when the cluster's fingerprint is unchanged)
CLUSTER_ORIGINS = ("consolidate", "medoid")


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


def _centrality(m: dict) -> tuple[float, str]:
    d = m.get("dist_to_centroid")
    return (float("inf") if d is None or d != d else d, m["micro_id"])


def medoid(members: list[dict], label: str | None = None) -> dict:
    """The member nearest the centroid (of ``label`` when given and present; ties: smallest micro_id)."""
    pool = [m for m in members if label is None or m.get("label") == label] or members
    return min(pool, key=_centrality)


def valid_medoid(members: list[dict], label_names: Sequence[str]) -> dict | None:
    """The member nearest the centroid whose rule passes today's ``validate_rule`` for its own label
    (micro-instructions stored before a check was added may not); None when none does."""
    from pld_spark.prompts.teacher import validate_rule

    return next((m for m in sorted(members, key=_centrality)
                 if validate_rule(m.get("rule"), label_names, require_label=m.get("label"))[0]), None)


def exemplar_ids(clusters: Mapping[int, list[dict]]) -> set[str]:
    """The examples :func:`_exemplar` may show: each cluster's medoid, overall and per label."""
    return {medoid(ms, lab)["example_id"] for c, ms in clusters.items() if c >= 0
            for lab in {None, *(m.get("label") for m in ms)}}


def _exemplar(members: list[dict], label: str, max_chars: int, template: str | None = None) -> dict:
    """The rule's example: the input of the member nearest the centroid with the rule's label, as
    :func:`~pld_spark.prompts.examples.shot_input` shows it."""
    from pld_spark.prompts.examples import shot_input

    m = medoid(members, label)
    text = m.get("input_text")
    return {"example_id": m.get("example_id"), "example_text": shot_input(m, max_chars, template) if text else None,
            "example_label": m.get("label") if text else None}


def _judge(resp, task, members: list[dict], ccfg) -> tuple[str, str, str | None, str | None, str | None]:
    """(topic, instruction, raw label, canonical label, problem) of one consolidation answer."""
    from pld_spark.prompts.keywords import keyword_triggers

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
    return _consolidate(clusters, task, teacher, ccfg, max_tokens)[0]


def unanswered(resp) -> bool:
    """The call brought back no answer to judge (timeout, connection, rate limit, server error,
    auth, a crash): worth a new call on the next run. An answer that was malformed, or a request
    the model refused as bad or too long, would come back the same (not unanswered)."""
    from pld_spark import errors

    if resp.error is None:
        return False
    cls = getattr(errors, resp.error_type or "", None)
    answered = (errors.MalformedResponseError, errors.BadRequestError, errors.ContextLengthError)
    return not (isinstance(cls, type) and issubclass(cls, answered))


def _consolidate(clusters: Mapping[int, list[dict]], task, teacher, ccfg,
                 max_tokens: int | None) -> tuple[list[Rule], int, set[int]]:
    """:func:`transform`, the number of keyword retries it sent, and the clusters whose call was
    :func:`unanswered`."""
    ids = sorted(c for c in clusters if c >= 0)
    if not ids:
        return [], 0, set()

    def request(cid: int, feedback: str = ""):
        shown = sample_members(clusters[cid], ccfg.max_members, ccfg.seed, cid)
        return render_consolidate(task, [(m["label"], m["rule"]) for m in shown],
                                  member_inputs=[m["input_text"] for m in shown if m.get("input_text")][:6],
                                  template_version=ccfg.template_version, max_tokens=max_tokens,
                                  request_id=f"cluster-{cid}", feedback=feedback)

    first = teacher.chat([request(c) for c in ids])
    verdicts = {c: _judge(r, task, clusters[c], ccfg) for c, r in zip(ids, first)}
    lost = {c for c, r in zip(ids, first) if unanswered(r)}
    retry = [c for c in ids if ccfg.keyword_retry and (verdicts[c][4] or "").startswith("keyword trigger")]
    if retry:
        again = teacher.chat([request(c, f"your first answer was rejected ({verdicts[c][4]}); write the condition "
                                         f"in general terms that fit every case of the group") for c in retry])
        for c, r in zip(retry, again):
            v = _judge(r, task, clusters[c], ccfg)
            verdicts[c] = v if v[4] is None else (*v[:4], f"{v[4]} (after one retry)")
            if unanswered(r):
                lost.add(c)
    out: list[Rule] = []
    for cid in ids:
        members = clusters[cid]
        member_ids = sorted(m["micro_id"] for m in members)
        topic, instruction, raw_label, label, problem = verdicts[cid]
        if problem is None:
            out.append(Rule(rule_id("consolidate", label, instruction, member_ids), cid, topic[:200], instruction,
                            label, len(members), "consolidate", member_ids,
                            **_exemplar(members, label, ccfg.exemplar_max_chars, task.input_template)))
        elif ccfg.fallback_to_medoid and (m := valid_medoid(members, task.label_names)) is not None:
            out.append(Rule(rule_id("medoid", m["label"], m["rule"], member_ids), cid, topic[:200], m["rule"],
                            m["label"], len(members), "medoid", member_ids,
                            error=f"consolidation rejected: {problem}"[:2000],
                            **_exemplar(members, m["label"], ccfg.exemplar_max_chars, task.input_template)))
        else:
            why = problem if not ccfg.fallback_to_medoid else f"{problem}; no member's rule passes the rule checks"
            out.append(Rule(rule_id("consolidate", label or "", instruction, member_ids), cid, topic[:200],
                            instruction, label or (raw_label or ""), len(members), "consolidate", member_ids,
                            valid=False, invalid_reason=why[:2000]))
    return out, len(retry), lost


# ----------------------------------------------------------------------------- incremental reuse
def fingerprint_settings(task, ccfg, teacher_cfg) -> dict[str, Any]:
    """What a cluster's consolidation depends on besides its members: the task (labels, their
    descriptions, the input template), the consolidate settings that shape the request or judge
    the answer (not the prompt assembly ones), and the teacher with its sampling parameters."""
    from pld_spark.storage.readers import teacher_model_id

    shaping = {"template_version", "max_members", "seed", "keyword_check", "keyword_retry", "exemplar_max_chars",
               "fallback_to_medoid"}
    out = {"task": task.model_dump(mode="json"), "consolidate": ccfg.model_dump(mode="json", include=shaping),
           "teacher": teacher_model_id(teacher_cfg), "temperature": teacher_cfg.temperature,
           "seed": teacher_cfg.seed, "max_tokens": teacher_cfg.max_tokens}
    if "{pair}" in task.input_template:
        # A rule's stored exemplar of a pair input keeps the pair (shot_input); rules stored before
        # that showed the head of the text without it, so they are not reused. Tasks without a pair
        # render as before and keep their fingerprints (no teacher call repeated).
        out["exemplar_input"] = "pair kept"
    return out


def cluster_fingerprint(member_micro_ids: Iterable[str], settings: Mapping[str, Any]) -> str:
    """sha256 of a cluster's sorted member micro-instruction ids and ``settings``
    (:func:`fingerprint_settings`): same members, same settings, same fingerprint, whatever the
    cluster's id in its clustering."""
    blob = json.dumps({"members": sorted(set(member_micro_ids)), "settings": settings}, sort_keys=True, default=str)
    return "cf-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


def fingerprints(clusters: Mapping[int, list[dict]], settings: Mapping[str, Any]) -> dict[int, str]:
    """cluster_id -> fingerprint of every non-noise cluster."""
    return {c: cluster_fingerprint((m["micro_id"] for m in ms), settings) for c, ms in clusters.items() if c >= 0}


def reusable(row: Mapping[str, Any]) -> bool:
    """Whether a stored rule may stand in for a new consolidation of its cluster: it was made from
    one cluster and carries its fingerprint (a medoid fallback after an :func:`unanswered` call
    gets none, so that call is made again)."""
    return bool(row.get("cluster_fingerprint")) and row.get("origin") in CLUSTER_ORIGINS


def stored_rule(row: Mapping[str, Any], cluster_id: int) -> Rule:
    """A stored ``rules`` row as the rule of cluster ``cluster_id`` of this clustering (same rule_id:
    the row in ``rules`` keeps the run and clustering that paid for it)."""
    return Rule(row["rule_id"], cluster_id, row.get("topic") or "", row["instruction"], row["label"],
                int(row.get("support") or 0), row["origin"], list(row.get("member_micro_ids") or []),
                valid=bool(row.get("valid")), invalid_reason=row.get("invalid_reason"), error=row.get("error"),
                example_id=row.get("example_id"), example_text=row.get("example_text"),
                example_label=row.get("example_label"), cluster_fingerprint=row["cluster_fingerprint"])


@dataclass
class ReusePlan:
    """Which clusters keep a stored rule and which go to the teacher."""

    fingerprints: dict[int, str]
    reused: dict[int, Rule] = field(default_factory=dict)  # cluster_id -> the stored rule it keeps
    todo: list[int] = field(default_factory=list)  # cluster ids to consolidate, in order


def plan_reuse(clusters: Mapping[int, list[dict]], settings: Mapping[str, Any],
               previous: Iterable[Mapping[str, Any]] = ()) -> ReusePlan:
    """Match clusters to ``previous`` stored rules (``rules`` rows) by fingerprint, never by cluster
    id. Of several reusable rows with one fingerprint the newest (created_at, then rule_id) wins."""
    from datetime import datetime

    def newest(row):
        t = row.get("created_at")
        return (t is not None, t.replace(tzinfo=None) if t is not None else datetime.min, row["rule_id"])

    best: dict[str, Mapping[str, Any]] = {}
    for row in sorted((r for r in previous if reusable(r)), key=newest):
        best[row["cluster_fingerprint"]] = row
    fps = fingerprints(clusters, settings)
    plan = ReusePlan(fps)
    for c in sorted(fps):
        if fps[c] in best:
            plan.reused[c] = stored_rule(best[fps[c]], c)
        else:
            plan.todo.append(c)
    return plan


@dataclass
class Consolidated:
    rules: list[Rule]
    plan: ReusePlan
    retries: int = 0
    unanswered: set[int] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        n = len(self.plan.fingerprints)
        return {"clusters": n, "clusters_reused": len(self.plan.reused), "clusters_consolidated": len(self.plan.todo),
                "teacher_calls": len(self.plan.todo), "teacher_retries": self.retries,
                "teacher_unanswered": len(self.unanswered), "teacher_calls_saved": len(self.plan.reused)}


def consolidate_clusters(clusters: Mapping[int, list[dict]], task, teacher, ccfg, plan: ReusePlan, *,
                         max_tokens: int | None = None) -> Consolidated:
    """Rules for every cluster of ``plan``: the reused stored rules, and :func:`transform` of the
    clusters in ``plan.todo`` only (``teacher`` is not touched when that is empty), each stamped
    with its cluster's fingerprint unless its call was :func:`unanswered`. Ordered by cluster id."""
    made, retries, lost = _consolidate({c: clusters[c] for c in plan.todo}, task, teacher, ccfg, max_tokens) \
        if plan.todo else ([], 0, set())
    by_cluster = {**plan.reused, **{r.cluster_id: r if r.cluster_id in lost else
                                    replace(r, cluster_fingerprint=plan.fingerprints[r.cluster_id]) for r in made}}
    return Consolidated([by_cluster[c] for c in sorted(by_cluster)], plan, retries, lost)


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
    from pld_spark.pipeline.prompt_extras import group_prior_rules, label_examples
    from pld_spark.prompts.examples import as_shots
    from pld_spark.prompts.versions import ALIAS_CLUSTERED, PromptVersion, PromptVersions
    from pld_spark.storage import readers
    from pld_spark.storage.writers import write_rules

    cfg, store = ctx.cfg, ctx.store
    ccfg = cfg.consolidate
    micro = readers.current_micro(ctx).select("micro_id", "example_id", "label", "rule").cache()
    cluster_run = readers.latest_cluster_run(ctx, micro.select("micro_id"))
    clusters = readers.cluster_members(ctx, cluster_run, micro) if cluster_run is not None else {}
    texts = readers.example_texts(ctx, "train", exemplar_ids(clusters))  # only the texts an exemplar may show
    clusters = {c: [{**m, "text": texts.get(m["example_id"])} for m in ms] for c, ms in clusters.items()}
    n_clusters = len([c for c in clusters if c >= 0])
    reuse: dict[str, int] = {"clusters_reused": 0, "clusters_consolidated": n_clusters, "teacher_calls": n_clusters,
                             "teacher_retries": 0, "teacher_unanswered": 0, "teacher_calls_saved": 0}
    if n_clusters:
        settings = fingerprint_settings(cfg.task, ccfg, cfg.teacher)
        plan = plan_reuse(clusters, settings, readers.rules_by_fingerprint(
            store, cfg.task.name, fingerprints(clusters, settings).values()))
        done = consolidate_clusters(clusters, cfg.task, ctx.teacher if plan.todo else None, ccfg, plan,
                                    max_tokens=cfg.teacher.max_tokens)
        rules, reuse = done.rules, done.counts()
        if plan.todo:
            ctx.collect_usage(ctx.teacher, STAGE)
        log.info("consolidate: %d clusters; %d unchanged since an earlier run keep their rules (%d teacher calls "
                 "saved), %d sent to the teacher", n_clusters, len(plan.reused), len(plan.reused), len(plan.todo))
    else:
        log.warning("consolidate: the clustering has no clusters; falling back to one medoid rule per label")
        rules = fallback_per_label([r.asDict() for r in micro.collect()], cfg.task, seed=cfg.cluster.clusterer.seed)
    micro.unpersist()
    rules = rules + group_prior_rules(ctx)
    write_rules(ctx, rules, cluster_run, readers.teacher_model_id(cfg.teacher))

    reviews = readers.latest_reviews(store)
    shots = as_shots(label_examples(ctx), ccfg.exemplar_max_chars, cfg.task.input_template)
    built = build_prompt(cfg.task, [r.as_prompt_rule() for r in rules if r.valid], reviews,
                         count_tokens=count_tokens or ctx.student.count_tokens,
                         token_budget=ccfg.prompt_token_budget, max_rules=ccfg.max_rules,
                         extra_pinned=readers.pinned_rules(store, cfg.task.name, reviews), exemplars=ccfg.exemplars,
                         shots=shots)
    versions = PromptVersions(store, cfg.task.name)
    version, = versions.write(PromptVersion.from_assembled(
        cfg.task.name, KIND, built.assembled, review_ids=built.review_ids, dropped_rule_ids=built.dropped_rule_ids,
        run_id=ctx.run_id))
    versions.set_alias(ALIAS_CLUSTERED, version, by="pld consolidate", note=f"run {ctx.run_id}")
    counts = {
        "cluster_run_id": cluster_run, "clusters": n_clusters, **reuse, "rules": len(rules),
        "by_origin": {o: sum(r.origin == o for r in rules) for o in sorted({r.origin for r in rules})},
        "invalid_rules": sum(not r.valid for r in rules), "prompt_version": version,
        "prompt_rules": len(built.assembled.rule_ids), "dropped_rules": len(built.dropped_rule_ids),
        "prompt_tokens": built.assembled.token_count, "token_budget": ccfg.prompt_token_budget,
        "reviews_applied": len(built.review_ids), "label_examples": len(built.assembled.example_ids),
    }
    ctx.record.add_counts(STAGE, **counts)
    log.info("consolidate: prompt %s with %d rules (%d tokens)", version, len(built.assembled.rule_ids),
             built.assembled.token_count)
    return counts
