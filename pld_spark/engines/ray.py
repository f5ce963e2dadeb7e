"""Ray: runtime start/stop and the actor-pool map used for bulk scoring.

Nothing here touches Ray at import time. :func:`ray_runtime` is a context manager that
connects to what is there, or starts what is needed, and stops only what it started:

- already connected (``ray.is_initialized()``): used as is, left running;
- ``score.ray.setup_on_spark`` (Databricks): ``ray.util.spark.setup_ray_cluster`` starts Ray
  on the Spark cluster's workers; shut down at exit. It needs a classic session (it calls
  ``sparkContext``): under Spark Connect (``spark.remote``, serverless, standard access mode)
  :func:`check_spark_session` refuses it with a :class:`ConfigError` before anything runs;
- ``score.ray.address`` (or ``RAY_ADDRESS``): connect, and disconnect at exit;
- otherwise a local Ray with ``num_cpus`` logical CPUs, no dashboard, worker logs kept out of
  the driver's output; shut down at exit. It does not use Spark at all, so it also works under
  Spark Connect, as long as the Parquet handoff folder (``score.handoff_dir``) is a path both the
  Spark server and this process can read.

:func:`map_parquet_with_actors` reads a Parquet folder with Ray Data, runs a callable class
in a fixed pool of actors (``map_batches``; the class's ``__init__`` builds the model once
per actor) and writes the results as Parquet.
"""
from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

from pld_spark.errors import ConfigError, StageError

log = logging.getLogger(__name__)

#: what to do instead of Ray on Spark when the session is Spark Connect
CONNECT_ALTERNATIVES = (
    "set score.ray.setup_on_spark=false to run a local Ray in this process (it needs no Spark; set "
    "score.handoff_dir to storage the Spark server can also reach), or score.ray.address=<ray://host:10001> for a "
    "Ray cluster started elsewhere, or score.engine=local (and evaluate.engine=local) to score in-process; Ray on "
    "Spark itself needs a classic cluster (Databricks: dedicated access mode, not serverless or standard)")


def check_spark_session(ray_cfg, spark) -> None:
    """Refuse ``score.ray.setup_on_spark`` on a Spark Connect session, early and by name.

    ``ray.util.spark.setup_ray_cluster`` starts Ray's nodes as a Spark job through
    ``spark.sparkContext`` (barrier RDD, job groups), which a Connect client does not have: it
    would fail deep inside Ray with ``JVM_ATTRIBUTE_NOT_SUPPORTED``. Raises :class:`ConfigError`
    naming the setting and the alternatives; a no-op otherwise (and for ``spark=None``)."""
    if spark is None or not ray_cfg.setup_on_spark:
        return
    from pld_spark.engines.spark import is_remote

    if is_remote(spark):
        raise ConfigError(
            "score.ray.setup_on_spark=true cannot run under Spark Connect (spark.remote, Databricks serverless or "
            "standard access mode): ray.util.spark.setup_ray_cluster needs sparkContext, which a Connect session "
            f"does not have. Instead: {CONNECT_ALTERNATIVES}.")


#: seconds a local Ray head waits for its GCS server to come up. Ray's own default is 30 s, which
#: a 2-core node already busy with llama.cpp (another Spark task, another test worker) can overrun;
#: the user's ``RAY_gcs_server_port_wait_time_s`` wins when set.
GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
GCS_WAIT_DEFAULT_S = 180


def gcs_wait_seconds(environ) -> int:
    """The GCS start-up wait for a local Ray: the user's ``RAY_gcs_server_port_wait_time_s`` if set
    (it must be a whole number of seconds), else :data:`GCS_WAIT_DEFAULT_S`."""
    raw = environ.get(GCS_WAIT_ENV)
    if raw is None or raw == "":
        return GCS_WAIT_DEFAULT_S
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{GCS_WAIT_ENV}={raw!r} must be a whole number of seconds") from None


def local_num_cpus(ray_cfg) -> int:
    """Logical CPUs for a local Ray: the actors' share plus one for read/write tasks, so the
    pool never starves Ray Data's own tasks (logical CPUs are bookkeeping, not cores)."""
    return int(math.ceil(ray_cfg.num_actors * ray_cfg.num_cpus_per_actor)) + 1


@contextmanager
def ray_runtime(ray_cfg, spark=None) -> Iterator[dict[str, Any]]:
    """Make a Ray runtime available for the ``with`` block; see the module docstring.

    ``spark``: the run's session, checked with :func:`check_spark_session` before Ray is touched.
    Yields ``{"mode": "existing" | "spark" | "address" | "local", "started": bool}``."""
    check_spark_session(ray_cfg, spark)
    import ray

    if ray.is_initialized():
        yield {"mode": "existing", "started": False}
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    t0 = time.perf_counter()
    if ray_cfg.setup_on_spark:
        from ray.util.spark import MAX_NUM_WORKER_NODES, setup_ray_cluster, shutdown_ray_cluster

        kwargs: dict[str, Any] = {
            "max_worker_nodes": ray_cfg.spark_max_worker_nodes if ray_cfg.spark_max_worker_nodes is not None
            else MAX_NUM_WORKER_NODES}
        if ray_cfg.spark_num_cpus_worker_node is not None:
            kwargs["num_cpus_worker_node"] = ray_cfg.spark_num_cpus_worker_node
        if ray_cfg.num_gpus_per_actor:
            kwargs["num_gpus_worker_node"] = max(1, int(math.ceil(ray_cfg.num_gpus_per_actor)))
        cluster_address, _ = setup_ray_cluster(**kwargs)
        try:
            ray.init(address=cluster_address, log_to_driver=False)
            log.info("Ray on Spark started at %s in %.1fs", cluster_address, time.perf_counter() - t0)
            yield {"mode": "spark", "started": True, "address": cluster_address}
        finally:
            ray.shutdown()
            shutdown_ray_cluster()
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        try:
            log.info("connected to Ray at %s", address)
            yield {"mode": "address", "started": False, "address": address}
        finally:
            ray.shutdown()  # disconnects this driver; the cluster keeps running
        return
    num_cpus = local_num_cpus(ray_cfg)
    wait_s = gcs_wait_seconds(os.environ)
    os.environ[GCS_WAIT_ENV] = str(wait_s)  # read by ray.init when it starts the head
    try:
        ray.init(num_cpus=num_cpus, num_gpus=int(math.ceil(ray_cfg.num_actors * ray_cfg.num_gpus_per_actor)) or None,
                 include_dashboard=False, log_to_driver=False)
    except RuntimeError as e:
        if "Timed out waiting for file" not in str(e):
            raise
        raise StageError(
            f"local Ray did not start: its GCS server was not up after {wait_s} s ({e}). The node is probably "
            f"overloaded; raise {GCS_WAIT_ENV}, or point score.ray.address at a running Ray cluster") from None
    try:
        log.info("local Ray started with %d logical CPUs in %.1fs", num_cpus, time.perf_counter() - t0)
        yield {"mode": "local", "started": True, "num_cpus": num_cpus}
    finally:
        ray.shutdown()


def map_parquet_with_actors(input_path: str, output_path: str, actor_cls, constructor_kwargs: dict[str, Any],
                            ray_cfg, n_rows: int) -> dict[str, Any]:
    """Read ``input_path`` (Parquet), run ``actor_cls`` over it in a pool of
    ``ray_cfg.num_actors`` actors, write the results to ``output_path`` (Parquet).

    ``actor_cls(**constructor_kwargs)`` is built once per actor; ``__call__(batch)`` gets a
    pandas frame of up to ``ray_cfg.batch_size`` rows. The data is split into blocks of about
    one batch each so every actor gets work. Needs a Ray runtime (see :func:`ray_runtime`).
    """
    import ray

    t0 = time.perf_counter()
    ds = ray.data.read_parquet(input_path)
    n_blocks = max(ray_cfg.num_actors, min(4096, math.ceil(max(1, n_rows) / ray_cfg.batch_size)))
    ds = ds.repartition(n_blocks)
    remote: dict[str, Any] = {"num_cpus": ray_cfg.num_cpus_per_actor}
    if ray_cfg.num_gpus_per_actor:
        remote["num_gpus"] = ray_cfg.num_gpus_per_actor
    out = ds.map_batches(actor_cls, fn_constructor_kwargs=constructor_kwargs, batch_size=ray_cfg.batch_size,
                         batch_format="pandas", concurrency=ray_cfg.num_actors, **remote)
    out.write_parquet(output_path)
    wall = time.perf_counter() - t0
    return {"rows": n_rows, "blocks": n_blocks, "actors": ray_cfg.num_actors, "wall_s": round(wall, 3),
            "rows_per_s": round(n_rows / wall, 3) if wall > 0 else None}


def map_frame_with_actors(spark, df, n_rows: int, *, handoff, actor_cls, constructor_kwargs: dict[str, Any],
                          ray_cfg, out_ddl: str):
    """Spark frame -> Parquet handoff -> Ray actor pool -> Spark frame with ``out_ddl``.

    Returns (results frame, Ray stats); the caller removes ``handoff`` once the results are stored.
    A failed actor pool (an actor that died, e.g. its model crashed) is re-raised as is: the
    caller names the stage and the model (:mod:`pld_spark.engines.crash`)."""
    from pld_spark.engines import handoff as ho

    ho.write_input(df, handoff, num_files=max(ray_cfg.num_actors, min(64, math.ceil(n_rows / (ray_cfg.batch_size * 4)))))
    stats = map_parquet_with_actors(ho.ray_path(handoff.input_path), ho.ray_path(handoff.output_path), actor_cls,
                                    constructor_kwargs, ray_cfg, n_rows)
    return ho.read_output(spark, handoff, out_ddl), stats
