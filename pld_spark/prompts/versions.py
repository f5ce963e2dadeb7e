"""Prompt versions: the one home for their ids, rows, aliases and lookups.

A prompt version is immutable and content-addressed: ``prompt_version = "pv-" + sha256(text)[:12]``
(:func:`version_id`), so the same text is the same version whoever writes it. Rows live in table
``prompts``; aliases (``clustered``, ``distilled``, ``live``, or any name a person promotes) are
an append-only history in ``prompt_aliases`` whose latest row per (task, alias) is current.

Every command that takes a prompt (``pld score``, ``pld evaluate``, ``pld prompt show|promote``,
``pld rules list``, resolve's start prompt) resolves it here, with one rule
(:meth:`PromptVersions.resolve`):

- a reference is a prompt version id of the task, else an alias name of the task;
- no reference means the first alias set among ``live``, ``distilled``, ``resolved``,
  ``selected``, ``clustered`` (:data:`DEFAULT_ORDER`): after ``pld consolidate`` alone that is the
  clustered prompt;
- anything else is :class:`PromptNotFoundError` with the same message everywhere.

Observers (:func:`add_observer`, e.g. the MLflow Prompt Registry mirror the run context attaches,
:class:`pld_spark.tracking.Tracker`) are told about every version written and alias moved through a
store; a failing observer is a WARNING, never an error: the Delta tables are the record.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

from pld_spark.errors import DataError

log = logging.getLogger(__name__)

#: alias order used when no prompt is named
DEFAULT_ORDER = ("live", "distilled", "resolved", "selected", "clustered")
#: aliases the pipeline itself moves: consolidate -> clustered, select -> selected, resolve -> resolved
#: (always) and distilled (only when the prompt beats zero-shot on validation); live by promotion only
ALIAS_CLUSTERED, ALIAS_SELECTED, ALIAS_RESOLVED = "clustered", "selected", "resolved"
ALIAS_DISTILLED, ALIAS_LIVE = "distilled", "live"


class PromptNotFoundError(DataError):
    """A prompt version or alias that the task does not have."""


def version_id(text: str) -> str:
    """The content address of a prompt text."""
    return "pv-" + hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PromptVersion:
    """One ``prompts`` row (see :data:`pld_spark.storage.catalog.PROMPTS`)."""

    task: str
    kind: str
    text: str
    rule_ids: tuple[str, ...] = ()
    dropped_rule_ids: tuple[str, ...] = ()
    review_ids: tuple[str, ...] = ()
    token_count: int = 0
    token_budget: int | None = None
    parent_version: str | None = None
    run_id: str | None = None
    created_at: datetime | None = None
    prompt_version: str = field(default="")
    #: train examples the prompt shows in its Examples block (consolidate.label_examples), in order
    example_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.prompt_version:
            object.__setattr__(self, "prompt_version", version_id(self.text))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @classmethod
    def from_assembled(cls, task: str, kind: str, assembled, *, parent_version: str | None = None,
                       review_ids: Sequence[str] = (), dropped_rule_ids: Sequence[str] | None = None,
                       run_id: str | None = None) -> "PromptVersion":
        """From :class:`pld_spark.prompts.student.AssembledPrompt`."""
        return cls(task=task, kind=kind, text=assembled.text, rule_ids=tuple(assembled.rule_ids),
                   dropped_rule_ids=tuple(assembled.dropped_rule_ids if dropped_rule_ids is None else dropped_rule_ids),
                   review_ids=tuple(review_ids), token_count=int(assembled.token_count),
                   token_budget=int(assembled.token_budget) if assembled.token_budget else None,
                   parent_version=parent_version, run_id=run_id,
                   example_ids=tuple(getattr(assembled, "example_ids", ()) or ()))

    def row(self) -> dict[str, Any]:
        """The row keyed by column name."""
        d = asdict(self)
        d.update(sha256=self.sha256, rule_ids=list(self.rule_ids), dropped_rule_ids=list(self.dropped_rule_ids),
                 review_ids=list(self.review_ids), example_ids=list(self.example_ids),
                 created_at=self.created_at or datetime.now(timezone.utc))
        return d


class PromptObserver(Protocol):
    """Told about prompt versions written and aliases moved (see :func:`add_observer`)."""

    def versions_written(self, task: str, versions: Sequence[PromptVersion]) -> None: ...

    def alias_set(self, task: str, alias: str, version: PromptVersion, by: str, note: str) -> None: ...


def add_observer(store, observer: PromptObserver) -> None:
    """Tell ``observer`` about versions written and aliases set through ``store`` (any PromptVersions on it)."""
    observers = getattr(store, "prompt_observers", None)
    if observers is None:
        observers = []
        store.prompt_observers = observers
    if observer not in observers:
        observers.append(observer)


def _notify(store, event: str, *args: Any) -> None:
    for obs in list(getattr(store, "prompt_observers", None) or ()):
        try:
            getattr(obs, event)(*args)
        except Exception as e:  # noqa: BLE001 - a mirror must never fail the stage that moved the prompt
            log.warning("prompt observer %s failed on %s: %s: %s", type(obs).__name__, event, type(e).__name__, e)


@dataclass(frozen=True)
class PromptRef:
    """What a reference resolved to: the version, its text and kind, and the alias used (if any)."""

    version: str
    text: str
    kind: str | None = None
    alias: str | None = None


class PromptVersions:
    """Prompt versions and aliases of one task in a :class:`~pld_spark.storage.delta.DeltaStore`."""

    def __init__(self, store, task: str):
        self.store = store
        self.task = task

    # ------------------------------------------------------------------ versions
    def write(self, versions: PromptVersion | Sequence[PromptVersion]) -> list[str]:
        """Insert versions (immutable: an existing version id is left as it is); returns their ids."""
        from pld_spark.storage.catalog import PROMPTS

        items = [versions] if isinstance(versions, PromptVersion) else list(versions)
        items = list({v.prompt_version: v for v in items}.values())
        if items:
            rows = [tuple(v.row()[c] for c in PROMPTS.columns) for v in items]
            self.store.merge("prompts", self.store.spark.createDataFrame(rows, PROMPTS.ddl), update=False)
            _notify(self.store, "versions_written", self.task, items)
        return [v.prompt_version for v in items]

    def get(self, version: str) -> PromptVersion | None:
        """The stored version (of any task), or None."""
        from pyspark.sql import functions as F

        if not self.store.exists("prompts"):
            return None
        r = self.store.read("prompts").where(F.col("prompt_version") == version).first()
        if r is None:
            return None
        d = r.asDict()
        d.pop("sha256", None)
        for k in ("rule_ids", "dropped_rule_ids", "review_ids", "example_ids"):
            d[k] = tuple(d.get(k) or ())
        return PromptVersion(**{k: v for k, v in d.items() if k in PromptVersion.__dataclass_fields__})

    # ------------------------------------------------------------------ aliases
    def aliases(self) -> dict[str, str]:
        """alias -> prompt version, the latest promotion of each alias of the task."""
        from pyspark.sql import functions as F

        if not self.store.exists("prompt_aliases"):
            return {}
        rows = (self.store.read("prompt_aliases").where(F.col("task") == self.task)
                .select("alias", "prompt_version", "promoted_at").collect())
        latest: dict[str, tuple] = {}
        for r in sorted(rows, key=lambda r: (r.promoted_at is not None, r.promoted_at or 0)):
            latest[r.alias] = r.prompt_version
        return dict(latest)

    def set_alias(self, alias: str, version: str, by: str, note: str = "") -> None:
        """Point ``alias`` at ``version`` (appends to the history)."""
        from pld_spark.storage.catalog import PROMPT_ALIASES

        if not alias or not alias.replace("_", "").replace("-", "").isalnum():
            raise DataError(f"bad alias name {alias!r} (letters, digits, _ and - only)")
        pv = self.get(version)
        if pv is None or pv.task != self.task:
            raise PromptNotFoundError(f"cannot point alias '{alias}' at '{version}': " + (
                "no such prompt version" if pv is None else f"it belongs to task '{pv.task}', not '{self.task}'"))
        row = (self.task, alias, version, by, note or "", datetime.now(timezone.utc))
        self.store.append("prompt_aliases", self.store.spark.createDataFrame([row], PROMPT_ALIASES.ddl))
        _notify(self.store, "alias_set", self.task, alias, pv, by, note or "")

    # ------------------------------------------------------------------ lookup
    def resolve(self, ref: str | None = None) -> PromptRef:
        """A version id or alias (``None``: the first of :data:`DEFAULT_ORDER` that is set) -> its prompt.

        Raises :class:`PromptNotFoundError` (the one documented message)."""
        aliases = self.aliases()
        if ref:
            pv = self.get(ref)
            if pv is not None and pv.task == self.task:
                return PromptRef(pv.prompt_version, pv.text, pv.kind)
            if ref in aliases:
                return self._by_alias(ref, aliases[ref])
            raise PromptNotFoundError(self._not_found(ref, aliases, other_task=pv.task if pv else None))
        for alias in DEFAULT_ORDER:
            if alias in aliases:
                return self._by_alias(alias, aliases[alias])
        raise PromptNotFoundError(self._not_found(None, aliases))

    def latest_alias(self, names: Sequence[str]) -> str | None:
        """Of ``names``, the alias moved most recently (e.g. resolve starts from ``selected`` only if
        select ran after the last consolidate), or None if none is set."""
        from pyspark.sql import functions as F

        if not self.store.exists("prompt_aliases"):
            return None
        rows = (self.store.read("prompt_aliases").where((F.col("task") == self.task) & F.col("alias").isin(list(names)))
                .select("alias", "promoted_at").collect())
        return max(rows, key=lambda r: r.promoted_at).alias if rows else None

    # ------------------------------------------------------------------ calibration per (version, student)
    def set_calibration(self, version: str, student_model: str, calibration, run_id: str | None = None) -> None:
        """Store the calibration chosen on validation for ``version`` with ``student_model``."""
        from pld_spark.storage.catalog import PROMPT_CALIBRATIONS
        from pld_spark.storage.writers import frame

        row = {"prompt_version": version, "student_model": student_model, "method": calibration.method,
               "calibration": calibration.to_json(), "val_macro_f1": calibration.val_macro_f1.get(calibration.method),
               "n_val": calibration.n_val, "run_id": run_id, "created_at": datetime.now(timezone.utc)}
        self.store.merge("prompt_calibrations", frame(self.store.spark, PROMPT_CALIBRATIONS, [row]), update=True)

    def calibration(self, version: str, student_model: str):
        """The stored :class:`pld_spark.llm.calibrate.Calibration` of (version, student), or None."""
        from pyspark.sql import functions as F

        from pld_spark.llm.calibrate import Calibration

        if not self.store.exists("prompt_calibrations"):
            return None
        r = (self.store.read("prompt_calibrations")
             .where((F.col("prompt_version") == version) & (F.col("student_model") == student_model)).first())
        return Calibration.from_json(r.calibration) if r is not None else None

    def _by_alias(self, alias: str, version: str) -> PromptRef:
        pv = self.get(version)
        if pv is None or pv.task != self.task:
            raise PromptNotFoundError(f"alias '{alias}' of task '{self.task}' points at prompt version '{version}', "
                                      f"which is not a prompt of this task in table 'prompts'")
        return PromptRef(pv.prompt_version, pv.text, pv.kind, alias)

    def _not_found(self, ref: str | None, aliases: dict[str, str], other_task: str | None = None) -> str:
        known = f"aliases set: {sorted(aliases) or 'none'}"
        if ref is None:
            return (f"task '{self.task}' has no prompt to use: none of the aliases {', '.join(DEFAULT_ORDER)} is set "
                    f"({known}); run `pld distill` (or `pld consolidate`), or name one with --prompt-version")
        if other_task:
            return f"prompt version '{ref}' belongs to task '{other_task}', not '{self.task}'"
        return (f"prompt '{ref}' is neither a prompt version of task '{self.task}' nor one of its aliases ({known}); "
                f"list versions with `pld sql query \"SELECT prompt_version, kind, created_at FROM prompts\"`")

    def rules(self, version: str) -> list[dict[str, Any]]:
        """The rules of a version in prompt order (dicts of ``rules`` columns)."""
        from pyspark.sql import functions as F

        pv = self.get(version)
        if pv is None or not pv.rule_ids:
            return []
        got = {r.rule_id: r.asDict() for r in self.store.read("rules")
               .where(F.col("rule_id").isin(list(pv.rule_ids))).collect()}
        return [got[i] for i in pv.rule_ids if i in got]
