"""Two `pld` processes writing the same Delta tables at once end consistent.

On a fresh lakehouse, two `pld ingest` processes start together (both create the tables and
MERGE the same keys). Then two `pld extract` processes start together (two MERGEs into
``micro_instructions`` plus appends to ``runs``) while this test process keeps running
`pld rules review` (through ``cli.main``, its own Spark JVM) until both have finished, so a
third writer appends to ``rule_reviews`` during the extracts. Each command either
succeeds (Delta conflicts are retried by the store) or exits 2 with one clear message; the
tables end with no duplicated key, no lost row, a contiguous commit history, and a further
extract would have nothing left to do. The two extracts claim their batches
(``extract_claims``), so together they pay for at most one batch more than the rows.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import CONF
from tests.distill_fakes import synthetic_examples
from tests.integration.servers import (
    PipelineServer, PldProcess, has_traceback, pld_args, pld_env, run_pld_inprocess)

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]


def _ok_or_clear(proc=None, rc: int | None = None, err: str | None = None) -> bool:
    """True if the command succeeded; a failure must be one clear `error:` line, no traceback."""
    if proc is not None:
        rc, err = proc.proc.returncode, proc.stderr
    assert not has_traceback(err), err[-3000:]
    if rc == 0:
        return True
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "concurrent" in lines[0], err[-2000:]
    return False


def _start_together(jobs, tmp_path, env, while_running=None):
    """Start the ``pld`` processes at once; call ``while_running()`` repeatedly until all exit."""
    procs = {name: PldProcess(argv, cwd=tmp_path, env=env, log_prefix=tmp_path / name) for name, argv in jobs}
    while while_running is not None and any(p.poll() is None for p in procs.values()):
        while_running()
    for p in procs.values():
        p.wait(timeout=900)
    return procs


def _history_is_contiguous(store, name: str) -> int:
    versions = sorted(r.version for r in store.history(name).select("version").collect())
    assert versions == list(range(len(versions))), (name, versions)
    return len(versions)


def test_two_ingests_then_two_extracts_and_reviews_at_once(spark, tmp_path, capfd):
    from datetime import datetime, timezone

    from pyspark.sql import functions as F

    from pld_spark.config import load_config
    from pld_spark.context import RunContext
    from pld_spark.pipeline import extract
    from pld_spark.storage.readers import current_examples
    from pld_spark.storage.catalog import RULES

    data = tmp_path / "train.jsonl"
    rows = synthetic_examples(10, "train")  # 40 rows
    data.write_text("".join(json.dumps({"id": r["example_id"], "text": r["text"], "label": r["label"],
                                        "split": "train"}) + "\n" for r in rows))
    srv = PipelineServer(latency_s=0.1).start()
    try:
        sets = [f"lakehouse.path={tmp_path / 'lakehouse'}", "spark.master=local[2]", "spark.driver_memory=1g",
                "spark.shuffle_partitions=2", "dataset.loader=generic", f"dataset.path={data}",
                "dataset.columns.id=id", "dataset.columns.split=split",
                "teacher.type=openai", "teacher.model=teacher", f"teacher.base_url={srv.url}",
                "extract.batch_size=8", "extract.partitions=2"]
        cfg = CONF / "stereoset.yaml"
        env = pld_env()

        # ---- two ingests on an empty lakehouse
        ing = _start_together([("ingest-a", pld_args(["ingest"], cfg, sets)),
                               ("ingest-b", pld_args(["ingest"], cfg, sets))], tmp_path, env)
        assert any(_ok_or_clear(p) for p in ing.values())
        ctx = RunContext(load_config(cfg, sets), command="test").replace(spark=spark)
        store = ctx.store
        ex = store.read("examples").collect()
        assert Counter(r.example_id for r in ex) == Counter({r["example_id"]: 1 for r in rows})
        assert current_examples(ctx, "train").count() == len(rows)
        for t in ("examples", "rejects", "runs"):
            _history_is_contiguous(store, t)

        # a rule to review while the extracts run
        now = datetime.now(timezone.utc)
        rule = {"rule_id": "r-conc-1", "task": "stereoset", "instruction": "If a job is named, the label is profession.",
                "label": "profession", "support": 3, "origin": "test", "valid": True, "run_id": "seed",
                "created_at": now}
        store.merge("rules", spark.createDataFrame([tuple(rule.get(c) for c in RULES.columns)], RULES.ddl))

        # ---- two extract processes; reviews from this process until both have exited
        reviews_done: list[bool] = []
        review_argv = pld_args(["rules", "review", "--rule-id", "r-conc-1", "--action", "approve",
                                "--reviewer", "tester"], cfg, sets)

        def review():
            rc, _, err = run_pld_inprocess(review_argv, capfd)
            reviews_done.append(_ok_or_clear(rc=rc, err=err))

        procs = _start_together([("extract-a", pld_args(["extract"], cfg, sets)),
                                 ("extract-b", pld_args(["extract"], cfg, sets))], tmp_path, env, review)
        oks = {name: _ok_or_clear(p) for name, p in procs.items()}
        assert oks["extract-a"] or oks["extract-b"]
        assert len(reviews_done) >= 2 and any(reviews_done)
        extracts_ok = all(oks.values())
        if not extracts_ok:  # the one that gave up may leave the batch it had claimed: the next run takes it over
            rc, _, err = run_pld_inprocess(pld_args(["extract"], cfg, sets), capfd)
            assert rc == 0, err[-2000:]
        micro = store.read("micro_instructions").where(F.col("teacher_model") == "openai:teacher").collect()
        per_key = Counter((r.example_id, r.teacher_model, r.template_version) for r in micro)
        assert len(per_key) == len(rows) and max(per_key.values()) == 1  # no duplicated key, none lost
        assert all(r.error is None and r.rule for r in micro)
        assert extract.pending_ids(current_examples(ctx, "train"), store.read("micro_instructions"),
                                   "openai:teacher", "extract-v1") == []
        sent = [json.loads(procs[n].stdout)["extract"]["sent"] for n in ("extract-a", "extract-b") if oks[n]]
        # claims: only a batch one process had in flight when the other started is paid twice
        assert len(rows) <= len(srv.log) <= len(rows) + 8, len(srv.log)
        if len(sent) == 2:
            assert len(srv.log) == sum(sent)
            for n in ("extract-a", "extract-b"):  # every pending id was either sent or left to the other
                c = json.loads(procs[n].stdout)["extract"]
                assert c["sent"] + c["claimed_elsewhere"] == c["train_examples"] - c["already_done"], (n, c)
        reviews = store.read("rule_reviews").collect()
        assert len(reviews) == sum(reviews_done) and len({r.review_id for r in reviews}) == len(reviews)
        assert {(r.rule_id, r.action, r.reviewer) for r in reviews} == {("r-conc-1", "approve", "tester")}
        for t in ("micro_instructions", "runs", "rule_reviews", "examples"):
            _history_is_contiguous(store, t)
        # one end row per run ('running' rows: one at the start, one per committed extract batch, heartbeats)
        runs = store.read("runs").collect()
        ends = Counter(r.command for r in runs if r.status != "running")
        per_run = Counter(r.run_id for r in runs if r.status != "running")
        assert ends["ingest"] == 2 and ends["extract"] == 2 + (not extracts_ok) and set(per_run.values()) == {1}
        assert {r.run_id for r in runs} == set(per_run)  # every run that started also ended
        print(f"\nconcurrent: ingest rc={[p.proc.returncode for p in ing.values()]} "
              f"extract rc={ {n: p.proc.returncode for n, p in procs.items()} } reviews ok/tried="
              f"{sum(reviews_done)}/{len(reviews_done)} teacher calls={len(srv.log)} (sent per process {sent}) for {len(rows)} rows")
    finally:
        srv.stop()
