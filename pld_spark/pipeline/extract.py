"""extract: train ``examples`` -> ``micro_instructions`` (one teacher rule per example).

For each train example one teacher call sees the input (cut to ``extract.max_input_chars``),
its gold label and the label descriptions, and returns JSON ``{reasoning, rule}``. Each rule
is validated (:func:`pld_spark.prompts.teacher.validate_rule`); invalid rules are kept with
``valid=false`` and the reason, and ``injection_flag`` marks prompt-injection patterns in the
input or the rule.

Calls run on Spark executors (:func:`pld_spark.engines.executor.map_teacher`: ``mapInPandas``,
one cached client per worker process, ``max_in_flight`` concurrent requests per partition,
``teacher.requests_per_minute`` split across partitions).

Resume and crash safety. The resume key is (example id, teacher model id, template version);
only examples without a row for that key with ``error IS NULL`` are sent, so a second run
sends nothing and errored rows are retried (their row is updated in place). The driver
sorts the pending ids and processes them in chunks of ``extract.batch_size``: one Spark job
per chunk, whose results are collected to the driver (so a Delta MERGE can never re-run the
model calls by re-evaluating its source) and MERGEd as one commit before the next chunk
starts. A crash therefore loses only the chunk in flight: at most one batch of paid calls is
repeated by the resumed run. On a cluster raise ``batch_size`` (e.g. 1-5k) so each Spark job
keeps every executor busy; the loss bound grows with it.

Overlapping runs. Two runs started on the same lakehouse (a scheduled job and a manual one)
list the same pending rows. Before a batch's calls, a run claims its ids in ``extract_claims``
(one MERGE on the resume key: Delta serialises concurrent commits, so each id has one owner)
and sends only the ids it owns; the ids another run claimed are skipped and counted in
``claimed_elsewhere``. A claim made before this run started belongs to a run that finished or
died (or to the one batch an older run still had in flight) and is taken over, so a resumed run
never waits and two overlapping runs pay for at most one batch twice. Ids skipped because a
run that then died had claimed them stay pending for the next run. ``extract.claim=false``
turns this off. Claim times come from each driver's clock, so drivers on different hosts
need synchronised clocks (NTP) for the "before this run started" test.

Accounting: each batch's tokens, calls and cost go into the run record as soon as its calls
return, and after its commit the run appends a 'running' row to ``runs`` with the usage so far
(:meth:`pld_spark.context.RunContext.progress`), so a killed run still shows what it paid for.

Error budget: when more than ``extract.max_error_rate`` of this run's calls failed, the stage
raises :class:`pld_spark.errors.StageError` naming the counts (already-written rows stay).
It stops early as soon as the budget can no longer be met.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable

from pld_spark.errors import StageError
from pld_spark.prompts.teacher import RuleLimits, injection_flag, parse_extract, render_extract, validate_rule
from pld_spark.storage.readers import teacher_model_id

log = logging.getLogger(__name__)

STAGE = "extract"
INPUT_COLUMNS = ("example_id", "input_text", "label")
MAP_DDL = ("micro_id STRING, example_id STRING, teacher_model STRING, template_version STRING, label STRING, "
           "rule STRING, reasoning STRING, valid BOOLEAN, invalid_reason STRING, injection_flag BOOLEAN, "
           "tokens_in BIGINT, tokens_out BIGINT, latency_s DOUBLE, attempts INT, cached BOOLEAN, error STRING, "
           "cost_usd DOUBLE")


def micro_id(example_id: str, teacher_model: str, template_version: str) -> str:
    """Stable id of a micro-instruction: sha256 of its resume key."""
    blob = "\u001f".join((example_id, teacher_model, template_version))
    return "mi-" + hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ExtractSpec:
    """Everything a worker needs to render a request and judge its answer (picklable)."""

    task: Any
    template_version: str
    teacher_model: str
    max_input_chars: int
    max_tokens: int | None
    limits: RuleLimits

    @classmethod
    def from_config(cls, cfg) -> "ExtractSpec":
        e = cfg.extract
        return cls(task=cfg.task, template_version=e.template_version, teacher_model=teacher_model_id(cfg.teacher),
                   max_input_chars=e.max_input_chars, max_tokens=cfg.teacher.max_tokens,
                   limits=RuleLimits(e.rule_min_chars, e.rule_max_chars, e.max_copy_overlap))


def make_request(spec: ExtractSpec, row: dict[str, Any]):
    """The teacher request for one example row."""
    return render_extract(spec.task, row["input_text"] or "", row["label"], template_version=spec.template_version,
                          max_input_chars=spec.max_input_chars, max_tokens=spec.max_tokens,
                          request_id=str(row["example_id"]))


def handle(spec: ExtractSpec, row: dict[str, Any], resp) -> dict[str, Any]:
    """One ``micro_instructions`` row (without run_id/created_at) from a response."""
    base = {
        "micro_id": micro_id(row["example_id"], spec.teacher_model, spec.template_version),
        "example_id": row["example_id"], "teacher_model": spec.teacher_model,
        "template_version": spec.template_version, "label": row["label"],
        "tokens_in": int(resp.tokens_in or 0), "tokens_out": int(resp.tokens_out or 0),
        "latency_s": float(resp.latency_s or 0.0), "attempts": int(resp.attempts or 0),
        "cached": bool(resp.cached), "cost_usd": float(resp.cost_usd or 0.0),
    }
    text = row.get("input_text") or ""
    if resp.error is not None:
        return {**base, "rule": None, "reasoning": None, "valid": False, "invalid_reason": None,
                "injection_flag": injection_flag(text), "error": f"{resp.error_type or 'error'}: {resp.error}"[:2000]}
    reasoning, rule = parse_extract(resp.data, resp.text)
    if not rule and not reasoning and not (resp.data or "{" in (resp.text or "")):
        valid, reason = False, "response is not a JSON object with 'rule'"
    else:
        valid, reason = validate_rule(rule, spec.task.label_names, input_text=text, gold_label=row["label"],
                                      limits=spec.limits)
    return {**base, "rule": rule or None, "reasoning": reasoning or None, "valid": valid, "invalid_reason": reason,
            "injection_flag": injection_flag(text, rule), "error": None}


def transform(examples, cfg, *, client_factory: Callable[[], Any] | None = None, partitions: int | None = None):
    """examples (example_id, input_text, label) -> micro-instruction rows (lazy; one teacher call
    per row when evaluated, so evaluate it once)."""
    from pld_spark.engines.executor import map_teacher
    from pld_spark.storage.delta import require_columns

    require_columns(examples, INPUT_COLUMNS, STAGE)
    spec = ExtractSpec.from_config(cfg)
    return map_teacher(examples.select(*INPUT_COLUMNS), make_request=partial(make_request, spec),
                       handle=partial(handle, spec), out_schema=MAP_DDL, llm_cfg=cfg.teacher,
                       client_factory=client_factory, max_in_flight=cfg.extract.max_in_flight,
                       requests_per_minute=cfg.teacher.requests_per_minute, partitions=partitions)


def pending_ids(examples, micro, teacher_model: str, template_version: str) -> list[str]:
    """Sorted ids of examples with no successful row for (teacher model, template version)."""
    from pyspark.sql import functions as F

    done = micro.where((F.col("teacher_model") == teacher_model) & (F.col("template_version") == template_version)
                       & F.col("error").isNull()).select("example_id")
    rows = examples.select("example_id").join(done, "example_id", "left_anti").distinct().collect()
    return sorted(r.example_id for r in rows)


def claim(store, ids: list[str], teacher_model: str, template_version: str, run_id: str,
          run_started: datetime) -> list[str]:
    """Claim ``ids`` for ``run_id`` in ``extract_claims`` -> the ids this run owns, in order.

    New ids are inserted; an id claimed before ``run_started`` is taken over; an id another run
    claimed since this run started stays theirs.
    """
    from pyspark.sql import functions as F

    from pld_spark.storage.catalog import EXTRACT_CLAIMS

    if not ids:
        return []
    now = datetime.now(timezone.utc)
    spark = store.spark
    store.merge("extract_claims",
                spark.createDataFrame([(i, teacher_model, template_version, run_id, now) for i in ids],
                                      EXTRACT_CLAIMS.ddl),
                update=True, update_when=f"t.claimed_at < TIMESTAMP '{run_started.isoformat()}'")
    owned = {r.example_id for r in store.read("extract_claims").where(
        (F.col("teacher_model") == teacher_model) & (F.col("template_version") == template_version)
        & (F.col("run_id") == run_id) & F.col("example_id").isin(ids)).select("example_id").collect()}
    return [i for i in ids if i in owned]


def over_error_budget(errors: int, n_examples: int, max_error_rate: float) -> bool:
    """True when more than ``max_error_rate`` of the train examples errored. The share is of all of
    them, not of this run's pending ones: a resumed run retrying the one example that failed before
    must not fail at 1 of 1 when it is 1 of 64."""
    return errors > max_error_rate * n_examples


def run(ctx, client_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Extract rules for the pending train examples in crash-safe batches (see module doc)."""
    from pyspark.sql import functions as F

    from pld_spark.storage.readers import current_examples
    from pld_spark.storage.catalog import MICRO_INSTRUCTIONS

    cfg, store, spark = ctx.cfg, ctx.store, ctx.spark
    ecfg = cfg.extract
    tm, tv = teacher_model_id(cfg.teacher), ecfg.template_version
    examples = current_examples(ctx, "train").select(*INPUT_COLUMNS)
    started = datetime.now(timezone.utc)  # claims older than this belong to runs that ended (or died)
    micro = store.read("micro_instructions")
    todo = pending_ids(examples, micro, tm, tv)
    n_train = examples.count()
    counts: dict[str, Any] = {"train_examples": n_train, "already_done": n_train - len(todo), "sent": 0, "ok": 0,
                              "errors": 0, "invalid": 0, "injection_flags": 0, "batches": 0, "claimed_elsewhere": 0,
                              "teacher_model": tm, "template_version": tv}
    log.info("extract: %d train examples, %d pending for (%s, %s)", n_train, len(todo), tm, tv)
    if ecfg.max_calls is not None and len(todo) > ecfg.max_calls:
        counts["left_pending"] = len(todo) - ecfg.max_calls
        log.warning("extract: extract.max_calls=%d: %d pending rows are left for a later run; later stages use the "
                    "rules of %d of %d train examples", ecfg.max_calls, counts["left_pending"],
                    counts["already_done"] + ecfg.max_calls, n_train)
        todo = todo[:ecfg.max_calls]
    from pld_spark.engines.spark import default_parallelism

    parallelism = ecfg.partitions or default_parallelism(spark, cfg.spark)
    usage = {"tokens_in": 0, "tokens_out": 0, "cost": 0.0}
    try:
        for start in range(0, len(todo), ecfg.batch_size):
            chunk = todo[start: start + ecfg.batch_size]
            if ecfg.claim:
                mine = claim(store, chunk, tm, tv, ctx.run_id, started)
                counts["claimed_elsewhere"] += len(chunk) - len(mine)
                if len(mine) < len(chunk):
                    log.info("extract: %d of %d ids in this batch are claimed by another running extract; "
                             "skipped", len(chunk) - len(mine), len(chunk))
                chunk = mine
                if not chunk:
                    continue
            part = examples.where(F.col("example_id").isin(chunk))
            mapped = transform(part, cfg, client_factory=client_factory,
                               partitions=max(1, min(parallelism, len(chunk))))
            rows = [r.asDict() for r in mapped.collect()]  # the model calls happen here, once
            # paid now, whatever happens to the write below: into the run record at once
            batch_usage = (sum(r["tokens_in"] or 0 for r in rows), sum(r["tokens_out"] or 0 for r in rows),
                           sum(r["cost_usd"] or 0.0 for r in rows))
            ctx.record.add_usage(STAGE, batch_usage[0], batch_usage[1], len(rows), batch_usage[2], role="teacher")
            usage["tokens_in"] += batch_usage[0]
            usage["tokens_out"] += batch_usage[1]
            usage["cost"] += batch_usage[2]
            counts["sent"] += len(rows)
            now = datetime.now(timezone.utc)
            cols = MICRO_INSTRUCTIONS.columns
            records = [tuple({**r, "run_id": ctx.run_id, "created_at": now}.get(c) for c in cols) for r in rows]
            if records:
                store.merge("micro_instructions", spark.createDataFrame(records, MICRO_INSTRUCTIONS.ddl), update=True)
            counts["batches"] += 1
            errs = sum(r["error"] is not None for r in rows)
            counts["errors"] += errs
            counts["ok"] += len(rows) - errs
            counts["invalid"] += sum(r["error"] is None and not r["valid"] for r in rows)
            counts["injection_flags"] += sum(bool(r["injection_flag"]) for r in rows)
            log.info("extract: batch %d written (%d/%d sent, %d errors)", counts["batches"], counts["sent"],
                     len(todo), counts["errors"])
            # one runs row per committed batch: a run killed later still shows what it paid for
            ctx.record.add_counts(STAGE, **{**counts, "tokens_in": usage["tokens_in"],
                                             "tokens_out": usage["tokens_out"]})
            ctx.progress()
            if over_error_budget(counts["errors"], n_train, ecfg.max_error_rate):
                break  # the budget can no longer be met: stop paying for calls
    finally:
        counts.update(tokens_in=usage["tokens_in"], tokens_out=usage["tokens_out"])
        ctx.record.add_counts(STAGE, **counts)
    if counts["sent"] and over_error_budget(counts["errors"], n_train, ecfg.max_error_rate):
        raise StageError(
            f"extract: {counts['errors']} of {counts['sent']} teacher calls failed ({len(todo)} pending of "
            f"{n_train} train examples), above max_error_rate={ecfg.max_error_rate}; the failed rows are in "
            f"micro_instructions with their error and are retried by the next run")
    return counts
