"""The table catalogue: every table's name, schema and natural key in one place.

Schemas are Spark DDL strings so they read like the SQL data teams will write against them.
Every table carries ``run_id`` (lineage). ``keys`` are the natural keys MERGE matches on;
``append_only`` tables are only ever appended to (history is the point).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableSpec:
    name: str
    ddl: str
    keys: tuple[str, ...] = ()
    append_only: bool = False
    doc: str = ""

    @property
    def columns(self) -> list[str]:
        return [c.strip().split()[0] for c in _split_top(self.ddl)]


def _split_top(ddl: str) -> list[str]:
    """Split a DDL column list on commas outside <...> brackets."""
    out, depth, cur = [], 0, []
    for ch in ddl:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return [c for c in (x.strip() for x in out) if c]


TABLES: dict[str, TableSpec] = {}


def _t(name: str, ddl: str, keys: tuple[str, ...] = (), append_only: bool = False, doc: str = "") -> TableSpec:
    spec = TableSpec(name, " ".join(ddl.split()), keys, append_only, doc)
    TABLES[name] = spec
    return spec


RUNS = _t("runs", """
    run_id STRING, command STRING, status STRING, event_time TIMESTAMP, started_at TIMESTAMP,
    ended_at TIMESTAMP, config_text STRING, config_hash STRING, code_version STRING,
    counts STRING, tokens_in BIGINT, tokens_out BIGINT, llm_calls BIGINT, cost_usd DOUBLE,
    wall_s DOUBLE, error STRING""", append_only=True,
    doc="One row per run status change (running, then succeeded/failed); the view run_status keeps the last.")

EXAMPLES = _t("examples", """
    example_id STRING, task STRING, split STRING, text STRING, pair STRING, input_text STRING,
    label STRING, doc_id STRING, source STRING, meta STRING, input_policy STRING, dataset_hash STRING,
    run_id STRING, ingested_at TIMESTAMP""", keys=("example_id",),
    doc="Labelled examples; input_text is the rendered student input every later stage uses.")

REJECTS = _t("rejects", """
    reject_id STRING, task STRING, source STRING, row_number BIGINT, field STRING, reason STRING,
    raw STRING, run_id STRING, rejected_at TIMESTAMP""", keys=("reject_id",),
    doc="Rows ingest refused, with the reason and the field; nothing is silently dropped.")

LLM_CACHE = _t("llm_cache", """
    cache_key STRING, backend STRING, model STRING, template_version STRING, response STRING,
    tokens_in BIGINT, tokens_out BIGINT, created_at TIMESTAMP, run_id STRING""", keys=("cache_key",),
    doc="Content-addressed model responses (successful calls only).")

MICRO_INSTRUCTIONS = _t("micro_instructions", """
    micro_id STRING, example_id STRING, teacher_model STRING, template_version STRING, label STRING,
    rule STRING, reasoning STRING, valid BOOLEAN, invalid_reason STRING, injection_flag BOOLEAN,
    tokens_in BIGINT, tokens_out BIGINT, latency_s DOUBLE, attempts INT, cached BOOLEAN, error STRING,
    run_id STRING, created_at TIMESTAMP""", keys=("example_id", "teacher_model", "template_version"),
    doc="One teacher rule per train example (or its error).")

EXTRACT_CLAIMS = _t("extract_claims", """
    example_id STRING, teacher_model STRING, template_version STRING, run_id STRING,
    claimed_at TIMESTAMP""", keys=("example_id", "teacher_model", "template_version"),
    doc="Which extract run is paying for an example's teacher call, so two overlapping runs split the work "
        "instead of both paying for it (a claim made before a run started is taken over by it).")

INSTRUCTION_CLUSTERS = _t("instruction_clusters", """
    cluster_run_id STRING, micro_id STRING, example_id STRING, label STRING, cluster_id INT,
    cluster_size INT, label_purity DOUBLE, dist_to_centroid DOUBLE, embedder STRING, clusterer STRING,
    params STRING, run_id STRING, created_at TIMESTAMP""", keys=("cluster_run_id", "micro_id"),
    doc="Cluster assignment per micro-instruction; noise is cluster_id -1.")

RULES = _t("rules", """
    rule_id STRING, task STRING, cluster_run_id STRING, cluster_id INT, topic STRING, instruction STRING,
    label STRING, support INT, origin STRING, parent_rule_id STRING, member_micro_ids ARRAY<STRING>,
    source_example_ids ARRAY<STRING>, valid BOOLEAN, invalid_reason STRING, teacher_model STRING,
    error STRING, run_id STRING, created_at TIMESTAMP""", keys=("rule_id",),
    doc="Consolidated rules (origin: consolidate | medoid | medoid_label | resolve). member_micro_ids link a "
        "rule to the micro-instructions it came from; source_example_ids to the examples a resolve round showed.")

PROMPTS = _t("prompts", """
    prompt_version STRING, task STRING, kind STRING, text STRING, sha256 STRING, parent_version STRING,
    rule_ids ARRAY<STRING>, dropped_rule_ids ARRAY<STRING>, review_ids ARRAY<STRING>, token_count INT,
    token_budget INT, run_id STRING, created_at TIMESTAMP""", keys=("prompt_version",),
    doc="Immutable student system prompts; prompt_version is derived from the text's sha256.")

RULE_REVIEWS = _t("rule_reviews", """
    review_id STRING, rule_id STRING, action STRING, new_text STRING, reviewer STRING, note STRING,
    created_at TIMESTAMP""", append_only=True,
    doc="Human review actions (approve / edit / pin / disable); the latest per rule applies.")

RESOLUTION_ROUNDS = _t("resolution_rounds", """
    run_id STRING, round INT, prompt_version STRING, candidate_version STRING, train_macro_f1 DOUBLE,
    val_macro_f1 DOUBLE, candidate_val_macro_f1 DOUBLE, failures_sampled INT, successes_sampled INT,
    sampled_example_ids ARRAY<STRING>, rule_diff STRING, accepted BOOLEAN, note STRING,
    created_at TIMESTAMP""", keys=("run_id", "round"),
    doc="Conflict-resolution loop: one row per round.")

PREDICTIONS = _t("predictions", """
    doc_id STRING, prompt_version STRING, condition STRING, label STRING, probabilities MAP<STRING, DOUBLE>,
    calibration STRING, latency_s DOUBLE, tokens_in BIGINT, tokens_out BIGINT, prefix_reused_tokens BIGINT,
    backend STRING, model STRING, error STRING, run_id STRING, scored_at TIMESTAMP""",
    keys=("doc_id", "prompt_version", "condition"),
    doc="Student outputs; label is always in the label set (or null with an error).")

EVALUATIONS = _t("evaluations", """
    run_id STRING, task STRING, condition STRING, prompt_version STRING, n BIGINT, macro_f1 DOUBLE,
    ci_low DOUBLE, ci_high DOUBLE, accuracy DOUBLE, per_class STRING, confusion STRING,
    latency_p50 DOUBLE, latency_p95 DOUBLE, prompt_tokens_mean DOUBLE, output_tokens_mean DOUBLE,
    prefix_hit_rate DOUBLE, errors BIGINT, created_at TIMESTAMP, engine STRING, calibration STRING,
    latency_mean DOUBLE, latency_first DOUBLE, prefix_reused_share DOUBLE, prompt_token_count INT,
    student_model STRING, note STRING""", keys=("run_id", "condition"),
    doc="Metrics per evaluation condition (latency_first: the condition's first request, before its prompt "
        "prefix was cached; prompt_token_count: system prompt tokens).")

PROMPT_ALIASES = _t("prompt_aliases", """
    task STRING, alias STRING, prompt_version STRING, promoted_by STRING, note STRING,
    promoted_at TIMESTAMP""", append_only=True,
    doc="Prompt promotion history; the latest row per (task, alias) is live.")


def spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}") from None
