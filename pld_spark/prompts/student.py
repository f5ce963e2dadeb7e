"""Deterministic assembly of the student's system prompt.

Layout (the same for every condition, so conditions differ only in what they add):
task description, label definitions, [rules ordered by label then support],
[few-shot examples], output instruction. Rules that do not fit ``token_budget`` (measured
with the student's tokenizer through ``count_tokens``) are dropped and reported, never
silently cut mid-rule. Pinned rules are placed first within the budget so they always fit
if anything does.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

STUDENT_TEMPLATE_VERSION = "student-v1"


@dataclass(frozen=True)
class PromptRule:
    rule_id: str
    label: str
    instruction: str
    support: int = 0
    topic: str = ""
    pinned: bool = False
    example: str | None = None  # an input of the rule's cluster, shown under the rule
    example_label: str | None = None


@dataclass(frozen=True)
class FewShot:
    input_text: str
    label: str
    example_id: str | None = None  # the train example shown (recorded in the prompt's example_ids)


@dataclass
class AssembledPrompt:
    text: str
    rule_ids: list[str] = field(default_factory=list)
    dropped_rule_ids: list[str] = field(default_factory=list)
    token_count: int = 0
    token_budget: int = 0
    example_ids: list[str] = field(default_factory=list)  # train examples shown in the Examples block

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def version(self) -> str:
        """Content-addressed version id: the same text is the same version."""
        return "pv-" + self.sha256[:12]


def approx_tokens(text: str) -> int:
    """Estimate used when no tokenizer is at hand (about 4 characters per token)."""
    return max(1, (len(text) + 3) // 4)


def _header(task, bare_labels: bool = False) -> str:
    labels = "\n".join(f"- {lab.name}: {lab.description}" if lab.description and not bare_labels else f"- {lab.name}"
                       for lab in task.labels)
    return f"{task.description.strip()}\n\nLabels:\n{labels}"


def _footer(task) -> str:
    names = ", ".join(task.label_names)
    return f"Answer with exactly one label from: {names}. Output only the label."


def order_rules(rules: Sequence[PromptRule], label_order: Sequence[str]) -> list[PromptRule]:
    """Label order of the task, then support (desc), then rule id for ties: deterministic."""
    pos = {name: i for i, name in enumerate(label_order)}
    return sorted(rules, key=lambda r: (pos.get(r.label, len(pos)), -r.support, r.rule_id))


def _rules_block(rules: Sequence[PromptRule]) -> str:
    lines = ["Rules:"]
    for i, r in enumerate(rules, 1):
        lines.append(f"{i}. [{r.label}] {r.instruction.strip()}")
        if r.example:
            ex = " ".join(r.example.split())
            lines.append(f"   Example: {ex} -> {r.example_label or r.label}")
    return "\n".join(lines)


def _shots_block(shots: Sequence[FewShot]) -> str:
    parts = ["Examples:"]
    for s in shots:
        parts.append(f"{s.input_text.strip()}\nLabel: {s.label}")
    return "\n\n".join(parts)


def _round_robin(shots: Sequence[FewShot]) -> list[int]:
    """Positions of ``shots`` taking each label's first example, then each label's second, ...
    (the order examples are kept in under a token budget, so no label loses all of its own)."""
    seen: dict[str, int] = {}
    rank = []
    for i, s in enumerate(shots):
        rank.append((seen.get(s.label, 0), i))
        seen[s.label] = seen.get(s.label, 0) + 1
    return [i for _, i in sorted(rank)]


def assemble(task, rules: Sequence[PromptRule] = (), shots: Sequence[FewShot] = (),
             count_tokens: Callable[[str], int] = approx_tokens, token_budget: int | None = None,
             bare_labels: bool = False) -> AssembledPrompt:
    """Build the system prompt. Greedy within the budget: pinned rules first, then the rest in
    prompt order; a rule that does not fit is dropped and the next ones are still tried. Then the
    examples (``shots``) that still fit, each label's first before any label's second; the kept
    ones are shown in their given order (``example_ids``).
    ``bare_labels``: list the label names without their descriptions (a zero-shot variant)."""
    def render(chosen: Sequence[PromptRule], shown: Sequence[FewShot] = ()) -> str:
        blocks = [_header(task, bare_labels)]
        if chosen:
            blocks.append(_rules_block(order_rules(chosen, task.label_names)))
        if shown:
            blocks.append(_shots_block(shown))
        blocks.append(_footer(task))
        return "\n\n".join(blocks)

    def ids(shown: Sequence[FewShot]) -> list[str]:
        return [s.example_id for s in shown if s.example_id]

    ordered = order_rules(rules, task.label_names)
    if token_budget is None:
        text = render(ordered, shots)
        return AssembledPrompt(text, [r.rule_id for r in ordered], [], count_tokens(text), 0, ids(shots))
    candidates = [r for r in ordered if r.pinned] + [r for r in ordered if not r.pinned]
    chosen: list[PromptRule] = []
    dropped: list[str] = []
    base = render([])
    if count_tokens(base) > token_budget:
        # Nothing fits: keep the bare prompt and drop every rule (recorded).
        return AssembledPrompt(base, [], [r.rule_id for r in candidates], count_tokens(base), token_budget)
    for r in candidates:
        if count_tokens(render(chosen + [r])) <= token_budget:
            chosen.append(r)
        else:
            dropped.append(r.rule_id)
    kept: set[int] = set()
    for i in _round_robin(shots):
        if count_tokens(render(chosen, [shots[j] for j in sorted(kept | {i})])) <= token_budget:
            kept.add(i)
    shown = [shots[j] for j in sorted(kept)]
    text = render(chosen, shown)
    final = order_rules(chosen, task.label_names)
    return AssembledPrompt(text, [r.rule_id for r in final], dropped, count_tokens(text), token_budget, ids(shown))
