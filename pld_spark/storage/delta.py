"""Delta store: create-if-missing, idempotent MERGE on natural keys, append-only records.

Locally every table is a Delta folder under the lakehouse path and is registered as a temp
view of the same name, so ``spark.sql("select * from rules")`` works in any session that
built a store. On Databricks (``lakehouse.catalog`` set) tables are ``catalog.schema.name``.
"""
from __future__ import annotations

import logging
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable

from pld_spark.errors import ContractError, StorageError
from pld_spark.storage.catalog import TABLES, TableSpec, spec

log = logging.getLogger(__name__)

def error_condition(exc: BaseException) -> str:
    """Spark's error condition (class) of an exception, e.g. ``DELTA_CONCURRENT_APPEND``: the typed
    identity of a JVM error in classic mode (``getCondition``, Spark 4; ``getErrorClass``, 3.5) and
    over Spark Connect alike. "" when it has none."""
    fn = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)  # 3.5 has only the latter
    if not callable(fn):
        return ""
    try:
        value = fn()
    except Exception:  # noqa: BLE001 - some exception wrappers raise on a missing class
        value = None
    return str(value) if value else ""


#: Delta's optimistic-concurrency conflicts by error condition (safe to retry)
_CONFLICT_CONDITIONS = ("DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED")


def _is_conflict(exc: BaseException) -> bool:
    """Delta's optimistic-concurrency conflicts, which are safe to retry.

    Classic mode: importing ``delta.exceptions`` installs Delta's converter that turns the JVM
    conflict exceptions into these Python classes (ConcurrentAppendException etc.). Over Spark
    Connect those classes are not used: the error condition names the conflict."""
    if error_condition(exc).startswith(_CONFLICT_CONDITIONS):
        return True
    try:
        import delta.exceptions as dx
    except ImportError:
        return False
    # In delta-spark 4.x the concrete conflicts (ConcurrentAppendException, ...) are *not*
    # subclasses of DeltaConcurrentModificationException: name every one of them.
    conflicts = tuple(getattr(dx, n) for n in (
        "DeltaConcurrentModificationException", "ConcurrentWriteException", "MetadataChangedException",
        "ProtocolChangedException", "ConcurrentAppendException", "ConcurrentDeleteReadException",
        "ConcurrentDeleteDeleteException", "ConcurrentTransactionException") if hasattr(dx, n))
    return isinstance(exc, conflicts)


#: another process is creating the table right now (its ``_delta_log`` exists, its first commit
#: has not landed yet), so Delta sees a folder that is "not empty and not a Delta table"
_CREATE_IN_PROGRESS = "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION"


def _is_create_race(exc: BaseException) -> bool:
    """Two processes creating the same table: the loser sees the table already exists, sees
    the winner's folder before its first commit, or finds no table in a log being written."""
    return error_condition(exc).startswith(
        ("TABLE_OR_VIEW_ALREADY_EXISTS", "DELTA_PATH_EXISTS", "DELTA_TABLE_ALREADY_EXISTS", _CREATE_IN_PROGRESS,
         # seen in CI: the loser's CREATE IF NOT EXISTS read the winner's log mid-create
         "DELTA_TABLE_NOT_FOUND"))


def _has_commit(log_dir: Path) -> bool:
    """A local table exists once its log holds a commit (or checkpoint). A ``_delta_log`` folder
    without one is what a process killed while creating the table leaves behind; treating it
    as a table would break every later command, so it is created again instead."""
    try:
        return any((f.suffix == ".json" and f.stem.isdigit()) or ".checkpoint." in f.name
                   for f in log_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False


class DeltaStore:
    """All table I/O goes through here. Holds the session; never creates one."""

    def __init__(self, spark, path: str = "./lakehouse", catalog: str | None = None, schema: str | None = None,
                 max_conflict_retries: int = 8):
        self.spark = spark
        self.root = Path(path).resolve()
        self.catalog = catalog
        self.schema = schema
        self.max_conflict_retries = max_conflict_retries
        self._columns_checked: set[str] = set()  # tables whose added columns this store has checked
        if not self.catalog:
            self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_config(cls, spark, lakehouse_cfg) -> "DeltaStore":
        return cls(spark, lakehouse_cfg.path, lakehouse_cfg.catalog, lakehouse_cfg.schema_)

    # ---------------------------------------------------------------- naming
    def location(self, name: str) -> str:
        spec(name)
        if self.catalog:
            return f"{self.catalog}.{self.schema or 'default'}.{name}"
        return str(self.root / name)

    def _ref(self, name: str) -> str:
        """SQL reference for a table: backticked path locally, 3-part name on Databricks."""
        loc = self.location(name)
        return loc if self.catalog else f"delta.`{loc}`"

    def exists(self, name: str) -> bool:
        if self.catalog:
            return self.spark.catalog.tableExists(self.location(name))
        return _has_commit(Path(self.location(name)) / "_delta_log")

    # ---------------------------------------------------------------- create / read
    def ensure(self, name: str) -> None:
        """Create the table with its catalogue schema if it does not exist (idempotent, race-safe)."""
        stmt = f"CREATE TABLE IF NOT EXISTS {self._ref(name)} ({spec(name).ddl}) USING DELTA"

        def _do():
            # check, create and register in one retried step: another process may be creating
            # the same table between any two of them
            if not self.exists(name):
                self._clear_orphan_log(name)
                self.spark.sql(stmt)
            elif name not in self._columns_checked:
                self._add_columns(name)
            self._columns_checked.add(name)
            self._register_view(name)

        self._with_retry(_do, f"create {name}")

    def _add_columns(self, name: str) -> None:
        """Give an existing table the nullable columns added to its spec since it was created
        (``TableSpec.added``), with ``ALTER TABLE ... ADD COLUMNS``: one commit, once per table."""
        added = spec(name).added
        if not added:
            return
        have = set(self.spark.read.format("delta").load(self.location(name)).columns if not self.catalog
                   else self.spark.table(self.location(name)).columns)
        todo = [c for c in added if c.split()[0] not in have]
        if todo:
            log.info("table '%s': adding columns %s", name, ", ".join(todo))
            self.spark.sql(f"ALTER TABLE {self._ref(name)} ADD COLUMNS ({', '.join(todo)})")

    #: seconds an empty ``_delta_log`` may be another process's create in progress
    orphan_log_grace_s: float = 60.0

    def _clear_orphan_log(self, name: str) -> None:
        """Remove a ``_delta_log`` folder that holds no commit (a create killed half-way).

        Delta counts such a folder as an existing table but cannot read it, so every later
        command would fail. Another process may be creating the table right now (it commits
        within milliseconds), so the folder is removed only once it has stayed commit-less for
        ``orphan_log_grace_s`` seconds."""
        if self.catalog:
            return
        log_dir = Path(self.location(name)) / "_delta_log"
        while log_dir.is_dir() and not _has_commit(log_dir):
            try:
                age = time.time() - log_dir.stat().st_mtime
            except FileNotFoundError:
                return
            if age >= self.orphan_log_grace_s:
                log.warning("table '%s': removing an empty _delta_log left by an interrupted create", name)
                shutil.rmtree(log_dir, ignore_errors=True)
                return
            time.sleep(min(1.0, self.orphan_log_grace_s - age))

    def ensure_all(self, names: Iterable[str] | None = None) -> None:
        for n in names or TABLES:
            self.ensure(n)

    def _register_view(self, name: str) -> None:
        if not self.catalog:
            self.spark.sql(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {self._ref(name)}")

    def register_views(self) -> None:
        """Make every existing table queryable by its bare name in this session."""
        for n in TABLES:
            if self.exists(n):
                self._register_view(n)

    def read(self, name: str):
        """The table as a DataFrame (empty with the catalogue schema if it does not exist yet)."""
        self.ensure(name)
        if self.catalog:
            return self.spark.table(self.location(name))
        return self.spark.read.format("delta").load(self.location(name))

    def empty(self, name: str):
        return self.spark.createDataFrame([], spec(name).ddl)

    # ---------------------------------------------------------------- write
    def conform(self, name: str, df):
        """Select/cast ``df`` to the table's schema; missing nullable columns become NULL.

        Raises ContractError naming the table and the columns that are present in neither.
        """
        from pyspark.sql import functions as F

        s = spec(name)
        target = self.spark.createDataFrame([], s.ddl).schema
        missing_keys = [k for k in s.keys if k not in df.columns]
        if missing_keys:
            raise ContractError(f"write to '{name}': missing key columns {missing_keys}; got {df.columns}")
        unknown = [c for c in df.columns if c not in target.names]
        if unknown:
            raise ContractError(f"write to '{name}': columns not in the table schema: {unknown}")
        cols = []
        for field in target.fields:
            if field.name in df.columns:
                cols.append(F.col(field.name).cast(field.dataType).alias(field.name))
            else:
                cols.append(F.lit(None).cast(field.dataType).alias(field.name))
        return df.select(*cols)

    def append(self, name: str, df) -> None:
        self.ensure(name)
        out = self.conform(name, df)
        self._with_retry(lambda: self._append(name, out), f"append {name}")

    def _append(self, name: str, df) -> None:
        if self.catalog:
            df.write.format("delta").mode("append").saveAsTable(self.location(name))
        else:
            df.write.format("delta").mode("append").save(self.location(name))

    def merge(self, name: str, df, update: bool = True, update_when: str | None = None) -> None:
        """Idempotent upsert on the table's natural keys.

        ``update=False`` inserts only rows whose key is new (first write wins), which is what
        resumable stages want: re-running never rewrites a paid result. ``update_when`` (SQL over
        ``t.`` target and ``s.`` source columns) updates a matched row only where it holds.
        Duplicate keys inside ``df`` are collapsed (last one in the frame's order wins).

        Runs as SQL ``MERGE INTO ... USING <temp view>``, not the ``DeltaTable`` Python API: the
        same statement works in classic mode and over Spark Connect (serverless, standard access
        mode), where the Python ``DeltaTable`` builder needs the ``delta.connect`` client instead.
        """
        s = spec(name)
        if s.append_only or not s.keys:
            raise StorageError(f"table '{name}' is append-only; use append()")
        self.ensure(name)
        src = self.conform(name, df).dropDuplicates(list(s.keys))
        cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in s.keys)
        view = f"pld_merge_{name}_{uuid.uuid4().hex[:12]}"
        matched = (f"WHEN MATCHED{f' AND ({update_when})' if update_when else ''} THEN UPDATE SET * " if update
                   else "")
        stmt = (f"MERGE INTO {self._ref(name)} AS t USING {view} AS s ON {cond} "
                f"{matched}WHEN NOT MATCHED THEN INSERT *")
        src.createOrReplaceTempView(view)
        try:
            self._with_retry(lambda: self.spark.sql(stmt).collect(), f"merge {name}")
        finally:
            self.spark.catalog.dropTempView(view)

    def delete_where(self, name: str, condition: str) -> None:
        if self.exists(name):
            self._with_retry(lambda: self.spark.sql(f"DELETE FROM {self._ref(name)} WHERE {condition}"),
                             f"delete {name}")

    def _with_retry(self, fn, what: str):
        for attempt in range(self.max_conflict_retries + 1):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - re-raised unless a Delta conflict
                if not _is_conflict(e) and not (what.startswith("create") and _is_create_race(e)):
                    raise
                if attempt == self.max_conflict_retries:
                    raise StorageError(
                        f"{what}: gave up after {attempt + 1} attempts because of concurrent Delta commits "
                        f"({type(e).__name__}); re-run the command") from e
                delay = min(8.0, 0.2 * 2 ** attempt) * (0.5 + random.random())
                log.warning("%s: concurrent commit conflict (%s); retry %d in %.1fs", what, type(e).__name__,
                            attempt + 1, delay)
                time.sleep(delay)

    # ---------------------------------------------------------------- sql
    def sql(self, query: str):
        self.register_views()
        return self.spark.sql(query)

    def history(self, name: str):
        return self.spark.sql(f"DESCRIBE HISTORY {self._ref(name)}")


def require_columns(df, columns: Iterable[str], stage: str) -> None:
    """Stage contract check: fail with the stage name and the missing columns."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ContractError(f"stage '{stage}': input is missing columns {missing} (has {df.columns})")


def table_spec(name: str) -> TableSpec:
    return spec(name)
