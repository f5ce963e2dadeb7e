"""Delta store under crashes and concurrent writers (local Spark + Delta, no model).

- A process killed while creating a table leaves a ``_delta_log`` folder without a commit.
  Delta counts that as an existing table it cannot read, so every later command failed with
  ``DELTA_TABLE_NOT_FOUND``; the store now recreates such a table (after a grace period, in
  case another process is creating it right now).
- MERGEs into the same table from concurrent writers conflict (ConcurrentAppendException); the
  store retries them, and the natural keys stay unique. (In delta-spark 4.x the concrete
  conflict classes are not subclasses of DeltaConcurrentModificationException, so they were
  not retried at all before.) When retries are exhausted the error is a StorageError that
  says what happened and what to do.
"""
from __future__ import annotations

import inspect
import os
import threading
import time
from datetime import datetime, timezone

import pytest

from pld_spark.errors import StorageError
from pld_spark.storage.catalog import MICRO_INSTRUCTIONS
from pld_spark.storage.delta import DeltaStore

pytestmark = pytest.mark.spark


def _micro_rows(spark, ids, run_id: str):
    now = datetime.now(timezone.utc)
    recs = []
    for eid in ids:
        d = {"micro_id": f"mi-{eid}", "example_id": eid, "teacher_model": "t", "template_version": "v", "label": "race",
             "rule": f"If {eid}, the label is race.", "valid": True, "injection_flag": False, "attempts": 1,
             "cached": False, "run_id": run_id, "created_at": now}
        recs.append(tuple(d.get(c) for c in MICRO_INSTRUCTIONS.columns))
    return spark.createDataFrame(recs, MICRO_INSTRUCTIONS.ddl)


def test_table_left_half_created_by_a_kill_is_recreated(spark, tmp_path):
    store = DeltaStore(spark, str(tmp_path / "lake"))
    log_dir = tmp_path / "lake" / "micro_instructions" / "_delta_log"
    log_dir.mkdir(parents=True)
    (log_dir / ".00000000000000000000.json.3f1c.tmp").write_text('{"protocol":')  # the commit never landed
    os.utime(log_dir, (time.time() - 120, time.time() - 120))  # the killed create is long gone
    assert not store.exists("micro_instructions")
    assert store.read("micro_instructions").count() == 0  # DELTA_TABLE_NOT_FOUND before the fix
    store.merge("micro_instructions", _micro_rows(spark, ["a", "b"], "r1"))
    assert store.read("micro_instructions").count() == 2 and store.exists("micro_instructions")


def test_a_create_in_progress_is_waited_for_not_removed(spark, tmp_path):
    """A fresh commit-less log may be another process's create: wait for its commit."""
    lake = tmp_path / "lake"
    other = DeltaStore(spark, str(lake))
    store = DeltaStore(spark, str(lake))
    store.orphan_log_grace_s = 30.0
    log_dir = lake / "runs" / "_delta_log"
    log_dir.mkdir(parents=True)  # the other process has just made the folder...

    def finish_create():
        time.sleep(1.5)
        import shutil

        shutil.rmtree(log_dir)  # ...and (here, a moment later) commits version 0
        other.ensure("runs")

    t = threading.Thread(target=finish_create)
    t.start()
    t0 = time.monotonic()
    store.ensure("runs")
    t.join()
    assert 1.0 <= time.monotonic() - t0 < 30.0  # waited for the commit, did not wait out the grace period
    assert store.read("runs").count() == 0 and store.exists("runs")


def test_concurrent_merges_are_retried_and_keys_stay_unique(spark, tmp_path):
    store = DeltaStore(spark, str(tmp_path / "lake"))
    store.ensure("micro_instructions")
    ids = [f"e{i:02d}" for i in range(16)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def writer(part: list[str], run_id: str):
        try:
            barrier.wait()
            for start in range(0, len(part), 4):  # several commits each, overlapping keys
                store.merge("micro_instructions", _micro_rows(spark, part[start:start + 4], run_id))
        except BaseException as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(ids[:8], "a")),
               threading.Thread(target=writer, args=(ids[8:], "b")),
               threading.Thread(target=writer, args=(ids[4:12], "c"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = store.read("micro_instructions").collect()
    assert sorted(r.example_id for r in rows) == ids  # every key once
    versions = sorted(r.version for r in store.history("micro_instructions").select("version").collect())
    assert versions == list(range(len(versions)))


def test_conflict_retries_exhausted_is_a_clear_storage_error(spark, tmp_path):
    from delta.exceptions import ConcurrentAppendException

    store = DeltaStore(spark, str(tmp_path / "lake"), max_conflict_retries=2)
    calls = []

    def always_conflicts():
        calls.append(1)
        msg = "Files were added to the root of the table by a concurrent update."
        # delta-spark 3.3 (PySpark 3.5): a CapturedException, which asserts desc *and* stackTrace (or a
        # JVM origin); delta-spark 4: a PySparkException, which takes no stackTrace
        kw = {"stackTrace": ""} if "stackTrace" in inspect.signature(ConcurrentAppendException.__init__).parameters else {}
        raise ConcurrentAppendException(msg, **kw)

    with pytest.raises(StorageError, match=r"merge micro_instructions: gave up after 3 attempts because of concurrent "
                                           r"Delta commits \(ConcurrentAppendException\); re-run the command"):
        store._with_retry(always_conflicts, "merge micro_instructions")
    assert len(calls) == 3

