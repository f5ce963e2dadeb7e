"""kill -9 of `pld extract` and `pld score` at random points, then resume.

Each command runs as a real subprocess in its own process group against a PipelineServer on
127.0.0.1 (answers every pipeline request, each healthy answer takes ``LATENCY_S`` so kills
land mid-batch). The kill is SIGKILL to the whole group (driver, Spark JVM, Python workers),
at a random number of server requests into the run plus a random delay. After three kills a
last run completes. Checked: no duplicated and no lost rows, no error rows, every Delta table
still readable after each kill, and the paid calls made twice (same request seen twice at the
server) are at most one batch (extract) / one chunk (score) per kill.
"""
from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest

from tests.conftest import CONF
from tests.distill_fakes import seed_examples, synthetic_examples
from tests.integration.servers import PipelineServer, kill_and_resume, pld_args, pld_env, request_key, seed_prompt

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

LATENCY_S = 0.25
KILLS = 3


def _common(tmp_path) -> list[str]:
    return [f"lakehouse.path={tmp_path / 'lakehouse'}", "spark.master=local[2]", "spark.driver_memory=1g",
            "spark.shuffle_partitions=2"]


def _ctx(spark, sets):
    from pld_spark.config import load_config
    from pld_spark.context import RunContext

    return RunContext(load_config(CONF / "stereoset.yaml", sets), command="test").replace(spark=spark)


def test_kill9_extract_three_times_then_resume(spark, tmp_path):
    from pyspark.sql import functions as F

    batch = 4
    srv = PipelineServer(latency_s=LATENCY_S).start()
    try:
        sets = _common(tmp_path) + [
            "teacher.type=openai", "teacher.model=teacher", f"teacher.base_url={srv.url}", "teacher.max_retries=0",
            f"extract.batch_size={batch}", "extract.partitions=2", "extract.max_in_flight=2"]
        ctx = _ctx(spark, sets)
        rows = synthetic_examples(8, "train")  # 32 train examples
        seed_examples(ctx, rows)
        ids = {r["example_id"] for r in rows}
        key_to_id = {r["input_text"]: r["example_id"] for r in rows}
        micro = lambda: ctx.store.read("micro_instructions").where(F.col("teacher_model") == "openai:teacher")  # noqa: E731

        runs = kill_and_resume(srv, pld_args(["extract"], CONF / "stereoset.yaml", sets), cwd=tmp_path,
                               env=pld_env(), rng=random.Random(2024), kills=KILLS, max_step=8,
                               count_rows=lambda: micro().count(), delay_s=2 * LATENCY_S)
        final = micro().collect()
        got = Counter(r.example_id for r in final)
        assert set(got) == ids and max(got.values()) == 1  # no lost rows, no duplicates
        assert all(r.error is None for r in final)
        keys = [request_key(e["body"]) for e in srv.log]
        assert {key_to_id[k] for k in keys} == ids
        repeated = len(keys) - len(set(keys))
        assert repeated <= KILLS * batch, (repeated, runs)
        # after each kill the table was readable (count_rows read it) and committed work was kept
        committed = [r["rows"] for r in runs]
        assert committed == sorted(committed) and committed[-1] == len(ids), runs
        out = json.loads(runs[-1]["stdout"])["extract"]
        assert out["already_done"] == runs[-2]["rows"] and out["sent"] == len(ids) - runs[-2]["rows"]
        print(f"\nextract kills: runs={[(r['requests'], r['rows']) for r in runs]} repeated calls={repeated}")
    finally:
        srv.stop()


def _chunk_sizes(spark, docs_path, done_ids: set[str], chunk_rows: int) -> list[int]:
    """The chunk sizes `pld score` will use for the documents not yet scored (same hash split)."""
    from pyspark.sql import functions as F

    todo = spark.read.json(str(docs_path)).where(~F.col("doc_id").isin(list(done_ids) or ["-"]))
    n = todo.count()
    if n == 0:
        return []
    k = max(1, math.ceil(n / chunk_rows))
    if k == 1:
        return [n]
    sizes = todo.groupBy(F.pmod(F.xxhash64("doc_id"), F.lit(k)).alias("c")).count().collect()
    return sorted(r["count"] for r in sizes)


def test_kill9_score_three_times_then_resume(spark, tmp_path):
    from pyspark.sql import functions as F

    from pld_spark.prompts.student import PromptRule

    chunk_rows = 4
    srv = PipelineServer(latency_s=LATENCY_S).start()
    try:
        sets = _common(tmp_path) + [
            "student.type=openai", "student.model=student", f"student.base_url={srv.url}", "student.max_retries=0",
            "score.engine=local", f"score.chunk_rows={chunk_rows}", "score.ray.batch_size=2"]
        ctx = _ctx(spark, sets)
        version = seed_prompt(ctx, [PromptRule("r-prof", "profession",
                                                "If the sentence is about a job, the label is profession.")])
        docs = tmp_path / "docs.jsonl"
        texts = {f"doc-{i:03d}": f"Context: The {w} arrived.\nSentence: The {w} arrived early on day {i}."
                 for i, w in enumerate(["nurse", "mother", "somali", "bible", "plumber", "bride"] * 4)}
        docs.write_text("".join(json.dumps({"doc_id": d, "text": t}) + "\n" for d, t in texts.items()))
        key_to_id = {t: d for d, t in texts.items()}
        preds = lambda: ctx.store.read("predictions").where(  # noqa: E731
            (F.col("prompt_version") == version) & (F.col("condition") == "score"))

        def before():
            done = {r.doc_id for r in preds().where(F.col("error").isNull()).select("doc_id").collect()}
            return _chunk_sizes(spark, docs, done, chunk_rows)

        runs = kill_and_resume(srv, pld_args(["score", "--prompt-version", version, "--input", str(docs)],
                                             CONF / "stereoset.yaml", sets),
                               cwd=tmp_path, env=pld_env(), rng=random.Random(7), kills=KILLS, max_step=8,
                               count_rows=lambda: preds().count(), before_run=before,
                               delay_s=2 * LATENCY_S)
        final = preds().collect()
        got = Counter(r.doc_id for r in final)
        assert set(got) == set(texts) and max(got.values()) == 1
        assert all(r.error is None and r.label in ctx.cfg.task.label_names for r in final)
        keys = [request_key(e["body"]) for e in srv.log]
        assert {key_to_id[k] for k in keys} == set(texts)
        per_doc = Counter(keys)
        repeated = sum(c - 1 for c in per_doc.values())
        # at most one chunk (the one in flight when the process died) repeated per kill
        bound = sum(max(r["extra"]) for r in runs[:-1] if r["extra"])
        assert repeated <= bound, (repeated, [(r["requests"], r["rows"], r["extra"]) for r in runs])
        print(f"\nscore kills: runs={[(r['requests'], r['rows'], r['extra']) for r in runs]} repeated calls={repeated}")
    finally:
        srv.stop()
