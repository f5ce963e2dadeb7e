"""MLflow tracking and the MLflow Prompt Registry, mirrored from our own tables (optional).

The Delta tables (``runs``, ``evaluations``, ``prompts``, ``prompt_aliases``, ``promotions``) are the
record; MLflow is where data teams on Databricks already look. :class:`Tracker` (one per run,
``RunContext.tracker``):

- :meth:`Tracker.log_run`: each ``pld run`` / ``pld evaluate`` / ``pld distill`` becomes an MLflow run
  named by our run id: params (:func:`run_params`: config hash and the main settings), metrics
  (:func:`run_metrics`: macro-F1 with its CI per evaluation condition, the paired comparisons, the
  loop's val macro-F1, the champion/challenger statistic, usage), artifacts (the report, its
  Markdown summary, the result JSON and the config) and tags (run id, prompt versions, git SHA).
- As a prompt observer (:func:`pld_spark.prompts.versions.add_observer`): every prompt version
  written is registered in the Prompt Registry (name :func:`settings` ``prompt_name``; the prompt text
  as the template; our version id, kind, parent and rule ids as version tags), once per version id;
  every alias we move (``clustered``, ``selected``, ``resolved``, ``distilled``, ``live``) is set
  on the same version there.

Locally the store is SQLite under the lakehouse folder (``sqlite:///<lakehouse>/mlflow.db``,
artifacts beside it); on Databricks (``DATABRICKS_RUNTIME_VERSION`` set) ``databricks`` and Unity
Catalog (``databricks-uc``). ``mlflow.enabled: false`` or a missing ``mlflow`` package: nothing is
logged, one INFO line says so. Any MLflow error is a WARNING naming it; it never fails a stage.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

ON_DATABRICKS_ENV = "DATABRICKS_RUNTIME_VERSION"
#: version tags carrying our identity of a registered prompt version
TAG_VERSION, TAG_KIND, TAG_PARENT, TAG_RULES, TAG_RUN = (
    "pld.prompt_version", "pld.kind", "pld.parent_version", "pld.rule_ids", "pld.run_id")
#: evaluation metrics logged per condition (when numeric)
CONDITION_METRICS = ("macro_f1", "ci_low", "ci_high", "accuracy", "val_macro_f1", "n", "errors", "latency_p50",
                     "latency_p95", "prompt_tokens_mean", "prefix_hit_rate")
PAIRED_METRICS = ("delta", "ci_low", "ci_high", "p_a_better", "mcnemar_p")
_TAG_MAX = 4900  # below the registries' tag value limits (5000 characters on Databricks)


def on_databricks() -> bool:
    return bool(os.environ.get(ON_DATABRICKS_ENV))


def settings(cfg, databricks: bool | None = None) -> dict[str, str]:
    """tracking_uri, registry_uri, experiment and prompt_name of a config (pure; ``databricks``
    None: :func:`on_databricks`)."""
    m, task = cfg.mlflow, cfg.task.name
    dbx = on_databricks() if databricks is None else databricks
    if dbx:
        tracking = m.tracking_uri or "databricks"
        registry = m.registry_uri or "databricks-uc"
        experiment = m.experiment or f"/Shared/pld_spark-{task}"
        lh = cfg.lakehouse
        prefix = f"{lh.catalog}.{lh.schema_}." if lh.catalog and lh.schema_ else ""
    else:
        tracking = m.tracking_uri or f"sqlite:///{Path(cfg.lakehouse.path).resolve() / 'mlflow.db'}"
        registry = m.registry_uri or tracking
        experiment = m.experiment or f"pld_spark-{task}"
        prefix = ""
    name = m.prompt_name or prefix + "pld_" + re.sub(r"[^A-Za-z0-9_]", "_", task)
    return {"tracking_uri": tracking, "registry_uri": registry, "experiment": experiment, "prompt_name": name}


def run_params(cfg, command: str = "") -> dict[str, str]:
    """The MLflow params of a run: config hash and the settings that decide cost and quality (pure)."""
    ds, cl = cfg.dataset, cfg.cluster
    p = {"command": command, "task": cfg.task.name, "config_hash": cfg.hash, "dataset.loader": ds.loader,
         "dataset.path": ds.path, "sample.train": ds.sample.train, "sample.val": ds.sample.val,
         "sample.test": ds.sample.test, "teacher.type": cfg.teacher.type, "teacher.model": cfg.teacher.model,
         "student.type": cfg.student.type, "student.model": cfg.student.model,
         "student.calibration": cfg.student.calibration, "input_policy.mode": cfg.input_policy.mode,
         "cluster.embedder": cl.embedder.type, "cluster.clusterer": cl.clusterer.type, "cluster.eps": cl.clusterer.eps,
         "cluster.min_samples": cl.clusterer.min_samples, "cluster.group_by": cl.group_by,
         "consolidate.prompt_token_budget": cfg.consolidate.prompt_token_budget,
         "consolidate.max_rules": cfg.consolidate.max_rules, "select.mode": cfg.select.mode,
         "resolve.max_rounds": cfg.resolve.max_rounds, "resolve.min_delta": cfg.resolve.min_delta,
         "evaluate.bootstrap": cfg.evaluate.bootstrap, "promotion.auto": cfg.promotion.auto,
         "promotion.margin": cfg.promotion.margin, "promotion.max_label_drop": cfg.promotion.max_label_drop,
         "promotion.confidence": cfg.promotion.confidence}
    return {k: "null" if v is None else str(v) for k, v in p.items()}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if v == v else None  # NaN is not a metric


def run_metrics(outputs: Mapping[str, Any], usage: Mapping[str, Any] | None = None) -> dict[str, float]:
    """MLflow metrics of a command's stage outputs (``{"evaluate": result, "resolve": counts, ...}``)
    and its usage (``RunRecord.snapshot()``). Pure."""
    out: dict[str, float] = {}

    def put(name: str, v: Any) -> None:
        if (x := _num(v)) is not None:
            out[name] = x

    ev = outputs.get("evaluate") or {}
    for cond, r in (ev.get("conditions") or {}).items():
        for k in CONDITION_METRICS:
            put(f"{cond}.{k}", r.get(k))
    for key, r in (ev.get("paired") or {}).items():
        for k in PAIRED_METRICS:
            put(f"paired.{key}.{k}", r.get(k))
    put("evaluate.wall_s", ev.get("wall_s"))
    res = outputs.get("resolve") or {}
    for k in ("start_val_macro_f1", "final_val_macro_f1", "rounds", "accepted_rounds"):
        put(f"resolve.{k}", res.get(k))
    ch = res.get("champion") or outputs.get("promotion") or {}
    for k in ("statistic", "ci_low", "ci_high", "worst_label_drop", "challenger_macro_f1", "champion_macro_f1"):
        put(f"promotion.{k}", ch.get(k))
    if ch.get("decision"):
        out["promotion.promoted"] = 1.0 if ch["decision"] == "promoted" else 0.0
    for k in ("tokens_in", "tokens_out", "llm_calls", "cost_usd"):
        put(f"usage.{k}", (usage or {}).get(k))
    return out


def _ids_tag(ids: Sequence[str]) -> str:
    """A JSON list of ids that fits a tag value (the last element says how many were left out)."""
    ids, cut = list(ids), 0
    while len(text := json.dumps(ids[:len(ids) - cut] + ([f"+{cut} more"] if cut else []))) > _TAG_MAX:
        cut += 1
    return text


def _tag(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= _TAG_MAX else s[:_TAG_MAX - 3] + "..."


class Tracker:
    """MLflow for one run (see the module docstring). Built cheaply; ``mlflow`` is imported on first use."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.settings = settings(cfg)
        self._client = None
        self._off: str | None = None if cfg.mlflow.enabled else "mlflow.enabled is false"
        self._said_off = False
        self._registered: dict[str, int] | None = None  # our version id -> registry version number

    # ------------------------------------------------------------------ plumbing
    def client(self):
        """The MlflowClient on the configured URIs, or None (disabled or not installed; said once)."""
        if self._client is None and self._off is None:
            try:
                from mlflow import MlflowClient
            except ImportError:
                self._off = "the mlflow package is not installed (pip install 'pld_spark[mlflow]')"
            else:
                self._client = MlflowClient(tracking_uri=self.settings["tracking_uri"],
                                            registry_uri=self.settings["registry_uri"])
        if self._off is not None and not self._said_off:
            log.info("MLflow tracking off: %s", self._off)
            self._said_off = True
        return self._client

    def _safe(self, what: str, fn, *args: Any) -> Any:
        try:
            return fn(*args) if self.client() is not None else None
        except Exception as e:  # noqa: BLE001 - MLflow mirrors our tables; it never fails a stage
            log.warning("MLflow: could not %s (%s): %s: %s", what, self.settings["tracking_uri"], type(e).__name__,
                        str(e)[:500])
            return None

    # ------------------------------------------------------------------ prompt registry (observer)
    def versions_written(self, task: str, versions: Sequence) -> None:
        for v in versions:
            self._safe(f"register prompt version {v.prompt_version}", self._register, v)

    def alias_set(self, task: str, alias: str, version, by: str, note: str) -> None:
        self._safe(f"set prompt alias {alias} -> {version.prompt_version}", self._alias, alias, version)

    def _known(self) -> dict[str, int]:
        """Our version ids already in the registry (read once, then kept up to date)."""
        if self._registered is None:
            c, name, found, token = self._client, self.settings["prompt_name"], {}, None
            if c.get_prompt(name) is not None:
                while True:
                    page = c.search_prompt_versions(name, max_results=200, page_token=token)
                    for pv in page:
                        ours = (pv.tags or {}).get(TAG_VERSION)
                        if ours:
                            found.setdefault(ours, int(pv.version))
                    token = getattr(page, "token", None)
                    if not token:
                        break
            self._registered = found
        return self._registered

    def _register(self, v) -> int:
        known = self._known()
        if v.prompt_version not in known:
            tags = {TAG_VERSION: v.prompt_version, TAG_KIND: v.kind or "", TAG_PARENT: v.parent_version or "",
                    TAG_RULES: _ids_tag(v.rule_ids), TAG_RUN: v.run_id or "", "pld.task": v.task,
                    "pld.token_count": str(v.token_count)}
            msg = f"{v.kind} {v.prompt_version}" + (f" from {v.parent_version}" if v.parent_version else "")
            pv = self._client.register_prompt(self.settings["prompt_name"], v.text, commit_message=msg, tags=tags)
            known[v.prompt_version] = int(pv.version)
            log.info("MLflow: registered prompt %s version %s (%s)", self.settings["prompt_name"], pv.version,
                     v.prompt_version)
        return known[v.prompt_version]

    def _alias(self, alias: str, v) -> None:
        number = self._register(v)
        self._client.set_prompt_alias(self.settings["prompt_name"], alias, number)

    # ------------------------------------------------------------------ runs
    def log_run(self, ctx, outputs: Mapping[str, Any]) -> str | None:
        """Log the command that just ran as an MLflow run; its MLflow run id (None when off or failed)."""
        return self._safe(f"log run {ctx.run_id}", self._log_run, ctx, outputs)

    def _experiment(self) -> str:
        c, name = self._client, self.settings["experiment"]
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        where = None
        if self.settings["tracking_uri"].startswith("sqlite:///"):  # artifacts beside the local database
            where = (Path(self.settings["tracking_uri"][len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        return c.create_experiment(name, artifact_location=where)

    def _log_run(self, ctx, outputs: Mapping[str, Any]) -> str:
        from mlflow.entities import Metric, Param

        from pld_spark.prompts.versions import PromptVersions

        c, cfg = self._client, ctx.cfg
        aliases = PromptVersions(ctx.store, cfg.task.name).aliases() if ctx.store.exists("prompt_aliases") else {}
        ev = outputs.get("evaluate") or {}
        pld = (ev.get("conditions") or {}).get((ev.get("meta") or {}).get("pld_condition") or "") or {}
        code = ctx._code_version()
        tags = {"pld.run_id": ctx.run_id, "pld.command": ctx.command, "pld.task": cfg.task.name,
                "pld.config_hash": cfg.hash, "pld.code_version": code,
                **{f"pld.alias.{a}": v for a, v in sorted(aliases.items())}}
        version = pld.get("prompt_version") or aliases.get("live") or aliases.get("distilled")
        if version:
            tags["pld.prompt_version"] = version
        if re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", code):
            tags["mlflow.source.git.commit"] = code.removesuffix("-dirty")
        champion = (outputs.get("resolve") or {}).get("champion") or {}
        if champion.get("decision"):
            tags["pld.promotion.decision"] = champion["decision"]
            tags["pld.promotion.reason"] = _tag(champion.get("reason") or "")
        run = c.create_run(self._experiment(), run_name=ctx.run_id, tags=tags)
        rid, now = run.info.run_id, int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in sorted(run_metrics(outputs, ctx.record.snapshot()).items())]
        params = [Param(k, v[:6000]) for k, v in run_params(cfg, ctx.command).items()]
        for i in range(0, len(params), 100):  # log_batch limits: 100 params, 1000 metrics per call
            c.log_batch(rid, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            c.log_batch(rid, metrics=metrics[i:i + 1000])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.yaml").write_text(cfg.text or "", encoding="utf-8")
            (Path(tmp) / "result.json").write_text(json.dumps(outputs, indent=2, sort_keys=True, default=str),
                                                   encoding="utf-8")
            c.log_artifacts(rid, tmp)
        for key in ("report_html", "summary_md"):
            if ev.get(key) and Path(ev[key]).is_file():
                c.log_artifact(rid, ev[key], "report")
        c.set_terminated(rid, "FINISHED")
        ctx.record.add_counts("mlflow", run_id=rid, experiment=self.settings["experiment"])  # in our runs row too
        log.info("MLflow: logged run %s as %s in experiment %s", ctx.run_id, rid, self.settings["experiment"])
        return rid
