"""extract against a real teacher server: claims, errors as rows, the error budget, resuming, and
the run record of a run that stops part-way.

The teacher is the ``openai`` backend in the Spark workers, talking to a FaultServer on 127.0.0.1
that proxies to ``python -m llama_cpp.server`` with the embedded SmolLM2-135M (one thread).
Failures are tied to examples (``fault_for``): the calls for chosen examples get HTTP 400 (fatal,
never retried) whatever order they arrive in; the others reach the real model. The server logs
every request, so what each run paid for is counted there, per example.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from pld_spark.errors import StageError
from pld_spark.pipeline import extract
from pld_spark.storage.views import create_views
from tests.distill_fakes import seed_examples, synthetic_examples
from tests.integration.servers import FaultServer, request_key

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

TEACHER = "openai:smollm2"


@pytest.fixture
def teacher_server(llama_server):
    """factory(rows) -> a started FaultServer in front of the real model: the calls for the example
    ids in ``srv.failing`` get HTTP 400; ``srv.sent(since)`` lists the example id of each request it saw."""
    started = []

    def make(rows):
        key_to_id = {r["input_text"]: r["example_id"] for r in rows}
        failing: set[str] = set()

        def fault_for(body):
            eid = key_to_id.get(request_key(body).removesuffix("#repair"))
            return "400" if eid in failing else None

        srv = FaultServer(upstream=llama_server.url, fault_for=fault_for).start()
        srv.failing = failing
        srv.sent = lambda since=0: [key_to_id[request_key(e["body"]).removesuffix("#repair")]  # noqa: E731
                                    for e in srv.log[since:]]
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()


def _ctx(make_ctx, url, *over):
    return make_ctx("stereoset.yaml", [
        "teacher.type=openai", "teacher.model=smollm2", f"teacher.base_url={url}", "teacher.max_tokens=64",
        "teacher.max_retries=0", "teacher.timeout_s=180", "extract.max_in_flight=1", "extract.partitions=1", *over])


def _micro(ctx):
    return {r.example_id: r for r in ctx.store.read("micro_instructions")
            .where(F.col("teacher_model") == TEACHER).collect()}


def test_claims_errors_budget_and_resume_against_a_real_teacher(make_ctx, teacher_server):
    from pld_spark.storage.catalog import EXTRACT_CLAIMS

    rows = synthetic_examples(1, "train")  # 4 examples
    ids = sorted(r["example_id"] for r in rows)
    srv = teacher_server(rows)
    ctx = _ctx(make_ctx, srv.url, "extract.batch_size=4", "extract.max_error_rate=0.2")
    seed_examples(ctx, rows)
    # ids[0]: claimed by an extract that is running right now (its claim is newer than any run
    # here); ids[1]: claimed an hour ago by a run that died before writing it
    now = datetime.now(timezone.utc)
    ctx.store.merge("extract_claims", ctx.spark.createDataFrame(
        [(ids[0], TEACHER, "extract-v1", "run-live", now + timedelta(hours=1)),
         (ids[1], TEACHER, "extract-v1", "run-dead", now - timedelta(hours=1))], EXTRACT_CLAIMS.ddl))
    srv.failing.add(ids[2])

    # run 1: the live claim is skipped, the stale one taken over; ids[2]'s call fails -> over budget
    with pytest.raises(StageError, match=r"extract: [1-3] of 3 teacher calls failed \(4 pending of 4 train "
                                         r"examples\), above "
                                         r"max_error_rate=0.2; the failed rows are in micro_instructions"):
        extract.run(ctx)
    assert sorted(set(srv.sent())) == ids[1:]  # the live run's example was not paid for here
    assert ctx.record.counts["extract"]["claimed_elsewhere"] == 1 and ctx.record.counts["extract"]["sent"] == 3
    got = _micro(ctx)
    assert set(got) == set(ids[1:])  # every call is a row, failed or not
    assert got[ids[2]].error.startswith("BadRequestError") and got[ids[2]].rule is None
    errored = sorted(i for i, r in got.items() if r.error is not None)
    ok = {i: r for i, r in got.items() if r.error is None}
    assert all(r.tokens_in > 0 and r.attempts >= 1 and r.run_id == ctx.run_id for r in ok.values())
    owners = {r.example_id: r.run_id for r in ctx.store.read("extract_claims").collect()}
    assert owners == {ids[0]: "run-live", **{i: ctx.run_id for i in ids[1:]}}
    usage = ctx.record.counts["extract"]["usage"]["teacher"]
    assert usage["calls"] == 3 and usage["tokens_in"] == sum(r.tokens_in for r in got.values())

    # run 2: the teacher is healthy again and claims are off: only what has no result is sent (the
    # errored rows, updated in place, and the example the other run still holds), nothing twice
    srv.failing.clear()
    n = len(srv.log)
    ctx2 = _ctx(make_ctx, srv.url, "extract.batch_size=4", "extract.claim=false", "extract.max_error_rate=1.0")
    out2 = extract.run(ctx2)
    assert sorted(set(srv.sent(n))) == sorted([ids[0], *errored]) and out2["sent"] == 1 + len(errored)
    again = _micro(ctx2)
    assert set(again) == set(ids) and again[ids[2]].error is None and again[ids[2]].run_id == ctx2.run_id
    for i, r in ok.items():  # nothing successful was paid for twice or rewritten
        assert (again[i].run_id, again[i].created_at) == (r.run_id, r.created_at)


def test_a_resumed_run_counts_its_errors_against_every_train_example(make_ctx, teacher_server):
    """1 persistent failure of 20 is within a 0.2 budget in the run that meets it and in the run that
    retries it alone (1 of 1 sent, but still 1 of 20 examples)."""
    rows = synthetic_examples(5, "train")  # 20 examples
    bad = sorted(r["example_id"] for r in rows)[3]
    srv = teacher_server(rows)
    srv.failing.add(bad)
    ctx = _ctx(make_ctx, srv.url, "extract.batch_size=8", "extract.max_error_rate=0.2")
    seed_examples(ctx, rows)
    out1 = extract.run(ctx)
    errored = {i for i, r in _micro(ctx).items() if r.error is not None}  # the model may fail one more
    assert out1["sent"] == 20 and bad in errored and out1["errors"] == len(errored) <= 4
    n = len(srv.log)
    # only the failed ones are sent, and they fail again: k of k calls, but k of 20 examples
    out2 = extract.run(_ctx(make_ctx, srv.url, "extract.batch_size=8", "extract.max_error_rate=0.2"))
    assert set(srv.sent(n)) == errored and out2["sent"] == len(errored) and out2["already_done"] == 20 - len(errored)
    assert out2["errors"] >= 1 and _micro(ctx)[bad].error is not None


def test_max_calls_budget_leaves_the_rest_pending_for_the_next_run(make_ctx, teacher_server):
    rows = synthetic_examples(1, "train")  # 4 examples
    ids = sorted(r["example_id"] for r in rows)
    srv = teacher_server(rows)
    ctx = _ctx(make_ctx, srv.url, "extract.batch_size=4", "extract.max_calls=0")
    seed_examples(ctx, rows)
    out0 = extract.run(ctx)
    assert srv.sent() == [] and out0["sent"] == 0 and out0["left_pending"] == 4

    out1 = extract.run(_ctx(make_ctx, srv.url, "extract.batch_size=4", "extract.max_calls=2"))
    assert sorted(set(srv.sent())) == ids[:2] and out1["sent"] == 2 and out1["left_pending"] == 2
    n = len(srv.log)
    ctx3 = _ctx(make_ctx, srv.url, "extract.batch_size=4")
    out3 = extract.run(ctx3)  # no budget: only the two left pending are paid for
    assert sorted(set(srv.sent(n))) == ids[2:] and out3["already_done"] == 2 and "left_pending" not in out3
    assert set(_micro(ctx3)) == set(ids)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _status(ctx, run_id):
    create_views(ctx.store)
    rows = ctx.store.sql(f"SELECT * FROM run_status WHERE run_id = '{run_id}'").collect()
    assert len(rows) == 1
    return rows[0]


def test_extract_that_dies_part_way_is_abandoned_with_the_usage_of_its_committed_batches(make_ctx,
                                                                                           teacher_server):
    """The run's process is gone (a dead pid) after two committed batches: the first paid the
    real model, the second's calls all failed and the error budget stopped the stage. What is on
    disk is the start row and one 'running' row per committed batch; the next command closes it."""
    rows = synthetic_examples(1, "train")  # 4 examples, batches of 2
    ids = sorted(r["example_id"] for r in rows)
    srv = teacher_server(rows)
    srv.failing.update(ids[2:])
    ctx = _ctx(make_ctx, srv.url, "extract.batch_size=2", "extract.max_error_rate=0.2")
    ctx.heartbeat_s = None  # this "process" dies; no thread outlives the test
    ctx.pid = _dead_pid()
    seed_examples(ctx, rows)
    ctx.start()
    with pytest.raises(StageError, match="teacher calls failed"):
        extract.run(ctx)
    assert sorted(set(srv.sent())) == ids
    paid = _micro(ctx)
    tokens_in, tokens_out = sum(r.tokens_in for r in paid.values()), sum(r.tokens_out for r in paid.values())
    assert tokens_in > 0 and all(paid[i].tokens_in == 0 for i in ids[2:])  # the failed calls spent nothing
    # no finish row: the start row and one row per committed batch
    runs = sorted(ctx.store.read("runs").where(f"run_id = '{ctx.run_id}'").collect(), key=lambda r: r.event_time)
    assert [r.status for r in runs] == ["running"] * 3
    assert [r.llm_calls for r in runs] == [0, 2, 4]
    assert (runs[-1].tokens_in, runs[-1].tokens_out) == (tokens_in, tokens_out)
    assert runs[-1].host == socket.gethostname() and runs[-1].pid == ctx.pid and runs[-1].heartbeat_at is not None
    counts = json.loads(runs[-1].counts)["extract"]
    assert counts["batches"] == 2 and counts["usage"]["teacher"]["calls"] == 4
    # fresh heartbeat and nobody has looked yet: still reported as running
    assert _status(ctx, ctx.run_id).status == "running"

    # the next command on this lakehouse sees the run's pid gone and closes it
    nxt = make_ctx("stereoset.yaml")
    with nxt:
        pass
    st = _status(ctx, ctx.run_id)
    assert st.status == "abandoned"
    assert (st.llm_calls, st.tokens_in, st.tokens_out) == (4, tokens_in, tokens_out)  # the committed batches
    assert f"its process {ctx.pid} on {socket.gethostname()} is gone" in st.error and nxt.run_id in st.error
    assert st.ended_at is not None and st.wall_s is not None and st.wall_s >= 0
    assert _status(ctx, nxt.run_id).status == "succeeded"
    # closed once: a later command does not append another 'abandoned' row
    with make_ctx("stereoset.yaml"):
        pass
    statuses = [r.status for r in ctx.store.read("runs").where(f"run_id = '{ctx.run_id}'").collect()]
    assert statuses.count("abandoned") == 1
