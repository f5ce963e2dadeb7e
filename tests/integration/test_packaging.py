"""The wheel leaves a Databricks runtime's PySpark alone.

A Databricks runtime ships PySpark (4.0.x on DBR 17.3, 3.5.x on the 15.4/16.4 LTS runtimes) in its
Python environment; installing our wheel there must not make pip replace it. Each case builds the
wheel, makes a fresh venv whose site-packages holds that PySpark version as an installed
distribution (its ``dist-info``: what pip sees of a runtime's PySpark, without the 400 MB of jars),
and asks pip what installing the wheel would do (``pip install --dry-run --report``, resolving
against the real package index). Nothing in the report may be PySpark or delta-spark.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], check=True,
                   capture_output=True, timeout=600)
    (whl,) = out.glob("pld_spark-*.whl")
    return whl


def _venv_with_runtime(root: Path, dists: dict[str, str]) -> Path:
    """A fresh venv holding ``dists`` (name -> version) as installed distributions (dist-info only)."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    py = root / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    for name, version in dists.items():
        info = Path(purelib) / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                       "Summary: as a Databricks runtime provides it\n")
        (info / "INSTALLER").write_text("databricks-runtime\n")
        (info / "RECORD").write_text("")
    return py


def _dry_run(py: Path, wheel: Path, report: Path) -> dict[str, str]:
    out = subprocess.run([str(py), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                          str(wheel)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return _installs(report)


def _installs(report: Path) -> dict[str, str]:
    """name (normalised: lower case, '-') -> version of what pip's report would install."""
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]}


# ------------------------------------------------------------------ the bundle's runtimes
#: What each compute of databricks.yml provides of Spark, as pip sees it: the runtime's PySpark on a
#: job cluster (DBR 15.4 LTS: Spark 3.5.0, 16.4 LTS: 3.5.2, 17.3 LTS: 4.0.0), Databricks Connect on
#: serverless (environment 4: databricks-connect 17, whose `pyspark` module is not a `pyspark` dist).
RUNTIME_DISTS = {
    "15.4.x-scala2.12": {"pyspark": "3.5.0"},
    "16.4.x-scala2.12": {"pyspark": "3.5.2"},
    "17.3.x-scala2.13": {"pyspark": "4.0.0"},
    "17.3.x-gpu-ml-scala2.13": {"pyspark": "4.0.0"},
    "serverless-environment-4": {"databricks-connect": "17.0.1"},
}


def bundle_runtimes() -> list[str]:
    """Every job cluster's spark_version and serverless environment of the wheel's tasks in databricks.yml."""
    import yaml

    jobs = yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))["resources"]["jobs"]
    out = {c["new_cluster"]["spark_version"] for j in jobs.values() for c in j.get("job_clusters") or []}
    out |= {f"serverless-environment-{e['spec']['environment_version']}" for j in jobs.values()
            for e in j.get("environments") or [] if "./dist/*.whl" in e["spec"].get("dependencies", [])}
    return sorted(out)


def test_the_bundle_covers_a_spark_3_5_and_a_spark_4_0_runtime():
    """The resolution test below is what shows that a runtime's PySpark 4.0.x and 3.5.x stay in place
    (one pip resolution per runtime: each takes minutes against the index), so the bundle must keep
    one runtime of each."""
    versions = {RUNTIME_DISTS[r].get("pyspark", "")[:3] for r in bundle_runtimes() if r in RUNTIME_DISTS}
    assert {"3.5", "4.0"} <= versions, versions


@pytest.mark.parametrize("runtime", bundle_runtimes())
def test_the_wheel_resolves_on_every_runtime_of_the_bundle(wheel, tmp_path, runtime):
    """The wheel, as the bundle installs it on each of its computes, resolves on top of that
    compute's pinned Spark distribution and leaves it in place."""
    assert runtime in RUNTIME_DISTS, f"databricks.yml uses {runtime}: add what it provides to RUNTIME_DISTS"
    dists = RUNTIME_DISTS[runtime]
    installs = _dry_run(_venv_with_runtime(tmp_path / "venv", dists), wheel, tmp_path / "report.json")
    assert "pld-spark" in installs and "ray" in installs
    for name in (*dists, "pyspark", "delta-spark", "databricks-connect"):
        assert name not in installs, f"{runtime}: pip would install {name} {installs.get(name)} next to the runtime's"
