"""Human review of rules and promotion of prompt versions.

- :func:`add_review` appends to ``rule_reviews`` (approve / edit / pin / disable). The latest
  row per rule applies the next time a prompt is assembled (consolidate, resolve): a reviewed
  rule set is a *new* prompt version; existing versions never change.
- :func:`promote` points an alias (``live`` by default) at a prompt version; the latest row per
  (task, alias) is current, the rest is history. Each manual promotion is also a ``promotions`` row
  (decision ``manual``, decided_by), next to the automatic champion/challenger decisions.
- :func:`show_prompt` and :func:`list_rules` take a version id or an alias. Every lookup goes
  through :meth:`pld_spark.prompts.versions.PromptVersions.resolve` (one fallback order, one
  error message for every command).
"""
from __future__ import annotations

import getpass
import hashlib
import os
from datetime import datetime, timezone
from typing import Any

from pld_spark.errors import DataError

ACTIONS = ("approve", "edit", "pin", "disable")


def _who(name: str | None) -> str:
    if name:
        return name
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def add_review(ctx, rule_id: str, action: str, new_text: str | None = None, reviewer: str | None = None,
               note: str | None = "") -> dict[str, Any]:
    """Record a review action on a rule; returns the stored row (as a dict)."""
    from pyspark.sql import functions as F

    from pld_spark.storage.catalog import RULE_REVIEWS

    if action not in ACTIONS:
        raise DataError(f"unknown review action {action!r}; use one of {list(ACTIONS)}")
    text = (new_text or "").strip() or None
    if action == "edit" and not text:
        raise DataError("review action 'edit' needs the new rule text (--text)")
    if action != "edit" and text:
        raise DataError(f"review action '{action}' takes no text; use --action edit to change a rule's text")
    store = ctx.store
    if store.read("rules").where(F.col("rule_id") == rule_id).limit(1).count() == 0:
        raise DataError(f"unknown rule id {rule_id!r}: no row in table 'rules' (see `pld rules list`)")
    now = datetime.now(timezone.utc)
    who = _who(reviewer)
    review_id = "rv-" + hashlib.sha256(f"{rule_id}\u001f{action}\u001f{text}\u001f{who}\u001f{now.isoformat()}"
                                       .encode()).hexdigest()[:16]
    row = {"review_id": review_id, "rule_id": rule_id, "action": action, "new_text": text, "reviewer": who,
           "note": note or "", "created_at": now}
    store.append("rule_reviews", ctx.spark.createDataFrame([tuple(row[c] for c in RULE_REVIEWS.columns)],
                                                           RULE_REVIEWS.ddl))
    return row


def promote(ctx, version: str, alias: str = "live", by: str | None = None, note: str | None = "") -> dict[str, Any]:
    """Point ``alias`` of the task at a prompt version (or at what another alias points to); the
    decision is a ``promotions`` row (decision ``manual``, who, the version it replaced)."""
    from pld_spark.monitor.promotion import manual
    from pld_spark.prompts.versions import PromptVersions

    versions = PromptVersions(ctx.store, ctx.cfg.task.name)
    target = versions.resolve(version).version
    who = _who(by)
    previous = versions.aliases().get(alias)
    versions.set_alias(alias, target, by=who, note=note or "")
    manual(ctx, target, previous, alias, who, note or "")
    return {"task": ctx.cfg.task.name, "alias": alias, "prompt_version": target, "promoted_by": who,
            "note": note or ""}


def show_prompt(ctx, version: str | None) -> str:
    """The text of a prompt version (or alias; None: the default alias order)."""
    from pld_spark.prompts.versions import PromptVersions

    return PromptVersions(ctx.store, ctx.cfg.task.name).resolve(version).text


def list_rules(ctx, prompt_version: str | None = None):
    """Rules with their latest review: those of a prompt version (or alias) in prompt order,
    else every rule of the task ordered by label and support."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    store = ctx.store
    rules = store.read("rules")
    w = Window.partitionBy("rule_id").orderBy(F.col("created_at").desc(), F.col("review_id").desc())
    rev = (store.read("rule_reviews").withColumn("_n", F.row_number().over(w)).where("_n = 1")
           .select("rule_id", F.col("action").alias("review"), F.col("reviewer"), F.col("new_text").alias("edited_text")))
    cols = ["rule_id", "label", "support", "origin", "valid", "review", "reviewer", "instruction", "edited_text"]
    if prompt_version:
        from pld_spark.prompts.versions import PromptVersions

        v = PromptVersions(store, ctx.cfg.task.name).resolve(prompt_version).version
        p = store.read("prompts").where(F.col("prompt_version") == v).select(
            F.posexplode("rule_ids").alias("position", "rule_id"))
        return (p.join(rules, "rule_id", "left").join(rev, "rule_id", "left")
                .select((F.col("position") + 1).alias("position"), *cols).orderBy("position"))
    return (rules.where(F.col("task") == ctx.cfg.task.name).join(rev, "rule_id", "left").select(*cols)
            .orderBy("label", F.col("support").desc(), "rule_id"))
