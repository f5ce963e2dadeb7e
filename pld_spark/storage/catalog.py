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
    #: nullable columns added after the table's first release ("name TYPE"; part of ``ddl`` too):
    #: an existing table gets them in place on first use (:meth:`DeltaStore.ensure`)
    added: tuple[str, ...] = ()

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


def _t(name: str, ddl: str, keys: tuple[str, ...] = (), append_only: bool = False, doc: str = "",
       added: tuple[str, ...] = ()) -> TableSpec:
    spec = TableSpec(name, " ".join(ddl.split()), keys, append_only, doc, added)
    TABLES[name] = spec
    return spec


RUNS = _t("runs", """
    run_id STRING, command STRING, status STRING, event_time TIMESTAMP, started_at TIMESTAMP,
    ended_at TIMESTAMP, config_text STRING, config_hash STRING, code_version STRING,
    counts STRING, tokens_in BIGINT, tokens_out BIGINT, llm_calls BIGINT, cost_usd DOUBLE,
    wall_s DOUBLE, error STRING, host STRING, pid BIGINT, heartbeat_at TIMESTAMP""", append_only=True,
    added=("host STRING", "pid BIGINT", "heartbeat_at TIMESTAMP"),
    doc="One row per run status change: running (at the start, after each committed extract batch and as a periodic "
        "heartbeat, with the usage so far), then succeeded / failed, or abandoned when its process is gone (written "
        "by the next command on the lakehouse). The view run_status keeps the last and also reports a running run "
        "whose heartbeat is older than the lease as abandoned. host, pid and heartbeat_at are null in rows written "
        "before they were added.")

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
    params STRING, run_id STRING, created_at TIMESTAMP, group_key STRING, assignment STRING""",
    keys=("cluster_run_id", "micro_id"), added=("group_key STRING", "assignment STRING"),
    doc="Cluster assignment per micro-instruction; noise is cluster_id -1. group_key: the group it was "
        "clustered in (cluster.group_by); assignment: clustered | noise | central_fallback; params: the "
        "clusterer's parameters as used per group (e.g. the eps chosen from the data).")

RULES = _t("rules", """
    rule_id STRING, task STRING, cluster_run_id STRING, cluster_id INT, topic STRING, instruction STRING,
    label STRING, support INT, origin STRING, parent_rule_id STRING, member_micro_ids ARRAY<STRING>,
    source_example_ids ARRAY<STRING>, valid BOOLEAN, invalid_reason STRING, teacher_model STRING,
    error STRING, run_id STRING, created_at TIMESTAMP, example_id STRING, example_text STRING,
    example_label STRING, cluster_fingerprint STRING""", keys=("rule_id",),
    added=("example_id STRING", "example_text STRING", "example_label STRING", "cluster_fingerprint STRING"),
    doc="Consolidated rules (origin: consolidate | medoid | medoid_label | resolve). member_micro_ids link a "
        "rule to the micro-instructions it came from; source_example_ids to the examples a resolve round showed; "
        "example_*: the cluster's exemplar (the input of the member nearest the centroid), shown under the rule "
        "when consolidate.exemplars is on; cluster_fingerprint: sha256 of the cluster's member ids and the "
        "consolidation settings, so a later run whose re-clustering leaves the cluster unchanged reuses the rule "
        "(same rule_id, no teacher call). The row keeps the run and cluster_run_id that paid for it.")

PROMPTS = _t("prompts", """
    prompt_version STRING, task STRING, kind STRING, text STRING, sha256 STRING, parent_version STRING,
    rule_ids ARRAY<STRING>, dropped_rule_ids ARRAY<STRING>, review_ids ARRAY<STRING>, token_count INT,
    token_budget INT, run_id STRING, created_at TIMESTAMP, example_ids ARRAY<STRING>""", keys=("prompt_version",),
    added=("example_ids ARRAY<STRING>",),
    doc="Immutable student system prompts; prompt_version is derived from the text's sha256. rule_ids: the rules "
        "it shows; example_ids: the train examples of its Examples block (few-shot conditions, and rule prompts "
        "with consolidate.label_examples).")

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

PROMPT_CALIBRATIONS = _t("prompt_calibrations", """
    prompt_version STRING, student_model STRING, method STRING, calibration STRING, val_macro_f1 DOUBLE,
    n_val BIGINT, run_id STRING, created_at TIMESTAMP""", keys=("prompt_version", "student_model"),
    doc="The calibration chosen for a prompt version and student on the validation split (student.calibration: "
        "auto): method and per-label offsets as JSON, with every candidate's val macro-F1 (in-sample; also "
        "cross-validated when student.calibration_folds >= 2). Scoring applies it.")

RULE_EVALUATIONS = _t("rule_evaluations", """
    run_id STRING, prompt_version STRING, rule_id STRING, contribution DOUBLE, val_macro_f1_without DOUBLE,
    kept BOOLEAN, coverage DOUBLE, coverage_n BIGINT, note STRING, created_at TIMESTAMP""",
    keys=("run_id", "prompt_version", "rule_id"),
    doc="Rule selection on validation: contribution = val macro-F1 of the prompt minus that of the prompt without "
        "the rule (negative: the rule hurts); kept: still in the selected prompt; coverage: share of the rule's "
        "cluster train examples the student labels correctly with the selected prompt.")

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
    student_model STRING, note STRING, val_macro_f1 DOUBLE""", keys=("run_id", "condition"),
    added=("val_macro_f1 DOUBLE",),
    doc="Metrics per evaluation condition (latency_first: the condition's first request, before its prompt "
        "prefix was cached; prompt_token_count: system prompt tokens).")

PROMPT_ALIASES = _t("prompt_aliases", """
    task STRING, alias STRING, prompt_version STRING, promoted_by STRING, note STRING,
    promoted_at TIMESTAMP""", append_only=True,
    doc="Prompt promotion history; the latest row per (task, alias) is live.")

COMPARISONS = _t("comparisons", """
    comparison_id STRING, run_id STRING, task STRING, version_a STRING, version_b STRING, split STRING,
    source STRING, n BIGINT, macro_f1_a DOUBLE, macro_f1_b DOUBLE, delta DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
    p_a_better DOUBLE, mcnemar_p DOUBLE, a_only BIGINT, b_only BIGINT, per_label STRING, disagreements STRING,
    report_path STRING, created_at TIMESTAMP""", keys=("comparison_id",),
    doc="`pld compare A B`: two prompt versions on the same labelled rows (split: val/test, else null with the "
        "input in source). delta = macro-F1 A - B with its paired bootstrap CI; p_a_better: share of resamples A "
        "wins; McNemar on the rows only A (a_only) or only B (b_only) gets right; per_label: JSON label -> f1_a, "
        "f1_b, delta, support; disagreements: JSON of the first rows where the answers differ.")

DRIFT_DAILY = _t("drift_daily", """
    day DATE, task STRING, prompt_version STRING, run_id STRING, n BIGINT, label_counts STRING, baseline STRING,
    psi DOUBLE, chi2 DOUBLE, chi2_p DOUBLE, error_share DOUBLE, input_distance DOUBLE, drifted BOOLEAN,
    reasons STRING, created_at TIMESTAMP""", keys=("day", "task", "prompt_version"),
    doc="Drift of bulk scoring per day (date of predictions.scored_at, condition 'score') and prompt version: "
        "predicted label counts (JSON; errors under '<error>') against the baseline (JSON: source 'evaluation' "
        "= the prompt's test predictions of its latest evaluation run, or 'test_gold'), PSI, chi-square and its "
        "p-value, error share, mean cosine distance of the day's inputs to the nearest train input; drifted and "
        "reasons name the drift.* thresholds crossed. Recomputed (MERGE) when the day is scored again.")

PROMOTIONS = _t("promotions", """
    task STRING, alias STRING, challenger_version STRING, champion_version STRING, split STRING, n BIGINT,
    challenger_macro_f1 DOUBLE, champion_macro_f1 DOUBLE, statistic DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
    confidence DOUBLE, p_better DOUBLE, margin DOUBLE, max_label_drop DOUBLE, worst_label STRING,
    worst_label_drop DOUBLE, per_label STRING, decision STRING, reason STRING, decided_by STRING, run_id STRING,
    decided_at TIMESTAMP""", keys=("run_id", "task", "alias", "challenger_version"),
    doc="Champion/challenger decisions: may challenger_version replace champion_version (the alias, 'live', "
        "before the decision) on the split? statistic = macro-F1 challenger - champion with its paired bootstrap "
        "CI at `confidence`; worst_label_drop = the largest per-label F1 drop (negative: every label improved); "
        "decision promoted (the alias moved), candidate (it did not; reason says why) or manual (`pld prompt "
        "promote`, decided_by who; no statistics).")


def spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}") from None
