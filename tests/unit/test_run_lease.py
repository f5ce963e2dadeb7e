"""When a 'running' run counts as abandoned (no Spark): its pid on this host is gone, or its
heartbeat is older than the lease."""
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from pld_spark.context import HEARTBEAT_S
from pld_spark.liveness import pid_alive, stale_reason
from pld_spark.storage.views import RUN_LEASE_S, VIEW_SQL

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _row(host, pid, beat_ago_s, started_ago_s=3600):
    return {"host": host, "pid": pid, "heartbeat_at": NOW - timedelta(seconds=beat_ago_s),
            "event_time": NOW - timedelta(seconds=beat_ago_s), "started_at": NOW - timedelta(seconds=started_ago_s)}


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(_dead_pid())
    assert not pid_alive(2**62)  # not a pid at all
    # a live process that started after the run did is a reused pid, not the run's process
    assert not pid_alive(os.getpid(), started_before=datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp())


def test_stale_reason_same_host_checks_the_pid_other_hosts_the_lease():
    me = "this-host"
    dead = _dead_pid()
    assert stale_reason(_row(me, dead, 5), NOW, me, RUN_LEASE_S) == f"its process {dead} on {me} is gone"
    # our own process: alive, fresh heartbeat
    alive = _row(me, os.getpid(), 5, started_ago_s=-10**6)  # started_at far in the future: no reuse test trips
    assert stale_reason(alive, NOW, me, RUN_LEASE_S) is None
    assert stale_reason(_row("other", 1, 60), NOW, me, RUN_LEASE_S) is None  # another host: only the lease
    why = stale_reason(_row("other", 1, RUN_LEASE_S + 60), NOW, me, RUN_LEASE_S)
    assert why.startswith("no heartbeat since 2026-11-29T11:49:00+00:00")
    # rows written before host/pid/heartbeat_at existed: the event time is the heartbeat
    old = {"host": None, "pid": None, "heartbeat_at": None, "event_time": NOW - timedelta(hours=1), "started_at": None}
    assert stale_reason(old, NOW, me, RUN_LEASE_S).startswith("no heartbeat since")


def test_naive_spark_timestamps_are_local_time():
    local_naive = (NOW - timedelta(seconds=30)).astimezone().replace(tzinfo=None)  # how Spark returns TIMESTAMP
    row = {"host": "other", "pid": 1, "heartbeat_at": local_naive, "event_time": local_naive, "started_at": None}
    assert stale_reason(row, NOW, "me", 20) is not None and stale_reason(row, NOW, "me", 60) is None


def test_heartbeat_is_well_inside_the_lease_and_the_view_uses_it():
    assert HEARTBEAT_S * 3 <= RUN_LEASE_S
    assert f"INTERVAL {RUN_LEASE_S} SECONDS" in VIEW_SQL["run_status"]
    assert "THEN 'abandoned'" in VIEW_SQL["run_status"]
