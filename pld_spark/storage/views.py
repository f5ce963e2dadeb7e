"""SQL views over the tables: lineage, reviews, metrics, run status.

The SQL of every view is in :data:`VIEW_SQL` (table names as ``{placeholders}``) so the
README can quote it; :func:`view_sql` renders one with plain table names. Locally the tables
are path-based Delta folders registered as temp views, so the views are temp views of this
session (``pld sql query`` creates them before running a query). On Databricks (lakehouse
catalog set) they are ``CREATE OR REPLACE VIEW catalog.schema.<view>`` over the catalog tables.
"""
from __future__ import annotations

import re

#: seconds without a heartbeat after which a 'running' run counts as abandoned (a live run
#: writes one at least every ``pld_spark.context.HEARTBEAT_S``)
RUN_LEASE_S = 600

VIEW_SQL: dict[str, str] = {
    # The prompt the task's 'live' alias points at, one row per rule in prompt order, with the
    # text as shipped (an edit review used by that version replaces the rule's instruction).
    "live_prompt_rules": """
WITH live AS (
  SELECT task, prompt_version, promoted_by, promoted_at FROM (
    SELECT a.*, row_number() OVER (PARTITION BY task, alias ORDER BY promoted_at DESC) AS n
    FROM {prompt_aliases} a WHERE alias = 'live') WHERE n = 1
),
prompt_rules AS (
  SELECT p.prompt_version, p.token_count, p.review_ids, e.pos, e.rule_id
  FROM {prompts} p LATERAL VIEW posexplode(p.rule_ids) e AS pos, rule_id
)
SELECT l.task, l.prompt_version, l.promoted_by, l.promoted_at, pr.token_count AS prompt_tokens,
       pr.pos + 1 AS position, pr.rule_id, r.label, r.topic,
       coalesce(CASE WHEN rv.action = 'edit' THEN rv.new_text END, r.instruction) AS instruction,
       r.support, r.origin, rv.action AS review_action, rv.reviewer
FROM live l
JOIN prompt_rules pr ON pr.prompt_version = l.prompt_version
LEFT JOIN {rules} r ON r.rule_id = pr.rule_id
LEFT JOIN {rule_reviews} rv ON rv.rule_id = pr.rule_id AND array_contains(pr.review_ids, rv.review_id)
""",
    # prompt version -> rule -> cluster -> micro-instruction -> example. Rules added by the
    # conflict loop link to the examples that round showed the teacher (via = 'resolve_round').
    "rule_lineage": """
WITH prompt_rules AS (
  SELECT p.task, p.prompt_version, p.kind, e.pos, e.rule_id
  FROM {prompts} p LATERAL VIEW posexplode(p.rule_ids) e AS pos, rule_id
),
links AS (
  SELECT r.rule_id, m.micro_id, CAST(NULL AS STRING) AS source_example_id
  FROM {rules} r LATERAL VIEW explode(r.member_micro_ids) m AS micro_id
  UNION ALL
  SELECT r.rule_id, CAST(NULL AS STRING) AS micro_id, s.example_id AS source_example_id
  FROM {rules} r LATERAL VIEW explode(r.source_example_ids) s AS example_id
)
SELECT pr.task, pr.prompt_version, pr.kind, pr.pos + 1 AS position, pr.rule_id, r.origin,
       r.label AS rule_label, r.parent_rule_id, r.cluster_run_id, r.cluster_id,
       l.micro_id, ic.dist_to_centroid, mi.rule AS micro_rule,
       coalesce(mi.example_id, l.source_example_id) AS example_id, mi.label AS example_label,
       CASE WHEN l.micro_id IS NOT NULL THEN 'cluster'
            WHEN l.source_example_id IS NOT NULL THEN 'resolve_round' END AS via
FROM prompt_rules pr
LEFT JOIN {rules} r ON r.rule_id = pr.rule_id
LEFT JOIN links l ON l.rule_id = pr.rule_id
LEFT JOIN {micro_instructions} mi ON mi.micro_id = l.micro_id
LEFT JOIN {instruction_clusters} ic ON ic.micro_id = l.micro_id AND ic.cluster_run_id = r.cluster_run_id
""",
    # The examples a prompt version shows (few-shot conditions, and the label examples of a rule
    # prompt with consolidate.label_examples), in prompt order.
    "prompt_examples": """
WITH shown AS (
  SELECT p.task, p.prompt_version, p.kind, e.pos + 1 AS position, e.example_id
  FROM {prompts} p LATERAL VIEW posexplode(p.example_ids) e AS pos, example_id
)
SELECT s.task, s.prompt_version, s.kind, s.position, s.example_id, x.split, x.label, x.input_text
FROM shown s
LEFT JOIN {examples} x ON x.example_id = s.example_id
""",
    # Which reviews changed (were applied by) a prompt version.
    "prompt_reviews": """
WITH used AS (
  SELECT p.task, p.prompt_version, p.kind, p.created_at, e.review_id
  FROM {prompts} p LATERAL VIEW explode(p.review_ids) e AS review_id
)
SELECT u.task, u.prompt_version, u.kind, u.created_at AS prompt_created_at, rv.review_id, rv.rule_id,
       rv.action, rv.new_text, rv.reviewer, rv.note, rv.created_at AS reviewed_at
FROM used u
JOIN {rule_reviews} rv ON rv.review_id = u.review_id
""",
    # Every prompt version with its evaluations (NULL metrics when not evaluated yet) and the
    # best val macro-F1 the conflict loop measured for it.
    "prompt_metrics": """
WITH loop_val AS (
  SELECT prompt_version, max(f1) AS loop_val_macro_f1 FROM (
    SELECT prompt_version, val_macro_f1 AS f1 FROM {resolution_rounds}
    UNION ALL
    SELECT candidate_version AS prompt_version, candidate_val_macro_f1 AS f1 FROM {resolution_rounds}
    WHERE candidate_version IS NOT NULL)
  GROUP BY prompt_version
)
SELECT p.task, p.prompt_version, p.kind, p.parent_version, p.token_count, p.created_at,
       lv.loop_val_macro_f1, e.run_id AS eval_run_id, e.condition, e.n, e.macro_f1, e.ci_low, e.ci_high,
       e.accuracy, e.latency_p50, e.latency_p95, e.prompt_tokens_mean, e.prefix_hit_rate,
       e.created_at AS evaluated_at
FROM {prompts} p
LEFT JOIN loop_val lv ON lv.prompt_version = p.prompt_version
LEFT JOIN {evaluations} e ON e.prompt_version = p.prompt_version
""",
    "predictions_per_label_day": """
SELECT prompt_version, condition, to_date(scored_at) AS day, label, count(*) AS n,
       sum(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) AS errors,
       avg(element_at(probabilities, label)) AS mean_probability, avg(latency_s) AS mean_latency_s
FROM {predictions}
GROUP BY prompt_version, condition, to_date(scored_at), label
""",
    # The latest row per run (runs is append-only: 'running' rows at the start, per committed
    # extract batch and as heartbeats, then 'succeeded' / 'failed' / 'abandoned'). A run whose
    # latest row is 'running' but whose heartbeat is older than the lease is reported
    # 'abandoned': its process died without a final row. The usage columns are what its last
    # row recorded (so a killed run still shows the calls it paid for up to its last batch).
    "run_status": """
SELECT run_id, command,
       CASE WHEN status = 'running'
             AND coalesce(heartbeat_at, event_time) < current_timestamp() - INTERVAL """ + str(RUN_LEASE_S) + """ SECONDS
            THEN 'abandoned' ELSE status END AS status,
       started_at, ended_at, wall_s, config_hash, code_version, counts,
       tokens_in, tokens_out, llm_calls, cost_usd, error, host, pid,
       coalesce(heartbeat_at, event_time) AS heartbeat_at
FROM (
  SELECT r.*, row_number() OVER (PARTITION BY run_id
                                 ORDER BY event_time DESC, CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS n
  FROM {runs} r)
WHERE n = 1
""",
    # Rule-level diff of every prompt version that has a parent_version against that parent (the
    # pure twin is pld_spark.monitor.diff.rule_diff). A rule of the child whose parent_rule_id is a
    # rule of the parent that the child dropped is 'edited' (from_rule_id: that rule); a rule of
    # both is 'kept', or 'reordered' when its rank among the rules the two share (kept + edited)
    # changed; the rest of the child is 'added', the rest of the parent 'removed'. Positions are
    # 1-based prompt positions.
    "prompt_diff": """
WITH pr AS (
  SELECT p.prompt_version, e.pos + 1 AS pos, e.rule_id
  FROM {prompts} p LATERAL VIEW posexplode(p.rule_ids) e AS pos, rule_id
),
v AS (SELECT DISTINCT prompt_version, parent_version FROM {prompts} WHERE parent_version IS NOT NULL),
a AS (SELECT v.prompt_version, v.parent_version, pr.pos, pr.rule_id
       FROM v JOIN pr ON pr.prompt_version = v.parent_version),
b AS (SELECT v.prompt_version, v.parent_version, pr.pos, pr.rule_id
       FROM v JOIN pr ON pr.prompt_version = v.prompt_version),
kept AS (
  SELECT b.prompt_version, b.parent_version, a.rule_id AS a_id, b.rule_id AS b_id, a.pos AS pos_a, b.pos AS pos_b,
         'kept' AS kind
  FROM b JOIN a ON a.prompt_version = b.prompt_version AND a.rule_id = b.rule_id
),
b_new AS (SELECT * FROM b LEFT ANTI JOIN a ON a.prompt_version = b.prompt_version AND a.rule_id = b.rule_id),
edited AS (
  SELECT bn.prompt_version, bn.parent_version, a.rule_id AS a_id, bn.rule_id AS b_id, a.pos AS pos_a, bn.pos AS pos_b,
         'edited' AS kind
  FROM b_new bn
  JOIN {rules} r ON r.rule_id = bn.rule_id
  JOIN a ON a.prompt_version = bn.prompt_version AND a.rule_id = r.parent_rule_id
  LEFT ANTI JOIN b b2 ON b2.prompt_version = a.prompt_version AND b2.rule_id = a.rule_id
),
pairs AS (SELECT * FROM kept UNION ALL SELECT * FROM edited),
ranked AS (
  SELECT pairs.*,
         row_number() OVER (PARTITION BY prompt_version ORDER BY pos_a, pos_b) AS rank_a,
         row_number() OVER (PARTITION BY prompt_version ORDER BY pos_b, pos_a) AS rank_b
  FROM pairs
),
changes AS (
  SELECT prompt_version, parent_version, b_id AS rule_id,
         CASE WHEN kind = 'edited' THEN 'edited' WHEN rank_a <> rank_b THEN 'reordered' ELSE 'kept' END AS change,
         a_id AS from_rule_id, pos_a AS position_before, pos_b AS position_after
  FROM ranked
  UNION ALL
  SELECT b.prompt_version, b.parent_version, b.rule_id, 'added', CAST(NULL AS STRING), CAST(NULL AS INT), b.pos
  FROM b LEFT ANTI JOIN pairs ON pairs.prompt_version = b.prompt_version AND pairs.b_id = b.rule_id
  UNION ALL
  SELECT a.prompt_version, a.parent_version, a.rule_id, 'removed', CAST(NULL AS STRING), a.pos, CAST(NULL AS INT)
  FROM a LEFT ANTI JOIN pairs ON pairs.prompt_version = a.prompt_version AND pairs.a_id = a.rule_id
)
SELECT c.prompt_version, c.parent_version, c.rule_id, c.change, c.from_rule_id, c.position_before,
       c.position_after, r.instruction
FROM changes c
LEFT JOIN {rules} r ON r.rule_id = c.rule_id
""",
    # The latest drift_daily row per (task, prompt version): is bulk scoring drifting right now?
    "drift_status": """
SELECT day, task, prompt_version, drifted, reasons, n, psi, chi2, chi2_p, error_share, input_distance,
       label_counts, baseline, run_id, created_at
FROM (
  SELECT d.*, row_number() OVER (PARTITION BY task, prompt_version ORDER BY day DESC, created_at DESC) AS n_
  FROM {drift_daily} d)
WHERE n_ = 1
""",
}


def tables_of(sql: str) -> list[str]:
    """The table placeholders a view's SQL uses."""
    return sorted(set(re.findall(r"\{([a-z_]+)\}", sql)))


def view_sql(name: str, table_ref=lambda t: t) -> str:
    """The SQL of view ``name`` with table references from ``table_ref`` (default: bare names)."""
    sql = VIEW_SQL[name]
    return sql.format(**{t: table_ref(t) for t in tables_of(sql)}).strip()


def create_views(store) -> list[str]:
    """Create (or replace) every view; tables that do not exist yet are created empty first."""
    created = []
    for name, sql in VIEW_SQL.items():
        for t in tables_of(sql):
            store.ensure(t)  # locally this also registers the table's temp view
        if store.catalog:
            target = f"{store.catalog}.{store.schema or 'default'}.{name}"
            store.spark.sql(f"CREATE OR REPLACE VIEW {target} AS {view_sql(name, store.location)}")
        else:
            store.spark.sql(f"CREATE OR REPLACE TEMP VIEW {name} AS {view_sql(name)}")
        created.append(name)
    return created


VIEW_DOCS: dict[str, str] = {
    "live_prompt_rules": "The prompt the task's `live` alias points at, one row per rule in prompt order, "
                         "with the text as shipped.",
    "rule_lineage": "Prompt version -> rule -> cluster -> micro-instruction -> example id (rules added by the "
                    "conflict loop link to the examples that round showed the teacher).",
    "prompt_examples": "The train examples a prompt version shows (few-shot conditions; label examples of a rule "
                       "prompt with consolidate.label_examples), in prompt order, with label and input.",
    "prompt_reviews": "Which human reviews a prompt version applied.",
    "prompt_metrics": "Every prompt version with its evaluations and the conflict loop's val macro-F1.",
    "predictions_per_label_day": "Bulk-scoring volume per prompt version, condition, day and label.",
    "run_status": f"The latest status row per run; a run still 'running' without a heartbeat for {RUN_LEASE_S // 60} "
                  "minutes is reported 'abandoned' (its process died), with the usage it had recorded.",
    "prompt_diff": "Rule-level diff of every prompt version with a parent_version against that parent: added, "
                   "removed, edited (a child rule whose parent_rule_id is a dropped rule of the parent), kept, "
                   "reordered (its rank among the shared rules changed), with positions before and after.",
    "drift_status": "The latest day of bulk-scoring drift per prompt version (table drift_daily): drifted, the "
                    "thresholds crossed, PSI, chi-square, error share and input distance.",
}


def markdown() -> str:
    """A Markdown section quoting every view's SQL (for the README)."""
    parts = ["Create the views with `pld sql init`, query them with `pld sql query \"...\"`.\n"]
    for name in VIEW_SQL:
        parts.append(f"#### `{name}`\n\n{VIEW_DOCS.get(name, '')}\n\n```sql\n{view_sql(name)}\n```\n")
    return "\n".join(parts)
