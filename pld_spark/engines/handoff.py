"""Spark <-> Ray data exchange through Parquet folders.

Spark writes the rows to score as Parquet into ``<root>/<run_id>/<name>/in``; Ray Data reads
that folder and writes its results to ``.../out``; Spark reads them back with an explicit
schema and the folder is removed once the results are safely merged into Delta. Files, not
driver memory, carry the data, so the same code path works for a few hundred rows locally
and for an archive on a cluster (where the root must be shared storage both sides can read:
set ``score.handoff_dir`` to a ``/Volumes/...`` or ``dbfs:/...`` path on Databricks).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

def handoff_root(cfg) -> str:
    """``score.handoff_dir``, else ``<lakehouse.path>/_handoff``."""
    if cfg.score.handoff_dir:
        return cfg.score.handoff_dir.rstrip("/")
    if cfg.lakehouse.catalog:
        log.warning("score.handoff_dir is not set: using a driver-local folder; on a multi-node cluster set it to "
                    "shared storage (/Volumes/<catalog>/<schema>/<volume>/handoff or dbfs:/...)")
    return str(Path(cfg.lakehouse.path).resolve() / "_handoff")


def ray_path(path: str) -> str:
    """The path as Ray (plain Python file APIs) sees it: ``dbfs:/x`` is ``/dbfs/x`` on Databricks."""
    if path.startswith("dbfs:/"):
        return "/dbfs/" + path[len("dbfs:/"):].lstrip("/")
    return path


@dataclass(frozen=True)
class Handoff:
    """One exchange: Spark writes ``input_path``, Ray writes ``output_path``."""

    root: str

    @property
    def input_path(self) -> str:
        return f"{self.root}/in"

    @property
    def output_path(self) -> str:
        return f"{self.root}/out"

    def cleanup(self) -> None:
        """Remove the exchange folder (local or /dbfs paths; remote URIs are left to lifecycle rules)."""
        local = ray_path(self.root)
        if "://" in local:
            log.info("handoff %s is remote; not removed", self.root)
            return
        shutil.rmtree(local, ignore_errors=True)


def new_handoff(cfg, run_id: str, name: str) -> Handoff:
    """A fresh exchange folder for ``run_id``/``name`` (a stale one from a crashed run is removed)."""
    h = Handoff(f"{handoff_root(cfg)}/{run_id}/{name}")
    h.cleanup()
    return h


def write_input(df, handoff: Handoff, num_files: int) -> None:
    """Spark side: write ``df`` as ``num_files`` Parquet files for Ray to read."""
    df.repartition(max(1, int(num_files))).write.mode("overwrite").parquet(handoff.input_path)


def read_output(spark, handoff: Handoff, ddl: str):
    """Spark side: Ray's result files as a DataFrame with schema ``ddl`` (the caller's: the
    engine does not own a stage's columns). Empty when Ray wrote nothing (no input rows)."""
    out = ray_path(handoff.output_path)
    if "://" not in out and not any(Path(out).glob("*.parquet")):
        return spark.createDataFrame([], ddl)
    return spark.read.schema(ddl).parquet(handoff.output_path)
