"""The run record of a run that never finished: the lease in the run_status view, and runs
tables written before the lease columns existed (no model). A killed extract's record (usage per
committed batch, then 'abandoned') is tests/integration/test_extract_server.py."""
from datetime import datetime, timedelta, timezone

import pytest

from pld_spark.storage.views import create_views

pytestmark = pytest.mark.spark

OLD_RUNS_DDL = ("run_id STRING, command STRING, status STRING, event_time TIMESTAMP, started_at TIMESTAMP, "
                "ended_at TIMESTAMP, config_text STRING, config_hash STRING, code_version STRING, counts STRING, "
                "tokens_in BIGINT, tokens_out BIGINT, llm_calls BIGINT, cost_usd DOUBLE, wall_s DOUBLE, error STRING")


def test_run_past_its_lease_is_abandoned_in_the_view_and_old_tables_gain_the_columns(make_ctx):
    from pld_spark.storage.catalog import RUNS

    ctx = make_ctx("stereoset.yaml")
    ctx.heartbeat_s = None
    spark, store = ctx.spark, ctx.store
    # a runs table written before host/pid/heartbeat_at existed, with a run killed 11 minutes ago
    spark.sql(f"CREATE TABLE delta.`{store.location('runs')}` ({OLD_RUNS_DDL}) USING DELTA")
    now = datetime.now(timezone.utc)
    old = now - timedelta(minutes=11)
    spark.createDataFrame([("old-run", "extract", "running", old, old, None, "", "h", "v", "{}", 10, 5, 2, 0.0, None,
                            None)], OLD_RUNS_DDL).write.format("delta").mode("append").save(store.location("runs"))
    create_views(store)  # adds the new columns in place
    assert {"host", "pid", "heartbeat_at"} <= set(store.read("runs").columns)
    st = store.sql("SELECT * FROM run_status WHERE run_id = 'old-run'").collect()[0]
    assert st.status == "abandoned" and st.llm_calls == 2 and st.host is None  # no pid known: the lease decides
    # a run on another host: its pid cannot be checked here, so only the lease counts
    recent = now - timedelta(minutes=1)
    base = {c: None for c in RUNS.columns}
    rows = [{**base, "run_id": "remote-live", "command": "resolve", "status": "running", "event_time": recent,
             "started_at": recent, "host": "other-host", "pid": 1, "heartbeat_at": recent},
            {**base, "run_id": "remote-dead", "command": "resolve", "status": "running", "event_time": old,
             "started_at": old, "host": "other-host", "pid": 1, "heartbeat_at": old}]
    store.append("runs", spark.createDataFrame([tuple(r[c] for c in RUNS.columns) for r in rows], RUNS.ddl))
    create_views(store)
    got = {r.run_id: r.status for r in store.sql("SELECT run_id, status FROM run_status").collect()}
    assert got == {"old-run": "abandoned", "remote-live": "running", "remote-dead": "abandoned"}
    # the next command writes the 'abandoned' rows of both expired runs, in the commit of its start row
    versions = store.history("runs").count()
    ctx.start()
    assert store.history("runs").count() == versions + 1
    closed = {r.run_id: r.error for r in store.read("runs").where("status = 'abandoned'").collect()}
    assert set(closed) == {"old-run", "remote-dead"} and all("no heartbeat since" in e for e in closed.values())
    ctx.finish()
