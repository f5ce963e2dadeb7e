"""The one place a SparkSession is built.

Locally: ``local[*]`` with Delta (jars resolved by ``configure_spark_with_delta_pip``) and,
only when asked, Spark NLP's package. On Databricks: the active session is reused.
Nothing here runs at import time.

Maven jars are resolved before the session starts, by :func:`resolve_packages` (``pld setup``,
run by ``make install``): ``spark-submit --packages`` on an empty script, retried with backoff, so
one transient download failure (seen: ``jsr305-3.0.2.jar``) does not fail a run, and a final
failure names the artifact and how to run without Maven (``spark.jars``, an Ivy settings file or
a mirror) instead of PySpark's ``JAVA_GATEWAY_EXITED``. Success is remembered per package set, so
later sessions start without the extra JVM.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from pld_spark.errors import SparkSetupError

log = logging.getLogger(__name__)

SPARK_NLP_PACKAGE_ENV = "PLD_SPARK_NLP_PACKAGE"
#: Spark NLP's transitive jars for its deep-learning annotators, served only by John Snow Labs'
#: repository (not Maven Central). The rule-based SentenceDetector we use needs none of them.
SPARK_NLP_EXCLUDES = ("com.johnsnowlabs.nlp:tensorflow-cpu_2.12", "com.johnsnowlabs.nlp:tensorflow-cpu_2.13",
                      "com.johnsnowlabs.nlp:jsl-llamacpp-cpu_2.12", "com.johnsnowlabs.nlp:jsl-llamacpp-cpu_2.13",
                      "com.johnsnowlabs.nlp:jsl-openvino-cpu_2.12", "com.johnsnowlabs.nlp:jsl-openvino-cpu_2.13")


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def spark_nlp_package() -> str:
    """Maven coordinate of the Spark NLP jar matching the installed python package and Spark's
    Scala version (Spark 3.5: 2.12, Spark 4: 2.13). Only ``spark-nlp_2.12:5.5.3`` (Spark 3.5) is
    on Maven Central; set ``PLD_SPARK_NLP_PACKAGE`` to use another repository's coordinate."""
    if os.environ.get(SPARK_NLP_PACKAGE_ENV):
        return os.environ[SPARK_NLP_PACKAGE_ENV]
    from importlib.metadata import version

    import pyspark

    scala = "2.12" if pyspark.__version__.startswith("3.") else "2.13"
    return f"com.johnsnowlabs.nlp:spark-nlp_{scala}:{version('spark-nlp')}"


def session_builder(spark_cfg, with_nlp: bool = False, warehouse_dir: str | None = None):
    """A configured ``SparkSession.Builder`` (not started). Delta is always on."""
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
        # a crashed Python worker's error then carries "Fatal Python error: <signal>" (engines/crash.py)
        .config("spark.python.worker.faulthandler.enabled", "true")
    )
    if warehouse_dir:
        b = b.config("spark.sql.warehouse.dir", warehouse_dir)
    for k, v in spark_cfg.conf.items():
        b = b.config(k, v)
    if with_nlp:
        b = (b.config("spark.kryoserializer.buffer.max", "1000M")
             .config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
             .config("spark.jars.excludes", ",".join(SPARK_NLP_EXCLUDES)))
    if spark_cfg.jars:  # pre-downloaded jars: no Maven resolution at all
        return b.config("spark.jars", ",".join(spark_cfg.jars))
    return b.config("spark.jars.packages", maven_packages(with_nlp))


def maven_packages(with_nlp: bool = False) -> str:
    """The ``spark.jars.packages`` value: Delta's jar for the installed delta-spark (from its own
    pip helper, which knows the artifact name for each Spark/Delta pair), plus Spark NLP's when asked."""
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    extra = [spark_nlp_package()] if with_nlp else []
    # a fresh, unstarted builder: its options are its own (Builder.__init__ makes the dict)
    probe = configure_spark_with_delta_pip(SparkSession.Builder(), extra_packages=extra)
    return probe._options["spark.jars.packages"]


IVY_KEYS = ("spark.jars.ivy", "spark.jars.ivySettings", "spark.jars.repositories")
FAILED_ARTIFACT = re.compile(r"(?:download failed|unresolved dependency|module not found|SERVER ERROR[^:\n]*):[ \t]*"
                             r"([\w.\-]+#[\w.\-]+(?:;[\w.\-]+)?(?:![\w.\-]+)?)")


def _marker(packages: str, conf: dict[str, str]) -> Path:
    key = json.dumps([packages, {k: conf.get(k) for k in IVY_KEYS}, os.path.expanduser("~")], sort_keys=True)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pld_spark"
    return root / f"spark-packages-{hashlib.sha256(key.encode()).hexdigest()[:16]}.ok"


def failed_artifacts(output: str) -> list[str]:
    """Maven/Ivy artifacts an Ivy resolution log says it could not get (deduplicated, in order)."""
    return list(dict.fromkeys(m.group(1) for m in FAILED_ARTIFACT.finditer(output)))


def resolve_packages(spark_cfg, with_nlp: bool = False, *, attempts: int = 4, backoff_s: float = 5.0,
                     force: bool = False, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                     sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Resolve (download) the session's Maven packages once, with retries; returns them.

    Nothing to do on Databricks, for a remote session, or with ``spark.jars`` set. Raises
    :class:`SparkSetupError` naming the failed artifacts after ``attempts`` tries."""
    if on_databricks() or getattr(spark_cfg, "jars", None) or getattr(spark_cfg, "remote", None):
        return []
    packages = maven_packages(with_nlp)
    marker = _marker(packages + ("|nlp-excludes" if with_nlp else ""), spark_cfg.conf)
    if marker.exists() and not force:
        return packages.split(",")
    import pyspark

    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    confs = [a for k in IVY_KEYS if spark_cfg.conf.get(k) for a in ("--conf", f"{k}={spark_cfg.conf[k]}")]
    if with_nlp:
        confs += ["--exclude-packages", ",".join(SPARK_NLP_EXCLUDES)]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write("# pld_spark: resolves --packages, then exits\n")
        app = f.name
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    out = ""
    try:
        for attempt in range(1, attempts + 1):
            log.info("resolving Spark packages %s (attempt %d/%d)", packages, attempt, attempts)
            try:
                proc = run([str(submit), "--master", "local[1]", "--packages", packages, *confs, app],
                           capture_output=True, text=True, timeout=900, env=env)
                out = (proc.stdout or "") + (proc.stderr or "")
                ok = proc.returncode == 0
            except (OSError, subprocess.TimeoutExpired) as e:
                out, ok = f"{type(e).__name__}: {e}", False
            if ok:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(packages + "\n")
                return packages.split(",")
            if attempt < attempts:
                wait = backoff_s * 2 ** (attempt - 1)
                log.warning("Spark package resolution failed (attempt %d/%d; %s); retrying in %.0fs", attempt,
                            attempts, ", ".join(failed_artifacts(out)) or "see log", wait)
                sleep(wait)
    finally:
        os.unlink(app)
    bad = failed_artifacts(out)
    tail = "\n".join(out.strip().splitlines()[-12:])
    raise SparkSetupError(
        f"Spark could not resolve its Maven packages ({packages}) after {attempts} attempts; failed: "
        f"{', '.join(bad) if bad else 'see the log below'}. This is a network or repository problem (Maven Central "
        f"unreachable or flaky), not a pld_spark bug: run the command again, or, without Maven access, download the "
        f"jars once elsewhere and set `spark.jars: [/path/delta-spark.jar, /path/delta-storage.jar, ...]` in the config, "
        f"or point Ivy at a mirror with `spark.conf: {{spark.jars.ivySettings: /path/ivysettings.xml}}` or "
        f"`{{spark.jars.repositories: https://my-mirror/maven2}}`.\nLast output:\n{tail}")


def is_remote(spark) -> bool:
    """A Spark Connect session (no sparkContext, no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def conf_value(spark, key: str, default: str | None = None) -> str | None:
    """A Spark conf value, or ``default`` (a remote session may refuse to read some keys)."""
    try:
        v = spark.conf.get(key, None)
    except Exception:  # noqa: BLE001 - e.g. a static conf a Connect server will not show
        v = None
    return v if v not in (None, "") else default


def master_of(spark, spark_cfg) -> str:
    """The session's master (Connect-safe): its ``spark.master`` conf, else the configured one."""
    if not is_remote(spark):
        return str(spark.sparkContext.master)
    return conf_value(spark, "spark.master", spark_cfg.master if spark_cfg is not None else "") or ""


def default_parallelism(spark, spark_cfg=None) -> int:
    """Tasks that run at once (Connect-safe): ``spark.default.parallelism``, else the classic
    context's, else the ``local[N]`` of the master, else 2."""
    v = conf_value(spark, "spark.default.parallelism")
    if v and v.isdigit():
        return int(v)
    if not is_remote(spark):
        return int(spark.sparkContext.defaultParallelism)
    m = re.fullmatch(r"local\[(\d+|\*)(?:,\d+)?\]", master_of(spark, spark_cfg))
    if m:
        return (os.cpu_count() or 2) if m.group(1) == "*" else int(m.group(1))
    return 2


def remote_session(spark_cfg):
    """A Spark Connect session for ``spark.remote`` (``sc://...`` or ``databricks``)."""
    if spark_cfg.remote == "databricks":
        try:
            from databricks.connect import DatabricksSession
        except ImportError:
            raise SparkSetupError("spark.remote=databricks needs the databricks-connect package "
                                  "(pip install databricks-connect matching your runtime)") from None
        return DatabricksSession.builder.getOrCreate()
    from pyspark.sql import SparkSession

    b = SparkSession.builder.remote(spark_cfg.remote)
    for k, v in spark_cfg.conf.items():
        b = b.config(k, v)
    try:
        spark = b.getOrCreate()
    except Exception as e:  # noqa: BLE001 - gRPC/connect errors come in several classes
        raise SparkSetupError(f"could not connect to the Spark Connect server {spark_cfg.remote}: "
                              f"{type(e).__name__}: {e}") from e
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.shuffle.partitions", str(spark_cfg.shuffle_partitions))
    return spark


def get_spark(spark_cfg, with_nlp: bool = False, warehouse_dir: str | None = None):
    """A Spark Connect session when ``spark.remote`` is set; else the active session, or on
    Databricks the runtime's own (``builder.getOrCreate()``: classic or Connect), else a new local
    one with Delta (and Spark NLP if asked)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkSetupError("PySpark is not installed: install pld_spark[local] for a local Spark, or run on a "
                              "Databricks runtime (which provides it)") from None

    if spark_cfg.remote:
        return remote_session(spark_cfg)
    active = SparkSession.getActiveSession()
    if active is None and on_databricks():
        # a wheel task on Databricks gets its session from the runtime's builder: classic on a job
        # cluster, Spark Connect on serverless or standard access mode (no local JVM, no Maven)
        return SparkSession.builder.getOrCreate()
    if active is None:
        try:
            import delta  # noqa: F401 - a local session needs the delta-spark package
        except ImportError:
            raise SparkSetupError("no Spark session here and no local Spark: install pld_spark[local] (PySpark + "
                                  "delta-spark), or set spark.remote to a Spark Connect server") from None
    if active is not None:
        if with_nlp and not _has_nlp(active):
            log.warning("the active Spark session has no Spark NLP jar; 'retrieve' falls back to the regex splitter")
        return active
    resolve_packages(spark_cfg, with_nlp=with_nlp)
    try:
        spark = session_builder(spark_cfg, with_nlp=with_nlp, warehouse_dir=warehouse_dir).getOrCreate()
    except Exception as first:  # noqa: BLE001 - PySpark reports a JVM that did not start as a generic error
        from pyspark.errors import PySparkRuntimeError

        if not isinstance(first, PySparkRuntimeError):
            raise
        # The jars may have gone from the Ivy cache since they were resolved: resolve again (with
        # retries and a clear error), then start once more.
        log.warning("Spark did not start (%s); resolving its packages again", first)
        resolve_packages(spark_cfg, with_nlp=with_nlp, force=True)
        try:
            spark = session_builder(spark_cfg, with_nlp=with_nlp, warehouse_dir=warehouse_dir).getOrCreate()
        except PySparkRuntimeError as e:
            raise SparkSetupError(f"Spark's JVM did not start ({e}); its packages resolved, so see the Java "
                                  f"output above (Java 17+ on PATH or JAVA_HOME, memory: spark.driver_memory)") from e
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _has_nlp(spark) -> bool:
    try:
        return "spark-nlp" in (spark.conf.get("spark.jars.packages", "") or "")
    except Exception:  # noqa: BLE001 - conf lookup on a remote session may be refused
        return False
