"""Writers of rows more than one stage produces (rules come from consolidate and from resolve).

Rows are built from named fields (a dataclass or dict keyed by column) and matched to the
catalogue's columns by name, never by position.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from pld_spark.storage.catalog import TableSpec


def frame(spark, spec: TableSpec, rows: Sequence[Mapping[str, Any]]):
    """A Spark frame of ``spec`` from rows keyed by column (missing columns are NULL; a key that is
    not a column is an error, so a renamed column cannot be written silently to nowhere)."""
    cols = spec.columns
    for r in rows:
        unknown = set(r) - set(cols)
        if unknown:
            raise KeyError(f"table '{spec.name}' has no columns {sorted(unknown)}")
    return spark.createDataFrame([tuple(r.get(c) for c in cols) for r in rows], spec.ddl)


def write_rules(ctx, rules: Sequence, cluster_run_id: str | None, teacher_model: str | None) -> None:
    """Insert rules (:class:`pld_spark.prompts.rules.Rule`); first write wins: a rule id is its content.
    Only a stored row without a ``cluster_fingerprint`` (written before fingerprints, or after an
    unanswered teacher call) is rewritten by the same rule with one, so a later run can reuse it."""
    from pld_spark.storage.catalog import RULES

    if not rules:
        return
    now = datetime.now(timezone.utc)
    rows = [{**r.row(), "member_micro_ids": list(r.member_micro_ids or []), "task": ctx.cfg.task.name,
             "cluster_run_id": cluster_run_id, "teacher_model": teacher_model, "run_id": ctx.run_id,
             "created_at": now} for r in rules]
    ctx.store.merge("rules", frame(ctx.spark, RULES, rows), update=True,
                    update_when="t.cluster_fingerprint IS NULL AND s.cluster_fingerprint IS NOT NULL")
