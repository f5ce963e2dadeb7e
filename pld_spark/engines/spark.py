"""The one place a SparkSession is built.

Locally: ``local[*]`` with Delta (jars resolved by ``configure_spark_with_delta_pip``) and,
only when asked, Spark NLP's package. On Databricks: the active session is reused.
Nothing here runs at import time.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

SPARK_NLP_PACKAGE_ENV = "PLD_SPARK_NLP_PACKAGE"


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def spark_nlp_package() -> str:
    """Maven coordinate of the Spark NLP jar matching the installed python package."""
    if os.environ.get(SPARK_NLP_PACKAGE_ENV):
        return os.environ[SPARK_NLP_PACKAGE_ENV]
    from importlib.metadata import version

    return f"com.johnsnowlabs.nlp:spark-nlp_2.13:{version('spark-nlp')}"


def session_builder(spark_cfg, with_nlp: bool = False, warehouse_dir: str | None = None):
    """A configured ``SparkSession.Builder`` (not started). Delta is always on."""
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    # Python workers must run this interpreter (a virtualenv's python3 is not on PATH for them).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    b = (
        SparkSession.builder.master(spark_cfg.master)
        .appName(spark_cfg.app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(spark_cfg.shuffle_partitions))
        .config("spark.default.parallelism", str(max(2, os.cpu_count() or 2)))
        .config("spark.ui.enabled", str(spark_cfg.ui).lower())
        .config("spark.driver.memory", spark_cfg.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.python.worker.reuse", "true")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if warehouse_dir:
        b = b.config("spark.sql.warehouse.dir", warehouse_dir)
    for k, v in spark_cfg.conf.items():
        b = b.config(k, v)
    extra = [spark_nlp_package()] if with_nlp else []
    if with_nlp:
        b = b.config("spark.kryoserializer.buffer.max", "1000M").config(
            "spark.serializer", "org.apache.spark.serializer.KryoSerializer")
    return configure_spark_with_delta_pip(b, extra_packages=extra)


def get_spark(spark_cfg, with_nlp: bool = False, warehouse_dir: str | None = None):
    """The active session on Databricks, else a new local one with Delta (and Spark NLP if asked)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        if with_nlp and not _has_nlp(active):
            log.warning("the active Spark session has no Spark NLP jar; 'retrieve' falls back to the regex splitter")
        return active
    spark = session_builder(spark_cfg, with_nlp=with_nlp, warehouse_dir=warehouse_dir).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _has_nlp(spark) -> bool:
    try:
        return "spark-nlp" in (spark.conf.get("spark.jars.packages", "") or "")
    except Exception:  # noqa: BLE001 - conf lookup on a remote session may be refused
        return False
