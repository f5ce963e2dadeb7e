"""Shared fixtures. One local Spark + Delta session for the whole test session (tier 2);
each test gets its own lakehouse folder, so tests never see each other's tables."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


# Seconds per module under `make test` in CI (two xdist workers on 2 cores, 2026-11-30, from the
# --durations output; setup included), heaviest first. Each module is one unit of work (its module
# fixtures are built once) and the heaviest start first, so no long module is left for the end.
# Modules not listed are lighter and keep collection order after these.
HEAVY_MODULES = {
    "tests/integration/test_reliability_kills.py": 820,  # 887 s before the buffered student cache
    "tests/integration/test_jobs_sql_notebooks.py": 470,  # shares the Ray unit with test_ray_score (~230)
    "tests/integration/test_spark_connect.py": 560,
    "tests/integration/test_reliability_concurrency.py": 370,
    "tests/integration/test_reliability_faults.py": 364,
    "tests/integration/test_reliability_secrets.py": 314,
    "tests/integration/test_distill_real_model.py": 300,
    "tests/integration/test_ray_score.py": 230,
    "tests/integration/test_incremental_distill.py": 160,
    "tests/spark/test_ingest.py": 150,
    "tests/integration/test_reliability_bad_input.py": 140,
    "tests/integration/test_evaluate_real_model.py": 110,
    "tests/integration/test_extract_server.py": 100,
    "tests/integration/test_reliability_injection.py": 65,
    "tests/integration/test_select_real_model.py": 150,  # measured alone: 140-210 s
    "tests/integration/test_score_real_model.py": 50,
}
# Modules that start a real local Ray cluster form one unit, so two clusters never compete.
RAY_MODULES = {"tests/integration/test_ray_score.py", "tests/integration/test_jobs_sql_notebooks.py"}


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _unit(nodeid: str) -> str:
    m = _module(nodeid)
    return "ray" if m in RAY_MODULES else m


def pytest_collection_modifyitems(config, items):
    """Heaviest modules first (units are handed out in this order, see --no-loadscope-reorder);
    the Ray modules next to each other, so their unit keeps module fixtures built once."""
    first = {u: i for i, u in enumerate(dict.fromkeys(_unit(it.nodeid) for it in items))}
    weight: dict[str, int] = {}
    for m in dict.fromkeys(_module(it.nodeid) for it in items):
        weight[_unit(m)] = weight.get(_unit(m), 0) + HEAVY_MODULES.get(m, 0)
    items.sort(key=lambda it: (-weight[_unit(it.nodeid)], first[_unit(it.nodeid)]))


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pragma: no cover - xdist is in the dev extra; without it tests run serially
    pass
else:
    class _ModuleScheduling(LoadScopeScheduling):
        """One unit of work per test module (the Ray modules share one). Not `--dist loadgroup`
        with xdist_group marks: on pytest 9.2 xdist 3.8 can no longer tag node ids with the group
        (pytest-dev/pytest-xdist#1386), so every test silently became its own unit."""

        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        return _ModuleScheduling(config, log)


def _want_nlp() -> bool:
    # Spark NLP's jar for Spark 4 is not on Maven Central (see README); opt in where it resolves.
    return os.environ.get("PLD_TEST_SPARK_NLP", "0") == "1"


@pytest.fixture(scope="session")
def spark():
    from pld_spark.config import SparkConfig
    from pld_spark.engines.spark import get_spark

    s = get_spark(SparkConfig(master="local[2]", shuffle_partitions=2, ui=False, driver_memory="3g"),
                  with_nlp=_want_nlp())
    yield s
    s.stop()


@pytest.fixture
def make_ctx(spark, tmp_path):
    """Build a RunContext on the shared session with a private lakehouse folder."""
    from pld_spark.config import load_config
    from pld_spark.context import RunContext

    def _make(config: str = "stereoset.yaml", overrides: list[str] | tuple[str, ...] = (), **members):
        # MLflow off unless a test turns it on (tests/spark/test_mlflow.py): a fresh SQLite store costs
        # 5-10 s of schema migrations per lakehouse, and the Delta tables are what these tests check
        cfg = load_config(CONF / config, [f"lakehouse.path={tmp_path / 'lakehouse'}", "mlflow.enabled=false",
                                          *overrides])
        ctx = RunContext(cfg, command="test")
        ctx.replace(spark=spark, **members)
        return ctx

    return _make
