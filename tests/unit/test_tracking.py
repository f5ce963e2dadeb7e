"""MLflow tracking's pure parts (no Spark, no MLflow store): where it logs, what it logs, and that it
is optional. The real store is exercised in tests/spark/test_mlflow.py."""
import logging
import sys
from pathlib import Path

from pld_spark.config import load_config
from pld_spark.prompts.versions import PromptVersion
from pld_spark.tracking import Tracker, run_metrics, run_params, settings
from tests.conftest import CONF


def _cfg(tmp_path, *sets):
    return load_config(CONF / "stereoset.yaml", [f"lakehouse.path={tmp_path / 'lh'}", *sets])


def test_settings_local_databricks_and_overrides(tmp_path):
    cfg = _cfg(tmp_path)
    local = settings(cfg, databricks=False)
    db = (tmp_path / "lh").resolve() / "mlflow.db"
    assert local == {"tracking_uri": f"sqlite:///{db}", "registry_uri": f"sqlite:///{db}",
                     "experiment": "pld_spark-stereoset", "prompt_name": "pld_stereoset"}
    assert settings(cfg, databricks=True) == {"tracking_uri": "databricks", "registry_uri": "databricks-uc",
                                              "experiment": "/Shared/pld_spark-stereoset",
                                              "prompt_name": "pld_stereoset"}
    uc = _cfg(tmp_path, "lakehouse.catalog=main", "lakehouse.schema=pld")
    assert settings(uc, databricks=True)["prompt_name"] == "main.pld.pld_stereoset"
    own = _cfg(tmp_path, "mlflow.tracking_uri=http://mlflow:5000", "mlflow.experiment=weekly",
               "mlflow.prompt_name=bias_prompt")
    assert settings(own, databricks=False) == {"tracking_uri": "http://mlflow:5000",
                                               "registry_uri": "http://mlflow:5000", "experiment": "weekly",
                                               "prompt_name": "bias_prompt"}


def test_params_carry_the_config_hash_and_the_main_settings(tmp_path):
    cfg = _cfg(tmp_path, "dataset.sample.train=40")
    p = run_params(cfg, "run")
    assert p["config_hash"] == cfg.hash and p["command"] == "run" and p["task"] == "stereoset"
    assert p["sample.train"] == "40" and p["teacher.model"] == cfg.teacher.model
    assert p["student.model"] == cfg.student.model and p["cluster.clusterer"] == cfg.cluster.clusterer.type
    assert p["promotion.margin"] == "0.0" and all(isinstance(v, str) for v in p.values())


def test_metrics_per_condition_with_cis_paired_resolve_and_promotion():
    outputs = {
        "evaluate": {"conditions": {
            "zero_shot": {"macro_f1": 0.4, "ci_low": 0.3, "ci_high": 0.5, "accuracy": 0.45, "n": 40,
                          "val_macro_f1": None, "latency_p50": float("nan"), "note": "text"},
            "pld_resolved": {"macro_f1": 0.6, "ci_low": 0.5, "ci_high": 0.7, "n": 40, "errors": 0}},
            "paired": {"pld_vs_zero_shot": {"a": "pld_resolved", "b": "zero_shot", "delta": 0.2, "ci_low": 0.05,
                                            "ci_high": 0.3, "p_a_better": 0.99, "mcnemar_p": 0.01, "n": 40}},
            "wall_s": 12.5},
        "resolve": {"final_val_macro_f1": 0.61, "rounds": 2, "promoted": True,
                    "champion": {"decision": "candidate", "statistic": -0.01, "ci_low": -0.1, "ci_high": 0.08,
                                 "worst_label_drop": 0.2, "reason": "..."}}}
    m = run_metrics(outputs, {"tokens_in": 100, "llm_calls": 3, "cost_usd": 0.0})
    assert m["zero_shot.macro_f1"] == 0.4 and m["zero_shot.ci_low"] == 0.3 and m["zero_shot.ci_high"] == 0.5
    assert "zero_shot.val_macro_f1" not in m and "zero_shot.latency_p50" not in m  # None and NaN are no metrics
    assert m["pld_resolved.n"] == 40 and m["pld_resolved.errors"] == 0
    assert m["paired.pld_vs_zero_shot.delta"] == 0.2 and m["paired.pld_vs_zero_shot.ci_low"] == 0.05
    assert "paired.pld_vs_zero_shot.n" not in m and m["evaluate.wall_s"] == 12.5
    assert m["resolve.final_val_macro_f1"] == 0.61 and m["resolve.rounds"] == 2
    assert m["promotion.ci_low"] == -0.1 and m["promotion.promoted"] == 0.0
    assert m["usage.tokens_in"] == 100 and m["usage.llm_calls"] == 3
    assert all(isinstance(v, float) for v in m.values())


class _Ctx:
    run_id = "r1"


def test_disabled_or_missing_mlflow_is_a_no_op_said_once(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="pld_spark.tracking")
    off = Tracker(_cfg(tmp_path, "mlflow.enabled=false"))
    assert off.log_run(_Ctx(), {}) is None and off.log_run(_Ctx(), {}) is None
    pv = PromptVersion("stereoset", "pld_resolved", "rules")
    off.versions_written("stereoset", [pv])
    off.alias_set("stereoset", "live", pv, "me", "")
    said = [r for r in caplog.records if "MLflow tracking off" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO and "mlflow.enabled is false" in said[0].getMessage()

    caplog.clear()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # the package is not installed: import fails
    missing = Tracker(_cfg(tmp_path))
    assert missing.log_run(_Ctx(), {}) is None and missing.client() is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "the mlflow package is not installed" in said[0]
    assert not Path(tmp_path / "lh" / "mlflow.db").exists()


def test_rule_ids_tag_stays_valid_json_under_the_tag_limit():
    import json

    from pld_spark.tracking import _ids_tag

    assert json.loads(_ids_tag(["r1", "r2"])) == ["r1", "r2"]
    many = [f"r-{i:012d}" for i in range(1000)]
    got = json.loads(_ids_tag(many))
    assert len(_ids_tag(many)) <= 4900 and got[:-1] == many[:len(got) - 1]
    assert got[-1] == f"+{1000 - (len(got) - 1)} more"
