"""Rule-level diff of two prompt versions: what changed from A to B, and where B's new rules came from.

:func:`rule_diff` is pure (two rule lists in prompt order -> one row per rule); the view
``prompt_diff`` (:mod:`pld_spark.storage.views`) is the same definition in Spark SQL for every
version against its ``parent_version``. The changes:

- ``kept``: a rule of both; ``reordered`` when its rank among the rules both share (kept and
  edited pairs, ordered by position) differs between A and B. Adding or removing rules around it
  does not reorder it;
- ``edited``: a rule of B, not of A, descending from a rule of A that B dropped (``parent_rule_id``:
  the conflict loop's modifications); ``from_rule_id`` names that rule, ``text_diff`` shows the
  change word by word (difflib);
- ``added``: any other rule of B not in A; ``removed``: a rule of A that is in B neither as itself
  nor as the origin of an edit.

Every rule of B not in A (added, edited) carries its lineage: origin, cluster_id, the number of
member micro-instructions and the example ids they were written for (``micro_instructions``), and
the example ids a resolve round showed the teacher (``source_example_ids``).
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping, Sequence

CHANGES = ("kept", "reordered", "edited", "added", "removed")


def inline_diff(before: str, after: str) -> str:
    """A word-level diff of two texts: unchanged words as they are, ``[-removed-]``, ``{+added+}``."""
    a, b = (before or "").split(), (after or "").split()
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.extend(a[i1:i2])
        if op in ("delete", "replace"):
            out.append("[-" + " ".join(a[i1:i2]) + "-]")
        if op in ("insert", "replace"):
            out.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(out)


def _lineage(rule: Mapping[str, Any], micro_examples: Mapping[str, str]) -> dict[str, Any]:
    members = list(rule.get("member_micro_ids") or [])
    return {"origin": rule.get("origin"), "cluster_id": rule.get("cluster_id"), "n_members": len(members),
            "member_example_ids": sorted({micro_examples[m] for m in members if m in micro_examples}),
            "source_example_ids": sorted(rule.get("source_example_ids") or [])}


def rule_diff(rules_a: Sequence[Mapping[str, Any]], rules_b: Sequence[Mapping[str, Any]], *,
              parent_of: Mapping[str, str | None] | None = None,
              micro_examples: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The diff of prompt A's rules against prompt B's (dicts of ``rules`` columns, in prompt order).

    ``parent_of``: rule id of B -> the rule of A it descends from (default: each rule's own
    ``parent_rule_id``; :func:`load` follows longer chains through the ``rules`` table).
    ``micro_examples``: micro_id -> example_id, for the lineage of B's new rules.

    Returns one row per rule: B's rules in B's order, then A's removed rules in A's order, with
    ``rule_id``, ``change``, ``from_rule_id``, ``position_before``, ``position_after`` (1-based),
    ``label``, ``instruction``; edited rows add ``before`` and ``text_diff``; added and edited rows
    add ``lineage``."""
    micro_examples = micro_examples or {}
    pos_a = {r["rule_id"]: i + 1 for i, r in enumerate(rules_a)}
    pos_b = {r["rule_id"]: i + 1 for i, r in enumerate(rules_b)}
    by_a = {r["rule_id"]: r for r in rules_a}
    parents = dict(parent_of) if parent_of is not None else {r["rule_id"]: r.get("parent_rule_id") for r in rules_b}
    pairs: dict[str, tuple[str, str]] = {}  # B rule id -> (A rule id, kind)
    for rid in pos_b:
        if rid in pos_a:
            pairs[rid] = (rid, "kept")
        elif parents.get(rid) in pos_a and parents[rid] not in pos_b:
            pairs[rid] = (parents[rid], "edited")
    ranked = list(pairs.items())
    rank_a = {b: i for i, (b, _) in enumerate(sorted(ranked, key=lambda kv: (pos_a[kv[1][0]], pos_b[kv[0]])))}
    rank_b = {b: i for i, (b, _) in enumerate(sorted(ranked, key=lambda kv: (pos_b[kv[0]], pos_a[kv[1][0]])))}
    out: list[dict[str, Any]] = []
    for r in rules_b:
        rid = r["rule_id"]
        row = {"rule_id": rid, "change": "added", "from_rule_id": None, "position_before": None,
               "position_after": pos_b[rid], "label": r.get("label"), "instruction": r.get("instruction")}
        if rid in pairs:
            src, kind = pairs[rid]
            row.update(from_rule_id=src, position_before=pos_a[src],
                       change=kind if kind == "edited" or rank_a[rid] == rank_b[rid] else "reordered")
            if kind == "edited":
                before = by_a[src].get("instruction") or ""
                row.update(before=before, text_diff=inline_diff(before, r.get("instruction") or ""))
        if row["change"] in ("added", "edited"):
            row["lineage"] = _lineage(r, micro_examples)
        out.append(row)
    matched = {src for src, _ in pairs.values()}
    out += [{"rule_id": r["rule_id"], "change": "removed", "from_rule_id": None,
             "position_before": pos_a[r["rule_id"]], "position_after": None, "label": r.get("label"),
             "instruction": r.get("instruction")} for r in rules_a if r["rule_id"] not in matched]
    return out


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Rows per change."""
    return {c: sum(1 for r in rows if r["change"] == c) for c in CHANGES}


def format_table(rows: Sequence[Mapping[str, Any]], width: int = 70) -> str:
    """The diff as a text table, then the word diff of every edited rule."""
    from pld_spark.report import text_table

    def pos(v):
        return "-" if v is None else str(v)

    def origin(r):
        lin = r.get("lineage")
        if not lin:
            return ""
        ex = lin["member_example_ids"] + [e for e in lin["source_example_ids"] if e not in lin["member_example_ids"]]
        shown = ", ".join(ex[:3]) + (f" +{len(ex) - 3}" if len(ex) > 3 else "")
        return (f"{lin['origin'] or '?'} c{lin['cluster_id'] if lin['cluster_id'] is not None else '-'} "
                f"{lin['n_members']}m [{shown}]")

    def cut(s):
        s = " ".join((s or "").split())
        return s if len(s) <= width else s[:width - 1] + "…"

    table = text_table(["change", "before", "after", "rule_id", "from", "label", "lineage", "instruction"],
                       [[r["change"], pos(r["position_before"]), pos(r["position_after"]), r["rule_id"],
                         r["from_rule_id"] if r["from_rule_id"] not in (None, r["rule_id"]) else "",
                         r.get("label") or "", origin(r), cut(r.get("instruction"))] for r in rows])
    edits = [f"\n{r['from_rule_id']} -> {r['rule_id']}:\n  {r['text_diff']}" for r in rows if r["change"] == "edited"]
    counts = ", ".join(f"{n} {c}" for c, n in summary(rows).items() if n)
    return "\n".join([table, *edits, "", counts or "no rules in either version"])


# ----------------------------------------------------------------------------- loading (Spark)
def _parents_in(store, rule_ids: Sequence[str], targets: set[str], max_hops: int = 50) -> dict[str, str | None]:
    """For each of ``rule_ids``: the nearest ancestor (through ``rules.parent_rule_id``) in ``targets``."""
    from pyspark.sql import functions as F

    parent = {r.rule_id: r.parent_rule_id for r in store.read("rules").where(F.col("parent_rule_id").isNotNull())
              .select("rule_id", "parent_rule_id").collect()}
    out: dict[str, str | None] = {}
    for rid in rule_ids:
        cur, hops = parent.get(rid), 0
        while cur is not None and cur not in targets and hops < max_hops:
            cur, hops = parent.get(cur), hops + 1
        out[rid] = cur if cur in targets else None
    return out


def load(ctx, ref_a: str, ref_b: str) -> dict[str, Any]:
    """Resolve two prompt references (versions or aliases) and diff their rules:
    ``{"version_a", "version_b", "rows", "summary"}``."""
    from pyspark.sql import functions as F

    from pld_spark.prompts.versions import PromptVersions

    versions = PromptVersions(ctx.store, ctx.cfg.task.name)
    a, b = versions.resolve(ref_a), versions.resolve(ref_b)
    rules_a, rules_b = versions.rules(a.version), versions.rules(b.version)
    ids_a = {r["rule_id"] for r in rules_a}
    new = [r for r in rules_b if r["rule_id"] not in ids_a]
    parent_of = _parents_in(ctx.store, [r["rule_id"] for r in new], ids_a) if new else {}
    members = sorted({m for r in new for m in (r.get("member_micro_ids") or [])})
    micro = ({r.micro_id: r.example_id for r in ctx.store.read("micro_instructions")
              .where(F.col("micro_id").isin(members)).select("micro_id", "example_id").collect()} if members else {})
    rows = rule_diff(rules_a, rules_b, parent_of=parent_of, micro_examples=micro)
    return {"version_a": a.version, "version_b": b.version, "rows": rows, "summary": summary(rows)}
