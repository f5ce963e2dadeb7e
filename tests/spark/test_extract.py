"""extract's resume key and claims on local Spark + Delta (no model).

Which train examples a run still has to pay for (:func:`extract.pending_ids`) and which of them it
owns (:func:`extract.claim`) are decided on Delta alone. The whole stage against a real teacher
(claims, errors as rows, the error budget, resuming) is tests/integration/test_extract_server.py;
a crash part-way is tests/integration/test_reliability_kills.py.
"""
from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from pld_spark.pipeline import extract
from pld_spark.storage import readers
from tests.distill_fakes import seed_examples, seed_micro, synthetic_examples

pytestmark = pytest.mark.spark

IDS = sorted(f"train-{lab}-{i}" for lab in ("gender", "profession", "race", "religion") for i in range(2))


def test_pending_ids_follow_the_resume_key(make_ctx):
    ctx = make_ctx()
    rows = synthetic_examples(2, "train")
    seed_examples(ctx, rows + synthetic_examples(1, "val"))
    seed_micro(ctx, [r for r in rows if r["example_id"] not in ("train-race-1", "train-gender-0")])
    # a stored error is not a result: its example is sent again (and its row updated in place)
    ctx.store.spark.sql(f"UPDATE delta.`{ctx.store.location('micro_instructions')}` SET error = 'ServerError: 503', "
                        "rule = NULL WHERE example_id = 'train-religion-0'")
    tm, tv = readers.teacher_model_id(ctx.cfg.teacher), ctx.cfg.extract.template_version
    examples = readers.current_examples(ctx, "train")
    micro = ctx.store.read("micro_instructions")
    assert extract.pending_ids(examples, micro, tm, tv) == ["train-gender-0", "train-race-1", "train-religion-0"]
    # another teacher or another template version is another key: everything is pending for it
    assert extract.pending_ids(examples, micro, "openai:other-teacher", tv) == IDS
    assert extract.pending_ids(examples, micro, tm, "extract-v2") == IDS
    # only the current train split counts (val rows are never sent)
    assert not [i for i in extract.pending_ids(examples, micro, "x", tv) if i.startswith("val-")]


def test_claims_skip_a_running_extract_and_take_over_stale_ones(make_ctx):
    from pld_spark.storage.catalog import EXTRACT_CLAIMS

    ctx = make_ctx()
    tm, tv = "openai:teacher", "extract-v1"
    started = datetime.now(timezone.utc)
    live, stale = IDS[:3], IDS[3:5]
    # `live`: claimed by another extract after this one started; `stale`: claimed an hour ago by a
    # run that died before writing them
    claims = [(i, tm, tv, "run-live", started + timedelta(seconds=5)) for i in live] + \
             [(i, tm, tv, "run-dead", started - timedelta(hours=1)) for i in stale]
    ctx.store.merge("extract_claims", ctx.spark.createDataFrame(claims, EXTRACT_CLAIMS.ddl))
    mine = extract.claim(ctx.store, IDS, tm, tv, "run-me", started)
    assert mine == IDS[3:]
    owners = {r.example_id: r.run_id for r in ctx.store.read("extract_claims").collect()}
    assert owners == {**{i: "run-live" for i in live}, **{i: "run-me" for i in IDS[3:]}}
    # claims are per resume key: the same ids under another teacher are free
    assert extract.claim(ctx.store, live, "openai:other", tv, "run-me", started) == live
    # a run that started after the live claims takes them over (their run ended or died)
    later = started + timedelta(minutes=1)
    assert extract.claim(ctx.store, live, tm, tv, "run-next", later) == live
    assert ctx.store.read("extract_claims").where(F.col("run_id") == "run-next").count() == 3


def test_two_runs_claiming_the_same_ids_at_once_give_each_id_one_owner(make_ctx):
    """Two claimers on threads of one Spark session race their MERGEs into extract_claims:
    Delta serialises the commits, so every id ends owned by exactly one of them (with the
    same start time neither takes over the other's claims, so one run usually owns them all)."""
    from concurrent.futures import ThreadPoolExecutor

    ctx = make_ctx()
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
