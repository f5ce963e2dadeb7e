"""databricks.yml checked offline: what `databricks bundle validate` would need a workspace for is
out of reach, but every reference inside the bundle and from the bundle into the code is checked here.

- every ``python_wheel_task`` names this package and an entry point declared in setup.py's
  ``console_scripts`` (read from setup.py's source, not from an installed copy), which resolves to
  an importable function that accepts the task's ``named_parameters``;
- every ``${var.*}`` is a declared variable;
- every task's ``job_cluster_key`` / ``environment_key`` / ``depends_on`` names something its job defines,
  and every wheel task has compute (a job cluster with the wheel as a library, or an environment
  whose dependencies list the wheel);
- the distillation runs on a job cluster of an LTS runtime and on serverless; scoring stays on GPU.

Whether the wheel's dependencies resolve next to each runtime's PySpark is
tests/integration/test_packaging.py (it runs pip).
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VAR_REF = re.compile(r"\$\{var\.([A-Za-z0-9_-]+)\}")
#: Databricks LTS runtimes on Spark 3.5 (15.4: Spark 3.5.0, 16.4: Spark 3.5.2)
LTS_SPARK35 = ("15.4.", "16.4.")
DISTILL_TASKS = ["ingest", "extract", "cluster", "consolidate", "select", "resolve", "evaluate"]


@pytest.fixture(scope="module")
def bundle() -> dict:
    return yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def jobs(bundle) -> dict:
    return bundle["resources"]["jobs"]


def setup_kwargs() -> dict:
    """The literal keyword arguments of the ``setup(...)`` call in setup.py (without running it)."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:  # e.g. find_packages(...), a computed long_description
            continue
    return out


def console_scripts() -> dict[str, str]:
    """``name -> module:function`` of setup.py's console_scripts."""
    return dict(tuple(part.strip() for part in spec.split("=", 1))
                for spec in setup_kwargs()["entry_points"]["console_scripts"])


def wheel_tasks(jobs):
    return [(job_name, t) for job_name, job in jobs.items() for t in job["tasks"] if "python_wheel_task" in t]


def test_setup_py_is_read(bundle):
    scripts = console_scripts()
    assert scripts["pld"] == "pld_spark.cli:main"
    assert setup_kwargs()["name"] == "pld_spark"


def test_every_wheel_task_entry_point_is_declared_and_importable(jobs):
    from pld_spark.cli import build_parser
    from pld_spark.jobs_entry import to_cli_argv

    scripts = console_scripts()
    tasks = wheel_tasks(jobs)
    assert len(tasks) >= 15  # two distillation jobs (7 tasks each) and the scoring job
    for job_name, t in tasks:
        where = f"{job_name}.{t['task_key']}"
        wt = t["python_wheel_task"]
        assert wt["package_name"] == setup_kwargs()["name"], where
        target = scripts.get(wt["entry_point"])
        assert target is not None, f"{where}: entry point {wt['entry_point']!r} is not in setup.py's console_scripts"
        module, _, attr = target.partition(":")
        fn = getattr(importlib.import_module(module), attr, None)
        assert callable(fn), f"{where}: {target} is not an importable function"
        # the named parameters are what the entry point's parser accepts, and make a valid `pld` command line
        command = wt["entry_point"].removeprefix("pld-")
        argv = to_cli_argv(command, [f"--{k}={v}" for k, v in (wt.get("named_parameters") or {}).items()])
        assert argv[0] == command
        build_parser().parse_args(argv)


def test_every_var_reference_is_a_declared_variable(bundle):
    text = (REPO / "databricks.yml").read_text(encoding="utf-8")
    used = set(VAR_REF.findall(text))
    declared = set(bundle.get("variables") or {})
    assert used, "the bundle uses no variables?"
    assert used <= declared, f"undefined variables: {sorted(used - declared)}"
    for name, spec in bundle["variables"].items():
        assert spec.get("description"), f"variable {name} has no description"


def test_every_task_compute_and_dependency_is_defined(jobs):
    for job_name, job in jobs.items():
        clusters = {c["job_cluster_key"]: c for c in job.get("job_clusters") or []}
        envs = {e["environment_key"]: e for e in job.get("environments") or []}
        keys = [t["task_key"] for t in job["tasks"]]
        assert len(keys) == len(set(keys)), f"{job_name}: duplicate task keys"
        for t in job["tasks"]:
            where = f"{job_name}.{t['task_key']}"
            for dep in t.get("depends_on") or []:
                assert dep["task_key"] in keys, f"{where}: depends on unknown task {dep['task_key']}"
            compute = [k for k in ("job_cluster_key", "environment_key", "existing_cluster_id", "new_cluster") if k in t]
            assert len(compute) == 1, f"{where}: needs exactly one kind of compute, has {compute}"
            if "job_cluster_key" in t:
                assert t["job_cluster_key"] in clusters, f"{where}: job cluster {t['job_cluster_key']} is not defined"
                # classic compute: the wheel is a task library
                assert {"whl": "./dist/*.whl"} in (t.get("libraries") or []), f"{where}: the wheel is not a library"
            if "environment_key" in t:
                assert t["environment_key"] in envs, f"{where}: environment {t['environment_key']} is not defined"
                assert "libraries" not in t, f"{where}: serverless tasks take libraries from the environment"
                spec = envs[t["environment_key"]]["spec"]
                assert "./dist/*.whl" in spec["dependencies"], f"{where}: the environment lacks the wheel"
                assert str(spec.get("environment_version", "")).isdigit(), f"{where}: environment_version missing"


def test_the_wheel_artifact_is_what_the_tasks_install(bundle):
    (art,) = bundle["artifacts"].values()
    assert art["type"] == "whl" and "-w dist" in art["build"] and art["path"] == "."


def test_distillation_on_an_lts_job_cluster_and_on_serverless_scoring_on_gpu(jobs):
    def stages(job):
        return [t["task_key"] for t in job["tasks"]]

    classic, serverless = jobs["pld_distill"], jobs["pld_distill_serverless"]
    assert stages(classic) == DISTILL_TASKS and stages(serverless) == DISTILL_TASKS
    # same entry points and parameters in both variants
    for a, b in zip(classic["tasks"], serverless["tasks"]):
        assert a["python_wheel_task"] == b["python_wheel_task"]
        assert a.get("depends_on") == b.get("depends_on")
    (cpu,) = classic["job_clusters"]
    version = cpu["new_cluster"]["spark_version"]
    assert version.startswith(LTS_SPARK35) and "scala2.12" in version, version
    assert "job_clusters" not in serverless and all("environment_key" in t for t in serverless["tasks"])
    (gpu,) = jobs["pld_score"]["job_clusters"]
    assert "gpu" in gpu["new_cluster"]["spark_version"]
    (score,) = jobs["pld_score"]["tasks"]
    assert score["python_wheel_task"]["named_parameters"]["student_type"] == "vllm"
