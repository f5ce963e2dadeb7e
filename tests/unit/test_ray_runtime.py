"""ray_runtime start/stop decisions, with Ray's entry points recorded (no Ray cluster, no Spark, no model).

The real local start is covered by tests/integration/test_ray_score.py; Ray on Spark needs a
Databricks or standalone Spark cluster, so its call sequence is checked here."""
import pytest

from pld_spark.config import RayConfig
from pld_spark.engines import ray as ray_engine


@pytest.fixture
def calls(monkeypatch):
    import ray
    import ray.util.spark as ray_spark

    log = []
    state = {"up": False}

    def init(**kw):
        log.append(("init", kw))
        state["up"] = True

    def shutdown():
        log.append(("shutdown", {}))
        state["up"] = False

    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    monkeypatch.setattr(ray_spark, "setup_ray_cluster",
                        lambda **kw: log.append(("setup_ray_cluster", kw)) or ("10.0.0.1:6379", "ray://10.0.0.1:10001"))
    monkeypatch.setattr(ray_spark, "shutdown_ray_cluster", lambda: log.append(("shutdown_ray_cluster", {})))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return log, state


def test_local_start_and_stop(calls):
    log, _ = calls
    with ray_engine.ray_runtime(RayConfig(num_actors=2, num_cpus_per_actor=1.0)) as rt:
        assert rt == {"mode": "local", "started": True, "num_cpus": 3}
    assert [c[0] for c in log] == ["init", "shutdown"]
    kw = log[0][1]
    assert kw["num_cpus"] == 3 and kw["include_dashboard"] is False and kw["log_to_driver"] is False
    assert "address" not in kw


def test_existing_runtime_is_left_running(calls):
    log, state = calls
    state["up"] = True
    with ray_engine.ray_runtime(RayConfig()) as rt:
        assert rt["mode"] == "existing"
    assert log == []


def test_address_connects_and_disconnects(calls, monkeypatch):
    log, _ = calls
    with ray_engine.ray_runtime(RayConfig(address="ray://head:10001")) as rt:
        assert rt["mode"] == "address"
    assert log == [("init", {"address": "ray://head:10001", "log_to_driver": False}), ("shutdown", {})]
    log.clear()
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with ray_engine.ray_runtime(RayConfig()) as rt:
        assert rt["mode"] == "address"
    assert log[0] == ("init", {"address": "auto", "log_to_driver": False})


def test_ray_on_spark_setup_and_teardown_even_on_error(calls):
    log, _ = calls
    cfg = RayConfig(setup_on_spark=True, spark_max_worker_nodes=4, spark_num_cpus_worker_node=8, num_gpus_per_actor=0.5)
    with pytest.raises(RuntimeError, match="boom"):
        with ray_engine.ray_runtime(cfg) as rt:
            assert rt["mode"] == "spark" and rt["address"] == "10.0.0.1:6379"
            raise RuntimeError("boom")
    assert [c[0] for c in log] == ["setup_ray_cluster", "init", "shutdown", "shutdown_ray_cluster"]
    assert log[0][1] == {"max_worker_nodes": 4, "num_cpus_worker_node": 8, "num_gpus_worker_node": 1}
    assert log[1][1]["address"] == "10.0.0.1:6379"


def test_default_worker_nodes_is_all_of_the_cluster(calls):
    from ray.util.spark import MAX_NUM_WORKER_NODES

    log, _ = calls
    with ray_engine.ray_runtime(RayConfig(setup_on_spark=True)):
        pass
    assert log[0][1] == {"max_worker_nodes": MAX_NUM_WORKER_NODES}


# --------------------------------------------------------------- Ray on Spark under Spark Connect
# A Connect client has no sparkContext, which ray.util.spark.setup_ray_cluster needs. The sessions
# below are real PySpark session classes, uninitialised (no server, no JVM): `is_remote` decides
# by the session's class, exactly as it does for a live session.
@pytest.fixture
def connect_session():
    connect = pytest.importorskip("pyspark.sql.connect.session")
    return object.__new__(connect.SparkSession)


@pytest.fixture
def classic_session():
    from pyspark.sql import SparkSession

    return object.__new__(SparkSession)


class _Untouchable:
    """A store that fails the test on any use: the check must come before the run touches Delta."""

    def __getattr__(self, name):
        raise AssertionError(f"the store was used ({name}) before the Ray on Spark check")


def test_ray_on_spark_under_connect_is_a_config_error_before_ray_starts(calls, connect_session):
    from pld_spark.errors import ConfigError

    log, _ = calls
    with pytest.raises(ConfigError) as e:
        with ray_engine.ray_runtime(RayConfig(setup_on_spark=True), connect_session):
            pass
    msg = str(e.value)
    # names the setting, why, and each way out
    assert "score.ray.setup_on_spark" in msg and "sparkContext" in msg
    assert "setup_on_spark=false" in msg and "score.ray.address" in msg and "score.engine=local" in msg
    assert log == []  # neither setup_ray_cluster nor ray.init was called


def test_local_ray_and_classic_ray_on_spark_are_allowed(calls, connect_session, classic_session):
    log, _ = calls
    # local Ray needs no Spark: allowed under Connect
    with ray_engine.ray_runtime(RayConfig(), connect_session) as rt:
        assert rt["mode"] == "local"
    # a classic session keeps Ray on Spark
    with ray_engine.ray_runtime(RayConfig(setup_on_spark=True), classic_session) as rt:
        assert rt["mode"] == "spark"
    assert [c[0] for c in log] == ["init", "shutdown", "setup_ray_cluster", "init", "shutdown", "shutdown_ray_cluster"]


def _ctx(*sets):
    from pld_spark.config import load_config
    from pld_spark.context import RunContext

    cfg = load_config("conf/stereoset.yaml", ["score.ray.setup_on_spark=true", *sets])
    ctx = RunContext(cfg, "run")
    ctx.heartbeat_s = None
    return ctx


def test_run_fails_at_start_under_connect_with_ray_on_spark(connect_session, classic_session):
    from pld_spark.errors import ConfigError

    ctx = _ctx().replace(spark=connect_session, store=_Untouchable())
    with pytest.raises(ConfigError, match=r"score\.ray\.setup_on_spark=true cannot run under Spark Connect"):
        ctx.start()  # before the run's first row: the store is never touched
    # Ray not used at all (both engines local): the setting is moot, nothing to refuse
    _ctx("score.engine=local", "evaluate.engine=local").replace(spark=connect_session).check_compute()
    _ctx().replace(spark=classic_session).check_compute()


def test_score_stage_refuses_ray_on_spark_under_connect_before_reading(connect_session):
    from pld_spark.errors import ConfigError
    from pld_spark.pipeline import score

    ctx = _ctx("score.engine=ray").replace(spark=connect_session, store=_Untouchable())
    with pytest.raises(ConfigError, match=r"score\.ray\.setup_on_spark"):
        score.run(ctx)


def test_local_start_waits_longer_for_gcs_than_rays_30_s_unless_the_user_set_it(calls, monkeypatch):
    """A 2-core node busy with llama.cpp overran Ray's 30 s GCS wait in CI (RuntimeError from ray.init)."""
    monkeypatch.setenv(ray_engine.GCS_WAIT_ENV, "")  # unset for the run below, restored after the test
    assert ray_engine.gcs_wait_seconds({}) == ray_engine.GCS_WAIT_DEFAULT_S > 30
    assert ray_engine.gcs_wait_seconds({ray_engine.GCS_WAIT_ENV: "45"}) == 45
    with pytest.raises(ray_engine.ConfigError, match=ray_engine.GCS_WAIT_ENV):
        ray_engine.gcs_wait_seconds({ray_engine.GCS_WAIT_ENV: "soon"})
    with ray_engine.ray_runtime(RayConfig(num_actors=1)):
        import os
        assert os.environ[ray_engine.GCS_WAIT_ENV] == str(ray_engine.GCS_WAIT_DEFAULT_S)


def test_local_start_timeout_is_one_clear_error(calls, monkeypatch):
    import ray

    def init(**kw):
        raise RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_abc")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setenv(ray_engine.GCS_WAIT_ENV, "5")
    with pytest.raises(ray_engine.StageError, match="not up after 5 s.*RAY_gcs_server_port_wait_time_s"):
        with ray_engine.ray_runtime(RayConfig(num_actors=1)):
            pass
