"""Is a run still alive? A 'running' row of ``runs`` whose process is gone on this host, or whose
heartbeat is older than the lease, belongs to an abandoned run (:meth:`pld_spark.context.RunContext.start`
writes it its 'abandoned' row)."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def pid_alive(pid: int, started_before: float | None = None) -> bool:
    """Whether process ``pid`` on this host still exists (and, when ``started_before`` (epoch
    seconds) is given and the start time is readable, started no later than that: a newer
    process with the same id is a reused pid, not the run's)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except (OverflowError, ValueError, OSError):
        return False
    if started_before is not None:
        began = _process_start_time(int(pid))
        # a margin for btime's 1 s resolution and clock adjustments since boot
        if began is not None and began > started_before + 60.0:
            return False
    return True


def _process_start_time(pid: int) -> float | None:
    """Epoch seconds a process started (Linux /proc), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the ')' of the command name
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def utc(ts: datetime | None) -> datetime | None:
    """Spark returns TIMESTAMP values as naive local times."""
    if ts is None:
        return None
    return ts.astimezone(timezone.utc)


def stale_reason(row: dict[str, Any], now: datetime, host: str, lease_s: float) -> str | None:
    """Why a run whose latest ``runs`` row is ``row`` (status 'running') is abandoned, or None
    while it may still be alive: its process on this host is gone, or its last heartbeat is
    older than ``lease_s``."""
    beat = utc(row.get("heartbeat_at") or row.get("event_time"))
    started = utc(row.get("started_at"))
    pid = row.get("pid")
    if row.get("host") == host and pid is not None and not pid_alive(
            pid, started.timestamp() if started is not None else None):
        return f"its process {pid} on {host} is gone"
    if beat is not None and (now - beat).total_seconds() > lease_s:
        return f"no heartbeat since {beat.isoformat(timespec='seconds')} (lease {lease_s:g} s)"
    return None
