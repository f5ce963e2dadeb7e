"""The composition root of a run.

``RunContext`` holds the config and lazily builds the heavy members (spark, store, teacher,
student) on first use. Tests replace members with :meth:`RunContext.replace` (e.g. a scripted
teacher, or the session-scoped Spark). It also owns the run record: one ``runs`` row when a
command starts and one when it ends, with per-stage counts, tokens and cost.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import time
import uuid
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from pld_spark.config import PLDConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


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

    def add_counts(self, stage: str, **counts: Any) -> None:
        self.counts.setdefault(stage, {}).update(counts)

    def add_usage(self, tokens_in: int = 0, tokens_out: int = 0, calls: int = 0, cost: float = 0.0) -> None:
        self.tokens_in += int(tokens_in)
        self.tokens_out += int(tokens_out)
        self.llm_calls += int(calls)
        self.cost_usd += float(cost)


class RunContext:
    """Everything a stage needs, built lazily. Pass it in; never reach for globals."""

    def __init__(self, cfg: PLDConfig, command: str = "", run_id: str | None = None, with_nlp: bool | None = None):
        self.cfg = cfg
        self.command = command
        self.run_id = run_id or new_run_id()
        self.record = RunRecord(self.run_id, command)
        self._with_nlp = with_nlp
        self._usage_seen: dict[int, dict[str, float]] = {}  # client id -> stats already folded in

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

        return DeltaStore.from_config(self.spark, self.cfg.lakehouse)

    @cached_property
    def teacher(self):
        from pld_spark.llm.registry import build_client

        return build_client(self.cfg.teacher, role="teacher", store=self._cache_store())

    @cached_property
    def student(self):
        from pld_spark.llm.registry import build_client

        return build_client(self.cfg.student, role="student", store=self._cache_store())

    def _cache_store(self):
        """The Delta-backed response cache, when the store is already built (no Spark otherwise)."""
        if "store" in self.__dict__:
            from pld_spark.llm.cache import DeltaCache

            return DeltaCache(self.store, run_id=self.run_id)
        return None

    def replace(self, **members: Any) -> "RunContext":
        """Override lazily built members (``spark``, ``store``, ``teacher``, ``student``) in place."""
        for k, v in members.items():
            if k not in {"spark", "store", "teacher", "student"}:
                raise AttributeError(f"RunContext has no replaceable member {k!r}")
            self.__dict__[k] = v
        return self

    # ------------------------------------------------------------------ run records
    def _runs_row(self, status: str, error: str | None = None, ended: bool = False) -> dict:
        now = datetime.now(timezone.utc)
        r = self.record
        return {
            "run_id": self.run_id, "command": self.command, "status": status, "event_time": now,
            "started_at": datetime.fromtimestamp(r.started, timezone.utc),
            "ended_at": now if ended else None, "config_text": self.cfg.text, "config_hash": self.cfg.hash,
            "code_version": code_version(), "counts": json.dumps(r.counts, sort_keys=True, default=str),
            "tokens_in": r.tokens_in, "tokens_out": r.tokens_out, "llm_calls": r.llm_calls,
            "cost_usd": round(r.cost_usd, 6), "wall_s": round(time.time() - r.started, 3) if ended else None,
            "error": error,
        }

    def _write_run(self, row: dict) -> None:
        from pld_spark.storage.catalog import RUNS

        df = self.spark.createDataFrame([row], RUNS.ddl)
        self.store.append("runs", df)

    def start(self) -> "RunContext":
        self._write_run(self._runs_row("running"))
        return self

    def finish(self, error: BaseException | None = None) -> None:
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

    def collect_usage(self, client) -> None:
        """Fold what a client spent since the last call into the run record (call at stage end)."""
        if client is None or not hasattr(client, "stats"):
            return
        s = client.stats()
        keys = ("tokens_in", "tokens_out", "calls", "cost_usd")
        prev = self._usage_seen.get(id(client), dict.fromkeys(keys, 0))
        delta = {k: (s.get(k) or 0) - (prev.get(k) or 0) for k in keys}
        self._usage_seen[id(client)] = {k: s.get(k) or 0 for k in keys}
        self.record.add_usage(delta["tokens_in"], delta["tokens_out"], delta["calls"], delta["cost_usd"])
