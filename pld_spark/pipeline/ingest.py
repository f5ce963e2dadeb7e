"""ingest: files or tables -> ``examples`` (+ ``rejects``).

transform: validate raw rows (empty text, label outside the label set, undecodable text,
duplicate id, over-long text), assign deterministic stratified splits where the dataset has
none, cap each split with a seeded stratified sample, and render the student input with the
input policy. run: load, transform, MERGE on ``example_id`` (re-running adds nothing).
"""
from __future__ import annotations

import json
import logging
from typing import Any

from pld_spark.data.input_policy import apply_policy, render_input
from pld_spark.data.loaders import RAW_FIELDS, load_dataset

log = logging.getLogger(__name__)

STAGE = "ingest"
RAW_DDL = ("example_id STRING, text STRING, pair STRING, label STRING, split STRING, doc_id STRING, "
           "source STRING, row_number BIGINT, meta STRING, decode_error STRING")
SPLITS = ("train", "val", "test")


def raw_frame(spark, rows: list[dict[str, Any]]):
    return spark.createDataFrame([tuple(r.get(k) for k in RAW_FIELDS) for r in rows], RAW_DDL)


def validate(raw, label_names: list[str], max_text_chars: int):
    """Split raw rows into (good, rejected) DataFrames. The first reason that applies wins;
    of rows sharing an id, the first by (source, row_number) is kept and the rest rejected."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("example_id").orderBy("source", "row_number")
    df = raw.withColumn("_dup_rank", F.row_number().over(w))
    # whitespace of any kind (tabs, newlines, no-break spaces) is empty text; trim() strips spaces only
    blank = F.col("text").isNull() | (F.regexp_replace("text", r"(?U)\s+", "") == "")
    reason = (
        F.when(F.col("decode_error").isNotNull(), F.col("decode_error"))
        .when(F.col("example_id").isNull() | (F.trim("example_id") == ""), F.lit("missing id"))
        .when(blank, F.lit("empty text"))
        .when(F.length("text") > max_text_chars, F.concat(F.lit(f"text longer than {max_text_chars} characters ("),
                                                          F.length("text").cast("string"), F.lit(")")))
        .when(F.col("label").isNull() | ~F.col("label").isin(label_names),
              F.concat(F.lit("label outside the label set: "), F.coalesce(F.col("label"), F.lit("<null>"))))
        .when(F.col("_dup_rank") > 1, F.lit("duplicate id"))
    )
    field = (
        F.when(F.col("decode_error").isNotNull(), F.lit("text"))
        .when(F.col("example_id").isNull() | (F.trim("example_id") == ""), F.lit("id"))
        .when(blank | (F.length("text") > max_text_chars), F.lit("text"))
        .when(F.col("label").isNull() | ~F.col("label").isin(label_names), F.lit("label"))
        .otherwise(F.lit("id"))
    )
    df = df.withColumn("_reason", reason).withColumn("_field", field)
    good = df.where(F.col("_reason").isNull()).drop("_reason", "_field", "_dup_rank", "decode_error")
    bad = df.where(F.col("_reason").isNotNull())
    rejects = bad.select(
        F.sha2(F.concat_ws("\u001f", F.coalesce("source", F.lit("")), F.col("row_number").cast("string"),
                           F.coalesce("example_id", F.lit("")), "_reason"), 256).substr(1, 24).alias("reject_id"),
        "source", "row_number", F.col("_field").alias("field"), F.col("_reason").alias("reason"),
        F.to_json(F.struct(F.col("example_id"), F.substring("text", 1, 500).alias("text"), "label",
                           F.col("meta"))).alias("raw"),
    )
    return good, rejects


def _hash_order(seed: int):
    from pyspark.sql import functions as F

    return F.sha2(F.concat(F.lit(f"{seed}:"), F.col("example_id")), 256)


def assign_splits(df, split_cfg):
    """Deterministic stratified split for rows whose ``split`` is null.

    Within each label, rows are ordered by sha256(seed:id) and the first ``train`` share goes
    to train, the next ``val`` share to val, the rest to test. Same seed, same split.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    total = split_cfg.train + split_cfg.val + split_cfg.test
    tr, va = split_cfg.train / total, split_cfg.val / total
    need = df.where(F.col("split").isNull())
    have = df.where(F.col("split").isNotNull())
    w = Window.partitionBy("label").orderBy(_hash_order(split_cfg.seed))
    wc = Window.partitionBy("label")
    ranked = need.withColumn("_r", F.row_number().over(w) - 1).withColumn("_n", F.count("*").over(wc))
    frac = F.col("_r") / F.col("_n")
    ranked = ranked.withColumn("split", F.when(frac < tr, "train").when(frac < tr + va, "val").otherwise("test"))
    return have.unionByName(ranked.drop("_r", "_n"))


def sample_splits(df, sample_cfg):
    """Cap each split at its configured size with a seeded, label-stratified sample
    (each label keeps its share, at least one row per label)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    caps = {"train": sample_cfg.train, "val": sample_cfg.val, "test": sample_cfg.test}
    if not any(caps.values()):
        return df
    cap_col = F.create_map(*[x for s, c in caps.items() for x in (F.lit(s), F.lit(c if c else -1))])
    w = Window.partitionBy("split", "label").orderBy(_hash_order(sample_cfg.seed))
    df = (df.withColumn("_cap", cap_col[F.col("split")])
          .withColumn("_r", F.row_number().over(w))
          .withColumn("_nl", F.count("*").over(Window.partitionBy("split", "label")))
          .withColumn("_ns", F.count("*").over(Window.partitionBy("split"))))
    quota = F.greatest(F.lit(1), F.round(F.col("_cap") * F.col("_nl") / F.col("_ns")))
    keep = (F.col("_cap") < 0) | (F.col("_r") <= quota)
    return df.where(keep).drop("_cap", "_r", "_nl", "_ns")


def split_sentences_spark_nlp(spark, docs):
    """(doc_key, text) -> (doc_key, sentences array) with Spark NLP's rule-based SentenceDetector."""
    from pyspark.ml import Pipeline
    from pyspark.sql import functions as F
    from sparknlp.annotator import SentenceDetector
    from sparknlp.base import DocumentAssembler

    pipe = Pipeline(stages=[
        DocumentAssembler().setInputCol("text").setOutputCol("document"),
        SentenceDetector().setInputCols(["document"]).setOutputCol("sentences").setExplodeSentences(False),
    ])
    out = pipe.fit(docs).transform(docs)
    return out.select("doc_key", F.col("sentences.result").alias("sentences"))


def render(df, cfg, sentences=None):
    """Add ``input_text`` (policy-applied, template-rendered) with mapInPandas on executors."""
    from pyspark.sql import functions as F

    pol = cfg.input_policy
    template = cfg.task.input_template
    mode, max_tokens, cpt = pol.mode, pol.max_tokens, pol.chars_per_token
    splitter = pol.splitter if pol.splitter != "spark_nlp" else "sentencex"  # used only where Spark NLP gave nothing
    policy_desc = json.dumps({"mode": mode, "max_tokens": max_tokens, "chars_per_token": cpt,
                              "splitter": pol.splitter if mode == "retrieve" else None}, sort_keys=True)
    if sentences is not None:
        df = df.withColumn("doc_key", F.sha2(F.col("text"), 256)).join(sentences, "doc_key", "left").drop("doc_key")
    else:
        df = df.withColumn("sentences", F.lit(None).cast("array<string>"))
    out_schema = df.drop("sentences").schema.add("input_text", "string").add("input_policy", "string")

    def fn(batches):
        for pdf in batches:
            texts = []
            for text, pair, sents in zip(pdf["text"], pdf["pair"], pdf["sentences"]):
                s = list(sents) if sents is not None else None
                body = apply_policy(text, pair, mode, max_tokens, cpt, s, splitter)
                texts.append(render_input(body, pair, template))
            pdf = pdf.drop(columns=["sentences"])
            pdf["input_text"] = texts
            pdf["input_policy"] = policy_desc
            yield pdf

    return df.mapInPandas(fn, out_schema)


def transform(raw, cfg, spark=None, use_spark_nlp: bool | None = None):
    """raw rows -> (examples, rejects). Pure apart from Spark compute."""
    from pyspark.sql import functions as F

    good, rejects = validate(raw, cfg.task.label_names, cfg.dataset.max_text_chars)
    split = assign_splits(good, cfg.dataset.split)
    sampled = sample_splits(split, cfg.dataset.sample)
    sentences = None
    nlp = use_spark_nlp if use_spark_nlp is not None else (
        cfg.input_policy.mode == "retrieve" and cfg.input_policy.splitter == "spark_nlp")
    if nlp:
        docs = sampled.select(F.sha2("text", 256).alias("doc_key"), "text").dropDuplicates(["doc_key"])
        sentences = split_sentences_spark_nlp(spark or raw.sparkSession, docs)
    examples = render(sampled, cfg, sentences).withColumn("task", F.lit(cfg.task.name))
    return examples, rejects.withColumn("task", F.lit(cfg.task.name))


def dataset_hash(cfg) -> str:
    """Identifies the example set a config selects: dataset, split, sample and input policy."""
    import hashlib

    blob = json.dumps({"task": cfg.task.name, "template": cfg.task.input_template,
                       "dataset": cfg.dataset.model_dump(mode="json"),
                       "input_policy": cfg.input_policy.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def current_examples(ctx, split: str | None = None):
    """The examples the current config selects (fails clearly if ingest has not run for it)."""
    from pyspark.sql import functions as F

    from pld_spark.errors import ContractError

    df = ctx.store.read("examples").where((F.col("task") == ctx.cfg.task.name)
                                           & (F.col("dataset_hash") == dataset_hash(ctx.cfg)))
    if split:
        df = df.where(F.col("split") == split)
    if df.limit(1).count() == 0:
        raise ContractError(f"no '{split or 'any'}' examples in table 'examples' for task '{ctx.cfg.task.name}' "
                            f"with this dataset config; run `pld ingest --config {ctx.cfg.source}` first")
    return df


def _bad_split_rejects(df):
    """Rows whose given split is not train/val/test."""
    from pyspark.sql import functions as F

    return df.where(~F.col("split").isin(*SPLITS))


def run(ctx) -> dict[str, Any]:
    """Load the configured dataset, validate, split, render, and MERGE into Delta."""
    from pyspark.sql import functions as F

    cfg, spark, store = ctx.cfg, ctx.spark, ctx.store
    loaded = load_dataset(cfg.dataset, spark=spark)
    raw = raw_frame(spark, loaded.rows)
    examples, rejects = transform(raw, cfg, spark)
    now = F.current_timestamp()
    examples = (examples.withColumn("run_id", F.lit(ctx.run_id)).withColumn("ingested_at", now)
                .withColumn("dataset_hash", F.lit(dataset_hash(cfg))))
    # An unknown split value is bad input too: reject it rather than invent a split.
    bad_split = _bad_split_rejects(examples).select(
        F.sha2(F.concat_ws("\u001f", "source", F.col("row_number").cast("string"), "example_id"), 256)
        .substr(1, 24).alias("reject_id"), "source", "row_number", F.lit("split").alias("field"),
        F.concat(F.lit("split must be train, val or test, got "), F.col("split")).alias("reason"),
        F.to_json(F.struct("example_id", "label", "split")).alias("raw"), "task")
    examples = examples.where(F.col("split").isin(*SPLITS))
    rejects = rejects.unionByName(bad_split).withColumn("run_id", F.lit(ctx.run_id)).withColumn("rejected_at", now)
    examples = examples.drop("row_number").cache()
    rejects = rejects.cache()
    # update=True: a re-ingest re-stamps the rows of the current sample (dataset_hash, run_id);
    # rows outside it keep their old dataset_hash, so later stages do not see them.
    store.merge("examples", examples, update=True)
    store.merge("rejects", rejects, update=False)
    counts = {
        "rows_read": len(loaded.rows),
        "examples": examples.count(),
        "rejects": rejects.count(),
        "per_split_label": {f"{r['split']}/{r['label']}": r["n"] for r in
                            examples.groupBy("split", "label").agg(F.count("*").alias("n")).collect()},
        "per_reject_reason": {r["reason"]: r["n"] for r in
                              rejects.groupBy("reason").agg(F.count("*").alias("n")).collect()},
    }
    examples.unpersist()
    rejects.unpersist()
    ctx.record.add_counts(STAGE, **counts)
    if counts["examples"] == 0:
        from pld_spark.errors import DataError

        raise DataError(f"ingest: no usable rows in {cfg.dataset.path}: all {counts['rows_read']} rows were rejected "
                        f"(reasons: {counts['per_reject_reason']}); see table 'rejects'")
    return counts
