"""Group prior rules: what the train labels of each ``cluster.group_by`` group say on their own.

On Contract-NLI the hypothesis decides much of the label: "Confidential Information shall only
include technical information" is a Contradiction in 34 of the 50 train contracts, "Receiving
Party shall not solicit ..." NotMentioned in 45. Answering each hypothesis's majority train
label, with no model at all, scores test macro-F1 0.62 against 0.39 for the 1.5B student
zero-shot (BENCHMARKS.md). Rules clustered per hypothesis do not carry those counts, so this
module turns them into one rule per group: ``If the hypothesis is "...", the label is usually
Contradiction (3 of 4 training examples; NotMentioned 1).`` Groups smaller than ``min_rows``,
and groups whose two most frequent labels tie, get none. Pure: rows in, rules out.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Mapping, Sequence

from pld_spark.prompts.rules import Rule, rule_id

ORIGIN = "group_prior"


def group_name(template: str | None, column: str) -> str:
    """What the student's input calls ``column``: the words before ``{column}`` in the input
    template ("hypothesis" for ``"Contract: {text}\\nHypothesis: {pair}"``), else the column name."""
    m = re.search(r"([A-Za-z][A-Za-z ]*?)\s*:\s*\{" + re.escape(column) + r"\}", template or "")
    return (m.group(1) if m else column).strip().lower()


def prior_rules(rows: Sequence[Mapping], column: str, label_names: Sequence[str], min_rows: int,
                template: str | None = None) -> list[Rule]:
    """One rule per value of ``column`` among the train ``rows`` (dicts with example_id, label
    and ``column``) with at least ``min_rows`` rows and a single most frequent label. The rule's
    label is that label, its support the group's size, its ``source_example_ids`` the group's
    rows, its ``topic`` the group value; rows with an empty value or an unknown label are skipped."""
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        key = " ".join(str(r.get(column) or "").split())
        if key and r.get("label") in label_names:
            groups.setdefault(key, []).append(r)
    name = group_name(template, column)
    out = []
    for key in sorted(groups):
        members = groups[key]
        counts = Counter(m["label"] for m in members)
        ranked = sorted(label_names, key=lambda lab: (-counts[lab], label_names.index(lab)))
        top = ranked[0]
        if len(members) < max(min_rows, 1) or (len(ranked) > 1 and counts[ranked[1]] == counts[top]):
            continue
        rest = ", ".join(f"{lab} {counts[lab]}" for lab in ranked[1:] if counts[lab])
        text = (f'If the {name} is "{key}", the label is usually {top} ({counts[top]} of {len(members)} training '
                f'examples{"; " + rest if rest else ""}).')
        out.append(Rule(rule_id(ORIGIN, top, text), -1, key, text, top, len(members), ORIGIN,
                        source_example_ids=sorted(m["example_id"] for m in members)))
    return out
