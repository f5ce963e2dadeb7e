"""Shared fixtures. One local Spark + Delta session for the whole test session (tier 2);
each test gets its own lakehouse folder, so tests never see each other's tables."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


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
        cfg = load_config(CONF / config, [f"lakehouse.path={tmp_path / 'lakehouse'}", *overrides])
        ctx = RunContext(cfg, command="test")
        ctx.replace(spark=spark, **members)
        return ctx

    return _make
