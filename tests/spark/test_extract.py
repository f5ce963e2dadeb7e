"""extract on local Spark + Delta with a scripted teacher in the Spark workers."""
import pytest
from pyspark.sql import functions as F

from pld_spark.errors import StageError
from pld_spark.pipeline import extract
from tests.distill_fakes import TeacherFactory, calls_list, calls_made, seed_examples, synthetic_examples

pytestmark = pytest.mark.spark


def _ctx(make_ctx, *over):
    return make_ctx("stereoset.yaml", ["extract.batch_size=4", "extract.max_in_flight=2", "extract.partitions=2",
                                       *over])


def _micro(ctx):
    return ctx.store.read("micro_instructions").where(F.col("teacher_model") == "llamacpp:smollm2-135m-instruct")


def test_second_run_makes_zero_teacher_calls(make_ctx, tmp_path):
    ctx = _ctx(make_ctx)
    seed_examples(ctx, synthetic_examples(2, "train") + synthetic_examples(1, "val"))
    calls = str(tmp_path / "calls.txt")
    first = extract.run(ctx, client_factory=TeacherFactory(calls, junk_ids=["train-race-0"]))
    assert first["sent"] == 8 and first["ok"] == 8 and first["batches"] == 2 and first["invalid"] == 1
    assert calls_made(calls) == 8
    rows = _micro(ctx).collect()
    assert len(rows) == 8 and {r.example_id for r in rows} == {f"train-{lab}-{i}" for lab in
                                                                ("gender", "profession", "race", "religion")
                                                                for i in range(2)}
    junk = next(r for r in rows if r.example_id == "train-race-0")
    assert junk.valid is False and "names no label" in junk.invalid_reason and junk.error is None
    good = next(r for r in rows if r.example_id == "train-gender-1")
    assert good.valid and good.rule.endswith("the label is gender.") and good.run_id == ctx.run_id
    assert good.tokens_in == 50 and good.template_version == "extract-v1"
    assert ctx.record.counts["extract"]["sent"] == 8 and ctx.record.llm_calls == 8

    second = extract.run(ctx, client_factory=TeacherFactory(calls))
    assert second["sent"] == 0 and second["already_done"] == 8
    assert calls_made(calls) == 8  # zero teacher calls on the re-run
    # another teacher model is another resume key: everything is sent again
    ctx2 = _ctx(make_ctx, "teacher.model=other-teacher", "extract.batch_size=8")
    assert extract.run(ctx2, client_factory=TeacherFactory(calls))["sent"] == 8


def test_crash_part_way_then_resume_repeats_at_most_one_batch(make_ctx, tmp_path):
    ctx = _ctx(make_ctx)
    seed_examples(ctx, synthetic_examples(4, "train"))  # 16 examples, batches of 4
    calls = str(tmp_path / "calls.txt")
    with pytest.raises(Exception, match="simulated crash"):
        extract.run(ctx, client_factory=TeacherFactory(calls, crash_after=10))
    made = calls_made(calls)
    written = _micro(ctx).count()
    assert written == 8 and made >= 8  # two batches committed, the third died mid-way
    resumed = extract.run(ctx, client_factory=TeacherFactory(calls))
    assert resumed["sent"] == 16 - written
    rows = _micro(ctx).collect()
    ids = [r.example_id for r in rows]
    assert len(ids) == 16 and len(set(ids)) == 16  # every train example exactly once
    repeated = calls_made(calls) - 16
    assert 0 <= repeated <= 4  # at most one batch of paid calls repeated
    assert len(calls_list(calls)) - len(set(calls_list(calls))) == repeated


def test_errors_are_rows_retried_later_and_budget_fails_loudly(make_ctx, tmp_path):
    ctx = _ctx(make_ctx, "extract.max_error_rate=0.2")
    seed_examples(ctx, synthetic_examples(2, "train"))  # 8 examples
    calls = str(tmp_path / "calls.txt")
    failing = ["train-gender-0", "train-race-1", "train-religion-0"]
    with pytest.raises(StageError, match=r"3 of 8 teacher calls failed.*max_error_rate=0.2"):
        extract.run(ctx, client_factory=TeacherFactory(calls, fail_ids=failing))
    errs = _micro(ctx).where("error IS NOT NULL").collect()
    assert sorted(r.example_id for r in errs) == sorted(failing)
    assert all("ServerError" in r.error for r in errs)
    # the next run only retries the errored rows, and their rows are updated in place
    again = extract.run(ctx, client_factory=TeacherFactory(calls))
    assert again["sent"] == 3 and again["errors"] == 0
    rows = _micro(ctx).collect()
    assert len(rows) == 8 and all(r.error is None for r in rows)


def test_ids_claimed_by_a_running_extract_are_skipped_and_stale_claims_are_taken_over(make_ctx, tmp_path):
    from datetime import datetime, timedelta, timezone

    from pld_spark.storage.catalog import EXTRACT_CLAIMS

    ctx = _ctx(make_ctx)
    seed_examples(ctx, synthetic_examples(2, "train"))  # 8 examples, batches of 4
    tm, tv = extract.teacher_model_id(ctx.cfg.teacher), "extract-v1"
    ids = sorted(f"train-{lab}-{i}" for lab in ("gender", "profession", "race", "religion") for i in range(2))
    now = datetime.now(timezone.utc)
    live, stale = ids[:3], ids[3:5]
    # `live`: claimed by another extract after this one starts (a claim time in the future stands
    # for that); `stale`: claimed an hour ago by a run that died before writing them
    claims = [(i, tm, tv, "run-live", now + timedelta(hours=1)) for i in live] + \
             [(i, tm, tv, "run-dead", now - timedelta(hours=1)) for i in stale]
    ctx.store.merge("extract_claims", ctx.spark.createDataFrame(claims, EXTRACT_CLAIMS.ddl))
    calls = str(tmp_path / "calls.txt")
    out = extract.run(ctx, client_factory=TeacherFactory(calls))
    assert out["sent"] == 5 and out["claimed_elsewhere"] == 3
    assert sorted(calls_list(calls)) == ids[3:]  # the live run's ids were not paid for here
    owners = {r.example_id: r.run_id for r in ctx.store.read("extract_claims").collect()}
    assert owners == {**{i: "run-live" for i in live}, **{i: ctx.run_id for i in ids[3:]}}
    # the live run's ids stay pending: its own run writes them, or the next run takes them over
    assert extract.pending_ids(ctx.store.read("examples"), ctx.store.read("micro_instructions"), tm, tv) == live
    # with claims off, a run sends them regardless
    assert extract.run(_ctx(make_ctx, "extract.claim=false"), client_factory=TeacherFactory(calls))["sent"] == 3


def test_two_runs_claiming_the_same_ids_at_once_give_each_id_one_owner(make_ctx):
    """Two claimers on threads of one Spark session race their MERGEs into extract_claims:
    Delta serialises the commits, so every id ends owned by exactly one of them (with the
    same start time neither takes over the other's claims, so one run usually owns them all)."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import datetime, timezone

    ctx = _ctx(make_ctx)
    ctx.store.ensure("extract_claims")
    started = datetime.now(timezone.utc)
    ids = [f"ex-{i:02d}" for i in range(24)]
    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(extract.claim, ctx.store, ids, "m", "v", run, started) for run in ("run-a", "run-b")]
        got = {run: f.result() for run, f in zip(("run-a", "run-b"), futs)}
    assert not set(got["run-a"]) & set(got["run-b"]), got
    assert sorted(got["run-a"] + got["run-b"]) == ids
    owners = {r.example_id: r.run_id for r in ctx.store.read("extract_claims").collect()}
    assert owners == {**{i: "run-a" for i in got["run-a"]}, **{i: "run-b" for i in got["run-b"]}}
