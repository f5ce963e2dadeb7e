"""Which session get_spark returns where (no JVM: the builder's getOrCreate is recorded)."""
import pytest

from pld_spark.config import SparkConfig
from pld_spark.engines import spark as spark_engine


@pytest.fixture
def builder_calls(monkeypatch):
    from pyspark.sql import SparkSession

    calls = []
    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    monkeypatch.setattr(SparkSession.Builder, "getOrCreate", lambda self: calls.append(dict(self._options)) or "session")
    monkeypatch.setattr(spark_engine, "resolve_packages",
                        lambda *a, **k: pytest.fail("resolved Maven packages on Databricks"))
    return calls


def test_a_wheel_task_on_databricks_uses_the_runtimes_session(builder_calls, monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "client.4.0")  # serverless sets a version too
    assert spark_engine.get_spark(SparkConfig()) == "session"
    # the runtime's builder as is: no master, no Delta jars, no local settings of ours
    assert len(builder_calls) == 1
    assert not any(k in builder_calls[0] for k in ("spark.master", "spark.jars.packages", "spark.sql.extensions"))


def test_spark_remote_wins_over_the_databricks_session(builder_calls, monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
    monkeypatch.setattr(spark_engine, "remote_session", lambda cfg: f"connect:{cfg.remote}")
    assert spark_engine.get_spark(SparkConfig(remote="sc://h:15002")) == "connect:sc://h:15002"
    assert builder_calls == []
