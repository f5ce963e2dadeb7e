"""Teacher prompt templates, rendering, response parsing and rule validation.

Templates are package data (``pld_spark/prompts/templates/<version>.txt``): a ``### system``
and a ``### user`` section with ``$name`` placeholders (``string.Template``, so JSON braces in
the text need no escaping). The file stem is the template version, which is part of the
extract resume key and of the response-cache key: change a template, bump its file name.

Validation is deliberately mechanical (the tiny default teacher writes weak rules and a junk
rule must never crash a stage): a rule is valid when it is non-empty, within length bounds,
names a label of the label set, concludes no label but its own, is not a copy of the input and
carries no prompt-injection pattern. Invalid rules are kept (with the reason) by the callers,
never dropped silently. The keyword-trigger check of consolidated rules is
:mod:`pld_spark.prompts.keywords`.
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Sequence

from pld_spark.llm.types import ChatRequest

EXTRACT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"}, "rule": {"type": "string"}},
    "required": ["reasoning", "rule"],
}

CONSOLIDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "instruction": {"type": "string"}, "label": {"type": "string"}},
    "required": ["topic", "instruction", "label"],
}

RESOLVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "operations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "op": {"type": "string", "enum": ["modify", "add", "delete"]},
                    "rule_id": {"type": "string"},
                    "instruction": {"type": "string"},
                    "label": {"type": "string"},
                },
                "required": ["op"],
            },
        }
    },
    "required": ["operations"],
}

# Prompt-injection patterns: flagged on inputs and rules; a rule carrying one is invalid.
INJECTION_PATTERNS: tuple[str, ...] = (
    r"\b(ignore|disregard|forget)\b[^.\n]{0,30}\b(previous|prior|above|earlier|all|your|the)\b[^.\n]{0,20}"
    r"\b(instructions?|prompts?|rules?|directions?)\b",
    r"\bsystem\s+prompt\b",
    r"<\|?\s*/?\s*(system|assistant|user|im_start|im_end|endoftext)\s*\|?>",
    r"(^|\n)\s*(system|assistant)\s*:",
    r"\[/?\s*(INST|SYS)\s*\]",
    r"<<\s*/?\s*SYS\s*>>",
    r"\byou are now\b",
    r"\bnew instructions\s*:",
    r"\b(ignore|disregard|forget)\b[^.\n]{0,40}\byou\s+(were|have\s+been|'ve\s+been)\s+(told|given|asked|instructed)\b",
    # an answer in our own JSON shape smuggled into an input ({"label": ...}, {"rule": ...})
    r"[{,]\s*\"(label|rule|reasoning|instruction|topic|operations)\"\s*:",
)
_INJECTION_RE = re.compile("|".join(f"(?:{p})" for p in INJECTION_PATTERNS), re.IGNORECASE)


@dataclass(frozen=True)
class RuleLimits:
    """Length bounds and the copy threshold used by :func:`validate_rule`."""

    min_chars: int = 12
    max_chars: int = 600
    max_copy_overlap: float = 0.7


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    system: str
    user: str

    def render(self, **fields: Any) -> list[dict[str, str]]:
        """Chat messages with every ``$field`` substituted (a missing field raises KeyError)."""
        values = {k: str(v) for k, v in fields.items()}
        return [
            {"role": "system", "content": string.Template(self.system).substitute(values).strip()},
            {"role": "user", "content": string.Template(self.user).substitute(values).strip()},
        ]


@lru_cache(maxsize=None)
def load_template(version: str) -> PromptTemplate:
    """Read ``templates/<version>.txt`` from the package (``### system`` / ``### user`` sections)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", version or ""):
        raise ValueError(f"bad template version {version!r}")
    try:
        text = (resources.files("pld_spark.prompts") / "templates" / f"{version}.txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        available = sorted(p.name[:-4] for p in (resources.files("pld_spark.prompts") / "templates").iterdir()
                           if p.name.endswith(".txt"))
        raise FileNotFoundError(f"no teacher template '{version}' in pld_spark/prompts/templates "
                                f"(available: {available})") from None
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.fullmatch(r"###\s*(system|user)\s*", line.strip())
        if m:
            current = m.group(1)
            sections[current] = []
        elif current:
            sections[current].append(line)
    if "system" not in sections or "user" not in sections:
        raise ValueError(f"template '{version}' needs '### system' and '### user' sections")
    return PromptTemplate(version, "\n".join(sections["system"]), "\n".join(sections["user"]))


# ----------------------------------------------------------------------------- rendering helpers
def label_definitions(task) -> str:
    return "\n".join(f"- {lab.name}: {lab.description}" if lab.description else f"- {lab.name}"
                     for lab in task.labels)


def truncate(text: str, max_chars: int) -> str:
    """Cut to ``max_chars`` characters, marking the cut (the teacher sees that text is missing)."""
    text = text or ""
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - 16)].rstrip() + " [...truncated]"


def render_extract(task, input_text: str, gold_label: str, *, template_version: str, max_input_chars: int,
                   max_tokens: int | None = None, request_id: str = "") -> ChatRequest:
    """One extract request: input (truncated), gold label and label descriptions -> {reasoning, rule}."""
    msgs = load_template(template_version).render(
        task_description=task.description.strip(), label_definitions=label_definitions(task),
        input_text=truncate(input_text, max_input_chars), gold_label=gold_label,
        label_names=", ".join(task.label_names))
    return ChatRequest(messages=msgs, json_schema=EXTRACT_SCHEMA, max_tokens=max_tokens,
                       template_version=template_version, request_id=request_id)


def render_consolidate(task, member_rules: Sequence[tuple[str, str]], *, template_version: str,
                       max_tokens: int | None = None, request_id: str = "", member_inputs: Sequence[str] = (),
                       feedback: str = "", max_input_chars: int = 300) -> ChatRequest:
    """One consolidation request for a cluster; ``member_rules`` is [(label, rule text)];
    ``member_inputs`` some of the inputs behind them and ``feedback`` a note on a rejected first
    answer (templates from consolidate-v2 on use them; v1 ignores them)."""
    counts: dict[str, int] = {}
    for lab, _ in member_rules:
        counts[lab] = counts.get(lab, 0) + 1
    majority = max(sorted(counts), key=lambda k: counts[k]) if counts else ""
    lines = "\n".join(f"- [{lab}] {rule.strip()}" for lab, rule in member_rules)
    inputs = "\n".join(f"- {truncate(t, max_input_chars)}" for t in member_inputs) or "(not shown)"
    fields = dict(task_description=task.description.strip(), label_definitions=label_definitions(task),
                  member_rules=lines, majority_label=majority, label_names=", ".join(task.label_names))
    tmpl = load_template(template_version)
    if "$member_inputs" in tmpl.user:
        fields.update(member_inputs=inputs, feedback=f"\nNote: {feedback.strip()}\n" if feedback.strip() else "")
    msgs = tmpl.render(**fields)
    return ChatRequest(messages=msgs, json_schema=CONSOLIDATE_SCHEMA, max_tokens=max_tokens,
                       template_version=template_version, request_id=request_id)


def failure_groups(rules: Sequence[tuple[str, str, str]], failures: Sequence[tuple[str, str, str]],
                   max_input_chars: int = 600) -> str:
    """Failures grouped by (correct, predicted), largest group first, each with the rules of both
    labels: those that should have fired and those that may have fired instead."""
    groups: dict[tuple[str, str], list[str]] = {}
    for text, gold, pred in failures:
        groups.setdefault((gold, pred), []).append(text)
    by_label: dict[str, list[str]] = {}
    for rid, lab, _ in rules:
        by_label.setdefault(lab, []).append(rid)
    parts = []
    for (gold, pred), texts in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        should = ", ".join(by_label.get(gold, [])) or "none"
        fired = ", ".join(by_label.get(pred, [])) or "none"
        lines = [f'Correct "{gold}", chosen "{pred}" ({len(texts)} case{"s" if len(texts) > 1 else ""}); '
                 f'rules for {gold}: {should}; rules for {pred}: {fired}']
        lines += [f"- Input: {truncate(t, max_input_chars)}" for t in texts]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or "(none)"


def render_resolve(task, rules: Sequence[tuple[str, str, str]], failures: Sequence[tuple[str, str, str]],
                   successes: Sequence[tuple[str, str]], *, template_version: str, max_input_chars: int = 600,
                   max_operations: int = 6, max_tokens: int | None = None, request_id: str = "") -> ChatRequest:
    """The conflict-resolution request.

    ``rules``: [(rule_id, label, instruction)]; ``failures``: [(input, gold, predicted)];
    ``successes``: [(input, gold)]. Templates from resolve-v2 on show the failures grouped by
    confusion pair (:func:`failure_groups`); v1 as a flat list.
    """
    rule_lines = "\n".join(f"{rid}: [{lab}] {text.strip()}" for rid, lab, text in rules) or "(no rules yet)"
    fail_lines = "\n".join(f"- Input: {truncate(t, max_input_chars)}\n  correct: {g}; predicted: {p}"
                           for t, g, p in failures) or "(none)"
    ok_lines = "\n".join(f"- Input: {truncate(t, max_input_chars)}\n  correct: {g}" for t, g in successes) or "(none)"
    tmpl = load_template(template_version)
    fields = dict(task_description=task.description.strip(), label_definitions=label_definitions(task),
                  current_rules=rule_lines, successes=ok_lines, label_names=", ".join(task.label_names),
                  max_operations=max_operations)
    if "$failure_groups" in tmpl.user:
        fields["failure_groups"] = failure_groups(rules, failures, max_input_chars)
    else:
        fields["failures"] = fail_lines
    msgs = tmpl.render(**fields)
    return ChatRequest(messages=msgs, json_schema=RESOLVE_SCHEMA, max_tokens=max_tokens,
                       template_version=template_version, request_id=request_id)


# ----------------------------------------------------------------------------- parsing
def response_json(data: dict | None, text: str | None) -> dict | None:
    """The response's JSON object: ``data`` if the backend parsed it, else the first ``{...}``
    object found in ``text`` (models sometimes wrap JSON in prose or code fences)."""
    if isinstance(data, dict):
        return data
    if not text:
        return None
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except (ValueError, TypeError):
        pass
    from pld_spark.llm.jsonparse import first_json_object

    found = first_json_object(text)
    return json.loads(found) if found else None


def _str_field(obj: dict | None, key: str) -> str:
    v = (obj or {}).get(key)
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        v = " ".join(str(x) for x in v)
    return str(v).strip()


def parse_extract(data: dict | None, text: str | None) -> tuple[str, str]:
    """-> (reasoning, rule); empty strings when missing (validation then marks the rule invalid)."""
    obj = response_json(data, text)
    return _str_field(obj, "reasoning"), _str_field(obj, "rule")


def parse_consolidate(data: dict | None, text: str | None) -> tuple[str, str, str]:
    """-> (topic, instruction, label)."""
    obj = response_json(data, text)
    return _str_field(obj, "topic"), _str_field(obj, "instruction"), _str_field(obj, "label")


def parse_operations(data: dict | None, text: str | None) -> list[dict[str, str]]:
    """-> list of operations ({op, rule_id?, instruction?, label?}); malformed items are skipped
    by the caller with a reason, so this only normalises shapes."""
    obj = response_json(data, text)
    ops = (obj or {}).get("operations")
    if not isinstance(ops, list):
        return []
    out = []
    for item in ops:
        if isinstance(item, dict):
            out.append({k: ("" if item.get(k) is None else str(item.get(k)).strip())
                        for k in ("op", "rule_id", "instruction", "label")})
    return out


# ----------------------------------------------------------------------------- validation
def injection_flag(*texts: str | None) -> bool:
    """True when any text contains a prompt-injection pattern (see ``INJECTION_PATTERNS``)."""
    return any(t and _INJECTION_RE.search(t) for t in texts)


def label_variants(name: str) -> set[str]:
    """Ways a label may be written in prose: as is, lower-case, camelCase and _/- split."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    out = {name.lower(), spaced.lower(), re.sub(r"[_\-]+", " ", spaced).lower()}
    return {v.strip() for v in out if v.strip()}


def mentioned_labels(text: str, label_names: Iterable[str]) -> list[str]:
    """Labels of the label set that ``text`` names (word-boundary, case-insensitive)."""
    low = (text or "").lower()
    found = []
    for name in label_names:
        for v in label_variants(name):
            if re.search(r"(?<![a-z0-9])" + re.escape(v) + r"(?![a-z0-9])", low):
                found.append(name)
                break
    return found


#: where a rule states its conclusion: "the label is X", "label: X", "classify it as X", "labelled X"
_CONCLUSION = re.compile(
    r"(?:\b(?:label|class|category|answer|verdict)\s*(?:is|should\s+be|will\s+be|must\s+be|becomes|=|:)"
    r"|\b(?:label(?:l?ed)?|classif(?:y|ied)|tag(?:ged)?|mark(?:ed)?)\s+(?:(?:it|this|them)\s+)?as\b"
    r"|\blabell?ed\b)\s*[\"'\u201c\u2018`]?", re.I)


def concluded_labels(text: str, label_names: Iterable[str]) -> list[str]:
    """Labels a rule *concludes* (right after "the label is", "classify it as", ...), in order,
    unlike :func:`mentioned_labels`, which also counts "..., not religion" or a label named in the
    condition."""
    low = (text or "").lower()
    variants = sorted(((v, name) for name in label_names for v in label_variants(name)), key=lambda t: -len(t[0]))
    out: list[str] = []
    for m in _CONCLUSION.finditer(low):
        rest = low[m.end():]
        for v, name in variants:
            if rest.startswith(v) and not re.match(r"[a-z0-9]", rest[len(v):len(v) + 1]):
                if name not in out:
                    out.append(name)
                break
    return out


_WORD = re.compile(r"[a-z0-9']+")


def copy_overlap(rule: str, source: str, n: int = 3) -> float:
    """Share of the rule's word n-grams that occur verbatim in ``source`` (0..1)."""
    rw = _WORD.findall((rule or "").lower())
    sw = _WORD.findall((source or "").lower())
    if not rw or not sw:
        return 0.0
    k = min(n, len(rw))
    grams = [tuple(rw[i: i + k]) for i in range(len(rw) - k + 1)]
    src = {tuple(sw[i: i + k]) for i in range(len(sw) - k + 1)}
    return sum(g in src for g in grams) / len(grams)


#: the rule form in our templates is "If <condition about the input>, the label is <label>.";
#: small teachers copy it back verbatim, with <> or [] (seen: "If [condition about the input] is true")
_PLACEHOLDER = re.compile(r"[<\[{]\s*(?:condition|label|the label|input)\b[^>\]}]{0,40}[>\]}]", re.I)


def validate_rule(rule: str | None, label_names: Sequence[str], *, input_text: str | None = None,
                  gold_label: str | None = None, require_label: str | None = None,
                  limits: RuleLimits = RuleLimits()) -> tuple[bool, str | None]:
    """-> (valid, reason). Checks: non-empty, length bounds, names a label of the label set
    (the gold label counts even when it is not in ``label_names``; with ``require_label``, that
    label), concludes no label but its own (``require_label``, else ``gold_label``), does not
    merely list the whole label set (3+ labels), not a copy of the input, no prompt-injection
    pattern."""
    text = (rule or "").strip()
    if not text:
        return False, "empty rule"
    if len(text) < limits.min_chars:
        return False, f"rule shorter than {limits.min_chars} characters"
    if len(text) > limits.max_chars:
        return False, f"rule longer than {limits.max_chars} characters ({len(text)})"
    names = list(label_names) + ([gold_label] if gold_label and gold_label not in label_names else [])
    named = mentioned_labels(text, names)
    if not named:
        return False, "rule names no label of the label set"
    if require_label and require_label not in named:
        return False, f"rule does not name its label '{require_label}'"
    own = require_label or gold_label
    if own:  # "[Entailment] If ..., the label is Contradiction": a rule must conclude its own label
        other = [c for c in concluded_labels(text, names) if c != own]
        if other:
            return False, f"rule concludes '{other[0]}', not its label '{own}'"
    if len(label_names) >= 3 and set(label_names) <= set(named):
        return False, "rule lists the whole label set instead of deciding one label"
    if input_text:
        ov = copy_overlap(text, input_text)
        if ov >= limits.max_copy_overlap and len(_WORD.findall(text.lower())) >= 4:
            return False, f"rule copies the input ({ov:.0%} of its word trigrams)"
        if len(text) >= 20 and text.lower() in (input_text or "").lower():
            return False, "rule is a verbatim span of the input"
    if _PLACEHOLDER.search(text):
        return False, "rule keeps the template's placeholder instead of a condition"
    if injection_flag(text):
        return False, "rule contains a prompt-injection pattern"
    return True, None
