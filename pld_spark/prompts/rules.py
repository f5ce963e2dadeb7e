"""Rules as data: the ``rules`` row, its content-addressed id, and turning a rule set plus human
reviews into a student prompt. Pure (no Spark, no model); consolidate, resolve and review use it.

``rule_id`` is a content hash (origin, label, instruction, members, parent): re-running on the
same clustering gives the same ids, so human reviews keep applying. :func:`build_prompt` applies
the latest ``rule_reviews`` row per rule (disable: left out; pin: kept first, also when the pinned
rule is from an earlier run; edit: new text; approve: recorded), caps the count, and assembles the
prompt within the student's token budget (:func:`pld_spark.prompts.student.assemble`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence


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


@dataclass
class Rule:
    """One rule before it is written: a ``rules`` row minus run bookkeeping (see
    :data:`pld_spark.storage.catalog.RULES`; fields are matched to columns by name)."""

    rule_id: str
    cluster_id: int
    topic: str
    instruction: str
    label: str
    support: int
    origin: str
    member_micro_ids: list[str] = field(default_factory=list)
    valid: bool = True
    invalid_reason: str | None = None
    error: str | None = None
    parent_rule_id: str | None = None
    source_example_ids: list[str] | None = None
    #: the cluster's exemplar: the input of the member nearest its centroid (shown when exemplars are on)
    example_id: str | None = None
    example_text: str | None = None
    example_label: str | None = None
    #: the consolidated cluster's fingerprint (members + settings); a later run with an unchanged
    #: cluster reuses the rule instead of calling the teacher (pld_spark.pipeline.consolidate)
    cluster_fingerprint: str | None = None

    def as_prompt_rule(self) -> dict[str, Any]:
        """The fields prompt assembly reads (also what :func:`build_prompt` takes)."""
        return {"rule_id": self.rule_id, "label": self.label, "instruction": self.instruction,
                "support": self.support, "topic": self.topic, "example_text": self.example_text,
                "example_label": self.example_label}

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuiltPrompt:
    """A prompt assembled from rules: the assembled text, the reviews it applied, the rules it
    left out (over the cap or the token budget) and the rules offered to the assembler."""

    assembled: Any  # pld_spark.prompts.student.AssembledPrompt
    review_ids: list[str]
    dropped_rule_ids: list[str]
    rules: list[Any]  # PromptRule


def build_prompt(task, rules: Sequence[dict], reviews: dict[str, dict], *, count_tokens: Callable[[str], int],
                 token_budget: int, max_rules: int | None = None, extra_pinned: Sequence[dict] = (),
                 exemplars: bool = False, shots: Sequence = ()) -> BuiltPrompt:
    """Apply reviews, cap at ``max_rules`` (pinned first, then by support), assemble within budget.

    ``rules``: dicts with rule_id, label, instruction, support, topic (and example_text,
    example_label). ``extra_pinned``: rules of the task pinned by a reviewer that are not in
    ``rules`` (kept too). ``exemplars``: show each rule's example under it. ``shots``: the label
    examples (:class:`~pld_spark.prompts.student.FewShot`) shown after the rules.
    """
    from pld_spark.prompts.student import PromptRule, assemble

    used_reviews: list[str] = []
    candidates: list[PromptRule] = []
    seen = set()
    own = {x["rule_id"] for x in rules}
    for r in list(rules) + [p for p in extra_pinned if p["rule_id"] not in own]:
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
        ex = (r.get("example_text") or None) if exemplars else None
        candidates.append(PromptRule(rule_id=r["rule_id"], label=r["label"], instruction=text,
                                     support=int(r.get("support") or 0), topic=r.get("topic") or "", pinned=pinned,
                                     example=ex, example_label=(r.get("example_label") or r["label"]) if ex else None))
    over_cap: list[str] = []
    if max_rules is not None and len(candidates) > max_rules:
        ranked = sorted(candidates, key=lambda p: (not p.pinned, -p.support, p.rule_id))
        keep = ranked[:max(max_rules, sum(p.pinned for p in candidates))]
        over_cap = [p.rule_id for p in ranked if p not in keep]
        candidates = [p for p in candidates if p in keep]
    assembled = assemble(task, candidates, shots=shots, count_tokens=count_tokens, token_budget=token_budget)
    return BuiltPrompt(assembled, sorted(used_reviews), over_cap + assembled.dropped_rule_ids, candidates)
