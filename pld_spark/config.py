"""Typed, frozen configuration loaded once from YAML.

A run's config is ``conf/base.yaml`` deep-merged with a task file (``conf/stereoset.yaml``)
and then with ``--set a.b=c`` overrides. Every model rejects unknown keys
(``extra="forbid"``) and the error names the key path and the file it came from.

Costs are stated per field: ``description`` says what the knob spends (teacher calls,
tokens, wall time, money). Secrets are *references*: ``api_key_env`` names an environment
variable; the value itself is never read into the config.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pld_spark.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    """Caps per split after splitting (stratified, seeded). ``null`` keeps everything.

    These are the biggest cost knobs: every train row is one teacher call in extract, and
    every train/val row is one student call per resolve round.
    """

    train: int | None = Field(None, ge=1, description="Train rows kept (one teacher call each in extract).")
    val: int | None = Field(None, ge=1, description="Val rows kept (one student call each per resolve round).")
    test: int | None = Field(None, ge=1, description="Test rows kept (one student call each per evaluation condition).")
    seed: int = 7


class DatasetConfig(_Model):
    loader: Literal["stereoset", "contractnli", "generic"]
    path: str = Field(description="File or folder the loader reads; relative paths are resolved from the repo root, then the cwd.")
    format: Literal["auto", "jsonl", "csv", "parquet", "delta", "json"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict, description="generic loader: our field -> source column (id, text, label, split, pair).")
    options: dict[str, Any] = Field(default_factory=dict, description="Loader-specific options (see pld_spark/data/).")
    split: SplitConfig = SplitConfig()
    sample: SampleConfig = SampleConfig()
    max_text_chars: int = Field(1_000_000, ge=1, description="Longer texts are rejected (a 5 MB row would blow every prompt).")


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
    master: str = "local[*]"
    app_name: str = "pld_spark"
    shuffle_partitions: int = Field(4, ge=1)
    ui: bool = False
    driver_memory: str = "4g"
    conf: dict[str, str] = Field(default_factory=dict, description="Extra spark.* settings.")


class LLMConfig(_Model):
    """One model endpoint: used for ``teacher:`` and ``student:`` separately."""

    type: Literal["llamacpp", "openai", "bedrock", "vllm"] = "llamacpp"
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
    n_threads: int | None = Field(None, ge=1, description="llamacpp threads (default: all cores of the worker).")
    calibration: Literal["none", "content_free", "batch"] = Field(
        "batch", description="Student label-score calibration: none, contextual (content-free input, +1 call per batch) or batch-mean centring.")
    cache: bool = Field(True, description="Content-addressed response cache (memory + Delta table llm_cache).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options passed through.")


class ExtractConfig(_Model):
    template_version: str = Field("extract-v1", description="Prompt template id; part of the resume key.")
    batch_size: int = Field(16, ge=1, description="Rows written per Delta commit; a crash repeats at most one batch of calls.")
    max_in_flight: int = Field(4, ge=1, description="Concurrent teacher requests per Spark partition.")
    partitions: int | None = Field(None, ge=1, description="Spark partitions for the teacher map (default: spark parallelism).")
    max_error_rate: float = Field(0.2, ge=0, le=1, description="Fail the stage if more than this share of rows errored.")
    claim: bool = Field(True, description="Claim each batch in extract_claims before calling the teacher, so "
                        "overlapping runs split the pending rows instead of both paying for them.")
    max_input_chars: int = Field(6000, ge=100, description="Input characters shown to the teacher (prompt tokens cost).")
    rule_min_chars: int = Field(12, ge=1, description="Shorter rules are kept but marked invalid.")
    rule_max_chars: int = Field(600, ge=20, description="Longer rules are kept but marked invalid (they cost student prompt tokens).")
    max_copy_overlap: float = Field(0.7, gt=0, le=1, description="A rule sharing this share of its word trigrams with the input is a copy (invalid).")


class EmbedderConfig(_Model):
    type: Literal["tfidf_svd", "llamacpp", "sentence_transformers", "openai"] = "tfidf_svd"
    dims: int = Field(64, ge=2)
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None


class ClustererConfig(_Model):
    type: Literal["dbscan", "hdbscan", "kmeans", "agglomerative"] = "dbscan"
    eps: float = Field(0.4, gt=0, description="DBSCAN cosine radius (paper: 0.4).")
    min_samples: int = Field(6, ge=1, description="DBSCAN/HDBSCAN density (paper: 6).")
    n_clusters: int = Field(8, ge=1, description="k-means / agglomerative cluster count.")
    seed: int = 0


class ClusterConfig(_Model):
    embedder: EmbedderConfig = EmbedderConfig()
    clusterer: ClustererConfig = ClustererConfig()
    per_label: bool = Field(False, description="Cluster each label's rules separately.")
    include_invalid: bool = Field(False, description="Cluster rules that failed validation too (not recommended).")


class ConsolidateConfig(_Model):
    template_version: str = "consolidate-v1"
    max_members: int = Field(12, ge=1, description="Member rules shown per cluster (prompt tokens per teacher call).")
    seed: int = 11
    prompt_token_budget: int = Field(1500, ge=64, description="Max student-prompt tokens; every token is prefilled per (uncached) request.")
    max_rules: int = Field(40, ge=1)
    fallback_to_medoid: bool = Field(
        True, description="If the teacher's consolidation fails validation, use the member rule nearest the centroid.")


class ResolveConfig(_Model):
    template_version: str = "resolve-v1"
    max_rounds: int = Field(2, ge=0, description="Each round costs one student pass over the train sample and val, plus one teacher call.")
    min_delta: float = Field(0.005, ge=0, description="Minimum val macro-F1 gain to accept a new prompt.")
    failures_per_class: int = Field(3, ge=0)
    successes_per_class: int = Field(2, ge=0, description="The paper: correct examples are critical.")
    train_sample: int | None = Field(64, ge=1, description="Train rows scored per round (null = all).")
    seed: int = 5
    score_batch_size: int = Field(16, ge=1, description="Inputs per student classify() call on the driver.")
    max_operations: int = Field(6, ge=1, description="Rule operations applied per round (more = a bigger teacher answer).")
    max_input_chars: int = Field(600, ge=50, description="Characters of each sampled input shown to the teacher (prompt tokens).")
    max_tokens: int | None = Field(None, ge=1, description="Teacher output cap for the revision call (null = teacher.max_tokens).")


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
    conditions: list[Literal["zero_shot", "few_shot", "pld_cluster", "pld_resolved", "cot"]] = [
        "zero_shot", "few_shot", "pld_cluster", "pld_resolved"]
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


class PLDConfig(_Model):
    task: TaskConfig
    dataset: DatasetConfig
    input_policy: InputPolicyConfig = InputPolicyConfig()
    lakehouse: LakehouseConfig = LakehouseConfig()
    spark: SparkConfig = SparkConfig()
    teacher: LLMConfig = LLMConfig()
    student: LLMConfig = LLMConfig()
    extract: ExtractConfig = ExtractConfig()
    cluster: ClusterConfig = ClusterConfig()
    consolidate: ConsolidateConfig = ConsolidateConfig()
    resolve: ResolveConfig = ResolveConfig()
    score: ScoreConfig = ScoreConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    # Set by load_config, excluded from hashing so the hash depends on content only.
    source: str = Field("", exclude=True)
    text: str = Field("", exclude=True)

    @property
    def hash(self) -> str:
        return config_hash(self)


def config_hash(cfg: PLDConfig) -> str:
    blob = json.dumps(cfg.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], parsed value). Values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key: {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _locate(sources: dict[str, str], loc: tuple) -> str:
    """Which file set this key path (deepest matching prefix)."""
    for n in range(len(loc), 0, -1):
        prefix = ".".join(str(p) for p in loc[:n])
        if prefix in sources:
            return sources[prefix]
    return sources.get("", "defaults")


def _record_sources(data: Any, origin: str, sources: dict[str, str], prefix: str = "") -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            sources[p] = origin
            _record_sources(v, origin, sources, p)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), base: str | Path | None = None) -> PLDConfig:
    """Load base + task YAML + overrides into a validated, frozen :class:`PLDConfig`.

    Raises :class:`ConfigError` naming the key and file for unknown keys or wrong types.
    """
    path = Path(path)
    base_path = Path(base) if base else path.parent / "base.yaml"
    sources: dict[str, str] = {}
    merged: dict = {}
    if base_path.exists() and base_path.resolve() != path.resolve():
        b = _read_yaml(base_path)
        _record_sources(b, str(base_path), sources)
        merged = b
    task = _read_yaml(path)
    task.pop("extends", None)
    _record_sources(task, str(path), sources)
    merged = deep_merge(merged, task)
    for item in overrides:
        keys, value = parse_override(item)
        node = merged
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
        sources[".".join(keys)] = f"--set {item}"
    text = yaml.safe_dump(merged, sort_keys=True)
    try:
        cfg = PLDConfig.model_validate({**merged, "source": str(path), "text": text})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            origin = _locate(sources, loc)
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown key '{key}' in {origin}")
            elif err["type"] == "missing":
                lines.append(f"missing key '{key}' (not set in {path} or {base_path})")
            else:
                lines.append(f"bad value for '{key}' in {origin}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
    return cfg


def with_overrides(cfg: PLDConfig, overrides: dict[str, Any]) -> PLDConfig:
    """A copy of ``cfg`` with dotted-key overrides, validated again (used by tests and benches)."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for k in parts[:-1]:
            node = node.setdefault(k, {})
        node[parts[-1]] = value
    try:
        return PLDConfig.model_validate({**data, "source": cfg.source, "text": yaml.safe_dump(data, sort_keys=True)})
    except ValidationError as e:
        raise ConfigError(f"invalid override {overrides}: {e}") from None
