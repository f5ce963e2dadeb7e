"""The composition root of a run.

``RunContext`` holds the config and lazily builds the heavy members (spark, store, teacher,
student) on first use. Tests replace members with :meth:`RunContext.replace` (e.g. a scripted
teacher, or the session-scoped Spark). It also owns the run record in ``runs``: a 'running'
row when a command starts, more 'running' rows while it works (after each committed batch of
paid calls, :meth:`RunContext.progress`, and a heartbeat every ``HEARTBEAT_S`` otherwise), and
a final 'succeeded' / 'failed' row, each with per-stage counts, tokens and cost so far.

Every row carries the host, pid and heartbeat time. A process killed without its final row
is found by the next command that starts on the lakehouse (its pid on this host is gone, or
its heartbeat is older than the lease) and gets an 'abandoned' row with the usage it had
recorded; the ``run_status`` view reports it as abandoned once the lease has passed anyway.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from pld_spark.config import PLDConfig
from pld_spark.liveness import stale_reason, utc as _utc

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: seconds between heartbeat rows of a started run when nothing else wrote one (each is one
#: small Delta commit); well inside the lease after which run_status calls a run abandoned
HEARTBEAT_S = 120.0


def code_version() -> str:
    """git SHA of the checkout (``-dirty`` if modified), else the package version."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5)
        if sha.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from pld_spark import __version__

    return f"pld_spark-{__version__}"


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


@dataclasses.dataclass
class RunRecord:
    run_id: str
    command: str
    started: float = dataclasses.field(default_factory=time.time)
    counts: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokens_in: int = 0
    tokens_out: int = 0
    llm_calls: int = 0
    cost_usd: float = 0.0
    # the heartbeat thread reads the record while the stage thread updates it
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add_counts(self, stage: str, **counts: Any) -> None:
        with self._lock:
            self.counts.setdefault(stage, {}).update(counts)

    def add_usage(self, stage: str, tokens_in: int = 0, tokens_out: int = 0, calls: int = 0, cost: float = 0.0,
                  role: str | None = None) -> None:
        """The one accounting path: what model calls of ``stage`` spent (by ``role`` when known)
        goes into the run's totals and into ``counts[stage]["usage"]``."""
        with self._lock:
            self.tokens_in += int(tokens_in)
            self.tokens_out += int(tokens_out)
            self.llm_calls += int(calls)
            self.cost_usd += float(cost)
            usage = self.counts.setdefault(stage, {}).setdefault("usage", {})
            for key in ("all",) + ((role,) if role else ()):
                u = usage.setdefault(key, {"calls": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0})
                u["calls"] += int(calls)
                u["tokens_in"] += int(tokens_in)
                u["tokens_out"] += int(tokens_out)
                u["cost_usd"] = round(u["cost_usd"] + float(cost), 8)

    def snapshot(self) -> dict[str, Any]:
        """Counts (as JSON) and usage so far, read consistently."""
        with self._lock:
            return {"counts": json.dumps(self.counts, sort_keys=True, default=str), "tokens_in": self.tokens_in,
                    "tokens_out": self.tokens_out, "llm_calls": self.llm_calls, "cost_usd": round(self.cost_usd, 6)}


class RunContext:
    """Everything a stage needs, built lazily. Pass it in; never reach for globals."""

    def __init__(self, cfg: PLDConfig, command: str = "", run_id: str | None = None, with_nlp: bool | None = None):
        self.cfg = cfg
        self.command = command
        self.run_id = run_id or new_run_id()
        self.record = RunRecord(self.run_id, command)
        self._with_nlp = with_nlp
        self._usage_seen: dict[int, dict[str, float]] = {}  # client id -> stats already folded in
        # the lease of this run's 'running' rows: who runs it, and when it last said so
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._code_ver: str | None = None
        self._started = False
        self._write_lock = threading.Lock()
        self._last_write = time.monotonic()
        self._stop_beat = threading.Event()
        self._beat: threading.Thread | None = None
        #: seconds between heartbeat rows; None: no heartbeat thread (rows at the start, per
        #: committed batch and at the end only)
        self.heartbeat_s: float | None = HEARTBEAT_S

    # Lazily built members. ``replace`` overrides any of them.
    @cached_property
    def spark(self):
        from pld_spark.engines.spark import get_spark

        nlp = self._with_nlp
        if nlp is None:
            nlp = self.cfg.input_policy.mode == "retrieve" and self.cfg.input_policy.splitter == "spark_nlp"
        return get_spark(self.cfg.spark, with_nlp=nlp)

    @cached_property
    def store(self):
        from pld_spark.storage.delta import DeltaStore

        store = DeltaStore.from_config(self.spark, self.cfg.lakehouse)
        if self.cfg.mlflow.enabled:  # prompt versions and alias moves are mirrored in the MLflow Prompt Registry
            from pld_spark.prompts.versions import add_observer

            add_observer(store, self.tracker)
        return store

    @cached_property
    def tracker(self):
        """MLflow tracking of this run (:class:`pld_spark.tracking.Tracker`; imports mlflow on first use)."""
        from pld_spark.tracking import Tracker

        return Tracker(self.cfg)

    @cached_property
    def teacher(self):
        from pld_spark.llm.registry import build_client

        return build_client(self.cfg.teacher, role="teacher", cache=self._cache_store("teacher"))

    @cached_property
    def student(self):
        from pld_spark.llm.registry import build_client

        return build_client(self.cfg.student, role="student", cache=self._cache_store("student"))

    #: the student's cache writes are buffered: its stages (score, evaluate) flush before each commit
    #: of their predictions, and one MERGE per scoring batch cost more than the local model's answers
    STUDENT_CACHE_BUFFER = {"flush_rows": 512, "flush_s": 30.0}

    def _cache_store(self, role: str):
        """The Delta-backed response cache, when the store is already built (no Spark otherwise):
        written through for the teacher (paid answers), buffered for the student."""
        if "store" in self.__dict__:
            from pld_spark.llm.cache import DeltaCache

            return DeltaCache(self.store, run_id=self.run_id,
                              **(self.STUDENT_CACHE_BUFFER if role == "student" else {}))
        return None

    def replace(self, **members: Any) -> "RunContext":
        """Override lazily built members (``spark``, ``store``, ``teacher``, ``student``) in place."""
        for k, v in members.items():
            if k not in {"spark", "store", "teacher", "student"}:
                raise AttributeError(f"RunContext has no replaceable member {k!r}")
            self.__dict__[k] = v
        return self

    # ------------------------------------------------------------------ run records
    def _code_version(self) -> str:
        if self._code_ver is None:
            self._code_ver = code_version()
        return self._code_ver

    def _runs_row(self, status: str, error: str | None = None, ended: bool = False) -> dict:
        now = datetime.now(timezone.utc)
        r = self.record
        return {
            "run_id": self.run_id, "command": self.command, "status": status, "event_time": now,
            "started_at": datetime.fromtimestamp(r.started, timezone.utc),
            "ended_at": now if ended else None, "config_text": self.cfg.text, "config_hash": self.cfg.hash,
            "code_version": self._code_version(), **r.snapshot(),
            "wall_s": round(time.time() - r.started, 3) if ended else None,
            "error": error, "host": self.host, "pid": self.pid, "heartbeat_at": now,
        }

    def _write_runs(self, rows: list[dict]) -> None:
        from pld_spark.storage.catalog import RUNS

        with self._write_lock:
            df = self.spark.createDataFrame([tuple(row.get(c) for c in RUNS.columns) for row in rows], RUNS.ddl)
            self.store.append("runs", df)
            self._last_write = time.monotonic()

    def _write_run(self, row: dict) -> None:
        self._write_runs([row])

    def stale_runs(self) -> list[dict]:
        """'abandoned' rows for the other runs whose latest row is 'running' but whose process
        is gone (same host, pid not alive) or whose heartbeat is older than the lease. Each
        copies the run's last row (its usage so far); ``ended_at`` is its last heartbeat."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        from pld_spark.storage.views import RUN_LEASE_S

        if not self.store.exists("runs"):
            return []
        w = Window.partitionBy("run_id").orderBy(F.col("event_time").desc(),
                                                 F.when(F.col("status") == "running", 1).otherwise(0))
        latest = (self.store.read("runs").withColumn("_n", F.row_number().over(w))
                  .where((F.col("_n") == 1) & (F.col("status") == "running") & (F.col("run_id") != self.run_id))
                  .drop("_n").collect())
        now = datetime.now(timezone.utc)
        out = []
        for r in latest:
            row = r.asDict()
            why = stale_reason(row, now, self.host, RUN_LEASE_S)
            if why is None:
                continue
            beat = _utc(row.get("heartbeat_at") or row.get("event_time"))
            started = _utc(row.get("started_at"))
            log.warning("run %s (%s) was left 'running': %s; recording it as abandoned", row["run_id"],
                        row.get("command"), why)
            out.append({**row, "status": "abandoned", "event_time": now, "ended_at": beat,
                        "wall_s": round((beat - started).total_seconds(), 3) if beat and started else None,
                        "error": f"abandoned: {why} (recorded by run {self.run_id})"})
        return out

    def start(self) -> "RunContext":
        """Write this run's 'running' row, close the rows of dead runs in the same commit, and
        start the heartbeat. Settings this compute cannot honour fail first (:meth:`check_compute`)."""
        self.check_compute()
        try:
            stale = self.stale_runs()
        except Exception:  # noqa: BLE001 - closing others' rows is housekeeping; never block this run
            log.exception("could not check the runs table for abandoned runs")
            stale = []
        self._write_runs([*stale, self._runs_row("running")])
        self._started = True
        self._stop_beat.clear()
        if self.heartbeat_s:
            self._beat = threading.Thread(target=self._heartbeat_loop, args=(float(self.heartbeat_s),),
                                          name=f"pld-heartbeat-{self.run_id}", daemon=True)
            self._beat.start()
        return self

    def check_compute(self) -> None:
        """Fail before the run's first row, with a :class:`ConfigError`, on settings the session
        cannot honour: Ray on Spark (``score.ray.setup_on_spark``) under Spark Connect, where
        ``setup_ray_cluster`` has no ``sparkContext`` (:func:`pld_spark.engines.ray.check_spark_session`).
        Builds the session only when Ray on Spark is asked for."""
        cfg = self.cfg
        if cfg.score.ray.setup_on_spark and "ray" in (cfg.score.engine, cfg.evaluate.engine):
            from pld_spark.engines.ray import check_spark_session

            check_spark_session(cfg.score.ray, self.spark)

    def progress(self) -> None:
        """Append a 'running' row with the usage and counts so far (call after a committed
        batch of paid work): a run killed later still shows what it paid for. No-op for a
        context that was not started (no run record)."""
        if not self._started:
            return
        try:
            self._write_run(self._runs_row("running"))
        except Exception:  # noqa: BLE001 - a bookkeeping failure must not fail the stage
            log.exception("could not write a progress row to runs for %s", self.run_id)

    def _heartbeat_loop(self, every_s: float) -> None:
        """After ``every_s`` without another runs row, write one, so a live run's heartbeat
        never gets older than the lease of the run_status view."""
        while True:
            wait = every_s - (time.monotonic() - self._last_write)
            if wait > 0:
                if self._stop_beat.wait(wait):
                    return
                continue
            if self._stop_beat.is_set():
                return
            self.progress()

    def flush_llm_caches(self) -> None:
        """Write the response-cache entries the driver's clients buffer (llm/cache.py). Stages call it
        before committing their own rows, and the run's end calls it. A failed write is logged, not
        raised: the cache is an optimisation, results are not."""
        for role in ("teacher", "student"):
            client = self.__dict__.get(role)
            if client is None or not hasattr(client, "flush_cache"):
                continue
            try:
                client.flush_cache()
            except Exception:  # noqa: BLE001
                log.exception("could not write the %s's buffered responses to llm_cache", role)

    def commit_predictions(self, df) -> None:
        """MERGE scored rows into ``predictions``, after the cached answers behind them: a kill
        between the two then repeats no model call whose row was committed."""
        self.flush_llm_caches()
        self.store.merge("predictions", df, update=True)

    def finish(self, error: BaseException | None = None) -> None:
        self.flush_llm_caches()
        self._stop_beat.set()
        if self._beat is not None:
            self._beat.join(timeout=60)  # its last row must not land after the final one
            self._beat = None
        self._started = False
        status = "failed" if error else "succeeded"
        msg = f"{type(error).__name__}: {error}"[:4000] if error else None
        try:
            self._write_run(self._runs_row(status, msg, ended=True))
        except Exception:  # noqa: BLE001 - never mask the original error with a bookkeeping failure
            log.exception("could not write the final runs row for %s", self.run_id)

    def __enter__(self) -> "RunContext":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exc)

    def collect_usage(self, client, stage: str) -> None:
        """Fold what a driver-side client spent since the last call into ``stage`` of the run
        record (call at stage end). Clients in Spark tasks or Ray actors are out of reach: those
        stages count what their stored rows say they spent (``record.add_usage``)."""
        if client is None:
            return
        s = client.stats()
        keys = ("tokens_in", "tokens_out", "calls", "cost_usd")
        prev = self._usage_seen.get(id(client), dict.fromkeys(keys, 0))
        delta = {k: (s.get(k) or 0) - (prev.get(k) or 0) for k in keys}
        self._usage_seen[id(client)] = {k: s.get(k) or 0 for k in keys}
        self.record.add_usage(stage, delta["tokens_in"], delta["tokens_out"], delta["calls"], delta["cost_usd"],
                              role=client.role)
