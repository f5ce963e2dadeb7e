"""ingest: files or tables -> ``examples`` (+ ``rejects``).

transform: validate raw rows (empty text, label outside the label set, undecodable text,
duplicate id, over-long text), assign deterministic stratified splits where the dataset has
none, cap each split with a seeded stratified sample (exactly the cap, shared over the labels
by :func:`allocate_cap`), and render the student input with the input policy. run: load,
transform, MERGE on ``example_id`` (re-running adds nothing; rows appended to the file since are
added, ``new_examples``, and the stored rows keep their split). Quality gates stop a run whose
config and data disagree (a configured label with no rows, a large share of rows rejected
for one reason) after storing its rejects; see :func:`quality_problems`.
"""
from __future__ import annotations

import difflib
import json
import logging
import re
from typing import Any, Mapping

from pld_spark.data.input_policy import apply_policy, render_input
from pld_spark.data.loaders import RAW_FIELDS, load_dataset
from pld_spark.storage.readers import dataset_hash

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


def assign_splits(df, split_cfg, stored=None):
    """Deterministic stratified split for rows whose ``split`` is null.

    Within each label, rows are ordered by sha256(seed:id) and the first ``train`` share goes
    to train, the next ``val`` share to val, the rest to test. Same seed, same split.
    ``stored`` (example_id, split): the splits an earlier ingest of the same config gave; those
    rows keep them (an appended row never moves an old train row, and its rule, into val or test);
    the others get their rank over *all* rows, so an unchanged file gives the same capped samples.
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
    if stored is not None:
        ranked = (ranked.join(stored.select("example_id", F.col("split").alias("_kept")), "example_id", "left")
                  .withColumn("split", F.coalesce("_kept", "split")).drop("_kept"))
    return have.unionByName(ranked.drop("_r", "_n"))


def allocate_cap(cap: int | None, available: Mapping[str, int]) -> dict[str, int]:
    """How many rows of each label a split keeps under ``cap`` (pure; the sampler's plan).

    Largest-remainder allocation of ``cap`` over the labels, proportional to each label's
    rows in the split (``available``). The result never exceeds the cap (it sums to
    ``min(cap, total)``) and never exceeds what a label has. When the cap allows it (cap >= the
    number of labels with rows) every such label keeps at least one row: labels whose share
    is below one get exactly one and the rest of the cap is shared out again among the others.
    Ties in the remainders go to the label with more rows, then to the label name, so the
    plan is deterministic. ``cap`` None keeps everything.
    """
    counts = {lab: max(0, int(n)) for lab, n in available.items()}
    total = sum(counts.values())
    if cap is None or cap >= total:
        return dict(counts)
    out = dict.fromkeys(counts, 0)
    if cap <= 0:
        return out
    present = {lab: n for lab, n in counts.items() if n > 0}
    fixed: dict[str, int] = {}
    if cap >= len(present):
        # One row for every label whose proportional share is below one; re-share the rest.
        # (Each label fixed here has n < rows_left / cap_left, which keeps cap_left <= rows_left,
        # so no label is ever given more rows than it has.)
        while True:
            rest = {lab: n for lab, n in present.items() if lab not in fixed}
            left, rows_left = cap - len(fixed), sum(rest.values())
            small = [lab for lab, n in rest.items() if left * n < rows_left]
            if not small or len(small) == len(rest):
                break
            fixed.update(dict.fromkeys(small, 1))
    rest = {lab: n for lab, n in present.items() if lab not in fixed}
    left, rows_left = cap - len(fixed), sum(rest.values())
    out.update(fixed)
    if rest and left > 0:
        # integer arithmetic: floor(left * n / rows_left) plus one for the largest remainders
        base = {lab: left * n // rows_left for lab, n in rest.items()}
        order = sorted(rest, key=lambda lab: (-(left * rest[lab] % rows_left), -rest[lab], lab))
        for lab in order[: left - sum(base.values())]:
            base[lab] += 1
        out.update({lab: min(q, rest[lab]) for lab, q in base.items()})
    return out


def split_label_counts(df) -> dict[tuple[str, str], int]:
    """Rows per (split, label) (one small Spark job)."""
    return {(r["split"], r["label"]): int(r["n"])
            for r in df.groupBy("split", "label").count().withColumnRenamed("count", "n").collect()}


def sample_splits(df, sample_cfg, counts: Mapping[tuple[str, str], int] | None = None):
    """Cap each split at its configured size with a seeded, label-stratified sample.

    A split keeps exactly ``min(cap, rows)`` rows, shared over its labels by
    :func:`allocate_cap`; inside a label the rows first in sha256(seed:id) order are kept.
    ``counts`` (rows per (split, label), from :func:`split_label_counts`) saves a Spark job
    when the caller has them. Splits without a cap (and unknown split values, rejected later)
    keep every row.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    caps = {"train": sample_cfg.train, "val": sample_cfg.val, "test": sample_cfg.test}
    if not any(caps.values()):
        return df
    if counts is None:
        counts = split_label_counts(df)
    quotas: dict[str, int] = {}
    for split, cap in caps.items():
        if not cap:
            continue
        per_label = {lab: n for (s, lab), n in counts.items() if s == split and lab is not None}
        for lab, q in allocate_cap(cap, per_label).items():
            quotas[f"{split}\u001f{lab}"] = q
    if not quotas:
        return df
    quota_map = F.create_map(*[x for k, q in sorted(quotas.items()) for x in (F.lit(k), F.lit(q))])
    w = Window.partitionBy("split", "label").orderBy(_hash_order(sample_cfg.seed))
    quota = quota_map[F.concat_ws("\u001f", F.col("split"), F.col("label"))]
    df = df.withColumn("_r", F.row_number().over(w)).withColumn("_q", quota)
    return df.where(F.col("_q").isNull() | (F.col("_r") <= F.col("_q"))).drop("_r", "_q")


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


def prepare(split_df, cfg, spark=None, use_spark_nlp: bool | None = None,
            counts: Mapping[tuple[str, str], int] | None = None):
    """Valid rows with their split -> examples: cap each split (:func:`sample_splits`) and
    render the student input."""
    from pyspark.sql import functions as F

    sampled = sample_splits(split_df, cfg.dataset.sample, counts)
    sentences = None
    nlp = use_spark_nlp if use_spark_nlp is not None else (
        cfg.input_policy.mode == "retrieve" and cfg.input_policy.splitter == "spark_nlp")
    if nlp:
        docs = sampled.select(F.sha2("text", 256).alias("doc_key"), "text").dropDuplicates(["doc_key"])
        sentences = split_sentences_spark_nlp(spark or split_df.sparkSession, docs)
    return render(sampled, cfg, sentences).withColumn("task", F.lit(cfg.task.name))


def transform(raw, cfg, spark=None, use_spark_nlp: bool | None = None):
    """raw rows -> (examples, rejects). Pure apart from Spark compute."""
    from pyspark.sql import functions as F

    good, rejects = validate(raw, cfg.task.label_names, cfg.dataset.max_text_chars)
    examples = prepare(assign_splits(good, cfg.dataset.split), cfg, spark, use_spark_nlp)
    return examples, rejects.withColumn("task", F.lit(cfg.task.name))


def reason_kind(reason: str) -> str:
    """A reject reason without its row-specific tail: 'label outside the label set: astrology'
    -> 'label outside the label set'; 'text longer than 4000 characters (5123)' -> 'text
    longer than 4000 characters'. Reject shares are counted per kind."""
    head = re.split(r"\s*[:(]|, got ", reason, maxsplit=1)[0].strip()
    return head or reason


def quality_problems(label_names: list[str], rows_per_label: Mapping[str, int], rows_read: int,
                     per_reject_reason: Mapping[str, int], max_reject_share: float) -> dict[str, str]:
    """What is wrong with an ingest that nothing rejected outright (pure; the caller decides
    whether it fails). Returns ``{"missing_labels": message, "reject_share": message}`` for the
    problems found:

    - a configured label with no valid row (usually a label name misspelt in ``task.labels``:
      every row of that label is then rejected as outside the label set);
    - more than ``max_reject_share`` of the rows read rejected for one kind of reason.
    """
    problems: dict[str, str] = {}
    outside = {r.split(":", 1)[1].strip(): n for r, n in per_reject_reason.items()
               if reason_kind(r) == "label outside the label set" and ":" in r}
    missing = [lab for lab in label_names if not rows_per_label.get(lab)]
    if missing:
        hints = []
        for lab in missing:
            close = difflib.get_close_matches(lab, [v for v in outside if v != "<null>"], n=1, cutoff=0.6)
            if close:
                hints.append(f"'{lab}' looks like '{close[0]}' ({outside[close[0]]} rows rejected as outside the "
                             f"label set)")
        have = ", ".join(f"{lab}={rows_per_label.get(lab, 0)}" for lab in label_names)
        top_outside = ", ".join(f"'{v}'={n}" for v, n in sorted(outside.items(), key=lambda kv: (-kv[1], kv[0]))[:8])
        problems["missing_labels"] = (
            f"configured label(s) {', '.join(repr(x) for x in missing)} got no rows (valid rows per label: {have})"
            + (f"; rows rejected as outside the label set, by label: {top_outside}" if outside else "")
            + (f"; {'; '.join(hints)}: is a label name misspelt in task.labels?" if hints else "")
            + ". A label without rows gets no rule and no test support. To ingest anyway, set "
              "dataset.allow_missing_labels: true")
    by_kind: dict[str, int] = {}
    for reason, n in per_reject_reason.items():
        by_kind[reason_kind(reason)] = by_kind.get(reason_kind(reason), 0) + int(n)
    heavy = {k: n for k, n in by_kind.items() if rows_read and n / rows_read > max_reject_share}
    if heavy:
        parts = ", ".join(f"'{k}': {n} of {rows_read} rows ({n / rows_read:.0%})"
                          for k, n in sorted(heavy.items(), key=lambda kv: (-kv[1], kv[0])))
        problems["reject_share"] = (
            f"more than dataset.max_reject_share={max_reject_share:g} of the rows were rejected for one reason "
            f"({parts}); the rows are in table 'rejects'. Fix the data or the config (task.labels, dataset.columns), "
            f"or to accept it raise dataset.max_reject_share (1.0 accepts any share)")
    return problems


def _bad_split_rejects(df):
    """Rows whose given split is not train/val/test."""
    from pyspark.sql import functions as F

    return df.where(~F.col("split").isin(*SPLITS))


def run(ctx) -> dict[str, Any]:
    """Load the configured dataset, validate, split, render, and MERGE into Delta.

    The rejects are stored first, then the quality gates of :func:`quality_problems` run: a
    configured label without rows, or too large a share of rows rejected for one reason,
    raises :class:`DataError` (naming the labels, counts and the option that allows it) before
    any example is written, unless ``dataset.allow_missing_labels`` / ``dataset.max_reject_share``
    allow it (a missing label is then a logged warning and in ``counts["warnings"]``).
    """
    from pyspark.sql import functions as F

    from pld_spark.errors import DataError

    cfg, spark, store = ctx.cfg, ctx.spark, ctx.store
    loaded = load_dataset(cfg.dataset, spark=spark)
    raw = raw_frame(spark, loaded.rows)
    good, rejects = validate(raw, cfg.task.label_names, cfg.dataset.max_text_chars)
    rejects = rejects.withColumn("task", F.lit(cfg.task.name))
    stored = store.read("examples").where((F.col("task") == cfg.task.name)
                                          & (F.col("dataset_hash") == dataset_hash(cfg))).select("example_id", "split")
    split_df = assign_splits(good, cfg.dataset.split, stored)
    valid_counts = split_label_counts(split_df)  # one job: the sample plan and the label gate
    examples = prepare(split_df, cfg, spark, counts=valid_counts)
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
    # Rejects first: a run that fails its quality gates below still keeps every refused row.
    store.merge("rejects", rejects, update=False)
    counts = {
        "rows_read": len(loaded.rows),
        "examples": examples.count(),
        "new_examples": examples.join(stored, "example_id", "left_anti").count(),  # not stored by an earlier ingest
        "rejects": rejects.count(),
        "per_split_label": {f"{r['split']}/{r['label']}": r["n"] for r in
                            examples.groupBy("split", "label").agg(F.count("*").alias("n")).collect()},
        "per_reject_reason": {r["reason"]: r["n"] for r in
                              rejects.groupBy("reason").agg(F.count("*").alias("n")).collect()},
    }
    rejects.unpersist()
    ctx.record.add_counts(STAGE, **counts)
    if counts["examples"] == 0:
        examples.unpersist()
        raise DataError(f"ingest: no usable rows in {cfg.dataset.path}: all {counts['rows_read']} rows were rejected "
                        f"(reasons: {counts['per_reject_reason']}); see table 'rejects'")
    rows_per_label: dict[str, int] = {}
    for (split, label), n in valid_counts.items():
        if split in SPLITS:
            rows_per_label[label] = rows_per_label.get(label, 0) + n
    problems = quality_problems(cfg.task.label_names, rows_per_label, counts["rows_read"],
                                counts["per_reject_reason"], cfg.dataset.max_reject_share)
    fatal = [msg for kind, msg in problems.items()
             if not (kind == "missing_labels" and cfg.dataset.allow_missing_labels)]
    if problems:
        counts["warnings"] = [problems[k] for k in sorted(problems)]
        ctx.record.add_counts(STAGE, warnings=counts["warnings"])
    if fatal:
        examples.unpersist()
        for msg in fatal:
            log.error("ingest of %s: %s", cfg.dataset.path, msg)
        raise DataError(f"ingest of {cfg.dataset.path} failed its quality checks (the {counts['rejects']} rejected "
                        f"rows are stored in table 'rejects'; no examples were written): " + " | ".join(fatal))
    if "missing_labels" in problems:
        log.warning("ingest of %s: %s (allowed by dataset.allow_missing_labels)", cfg.dataset.path,
                    problems["missing_labels"])
    # update=True: a re-ingest re-stamps the rows of the current sample (dataset_hash, run_id);
    # rows outside it keep their old dataset_hash, so later stages do not see them.
    store.merge("examples", examples, update=True)
    examples.unpersist()
    return counts
