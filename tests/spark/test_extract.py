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
