"""`pld run` through a real Spark Connect server (how serverless and standard access mode run it).

A local Spark Connect server (PySpark 4.2 ships the plugin jar) with Delta starts in its own
process; `pld run --set spark.remote=sc://localhost:<port>` drives the whole pipeline through it
on a small StereoSet sample with the embedded model: the client process never starts a JVM, and
every stage (Delta MERGE as SQL, mapInPandas teacher calls on the server's Python workers, views)
runs remotely. Afterwards the tables are read back through a Connect session.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.servers import pld_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

SERVER = r'''
import sys, time
from pld_spark.config import SparkConfig
from pld_spark.engines.spark import session_builder
port = sys.argv[1]
b = session_builder(SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="2g"))
b = (b.config("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin")
      .config("spark.connect.grpc.binding.port", port))
spark = b.getOrCreate()
print("READY", flush=True)
while True:
    time.sleep(3600)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    pytest.importorskip("pyspark.sql.connect.session")
    port = _free_port()
    log = tmp_path_factory.mktemp("connect") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, env={**pld_env(), "PYSPARK_PYTHON": sys.executable},
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if "READY" in log.read_text(errors="replace"):
            break
        if proc.poll() is not None:
            pytest.fail(f"the Spark Connect server exited: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the Spark Connect server did not start in 300 s")
    yield f"sc://localhost:{port}"
    os.killpg(proc.pid, 9)
    proc.wait(30)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    """One lakehouse for the module: the scoring test scores with the prompts the run distilled."""
    return tmp_path_factory.mktemp("connect_lake") / "lakehouse"


SAMPLE = ["dataset.sample.train=12", "dataset.sample.val=12", "dataset.sample.test=16"]


READ = r'''
import json, sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
out = [[r.asDict() for r in spark.sql(q).collect()] for q in json.loads(sys.argv[2])]
spark.stop()
print(json.dumps(out, default=str))
'''


def _read(server: str, *queries: str) -> list[list[dict]]:
    """Rows of each query, read through a Connect session in a process of its own: a test process that
    already holds a classic SparkSession (another module on the same xdist worker) cannot open a
    remote one (SESSION_ALREADY_EXIST)."""
    out = subprocess.run([sys.executable, "-c", READ, server, json.dumps(queries)], cwd=REPO, env=pld_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pld(command: str, server: str, lake: Path, *sets: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pld_spark.cli", command, "--config", "conf/stereoset.yaml"]
    for s in (f"spark.remote={server}", f"lakehouse.path={lake}", *SAMPLE, "teacher.n_threads=1",
              "student.n_threads=1", *sets):
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=REPO, env=pld_env(), capture_output=True, text=True, timeout=timeout)


def test_pld_run_end_to_end_through_spark_connect(connect_server, lake, tmp_path):
    out = _pld("run", connect_server, lake, f"evaluate.report_dir={tmp_path / 'reports'}", "resolve.max_rounds=1",
               "resolve.train_sample=8", 'evaluate.conditions=["zero_shot","pld_cluster","pld_resolved"]')
    assert out.returncode == 0, out.stderr[-4000:]
    assert "pld_cluster" in out.stdout and "report:" in out.stdout
    # the client never started a JVM of its own: no Ivy resolution, no local Spark start in its output
    assert "ivy" not in out.stderr.lower() and "SparkContext" not in out.stderr

    tables = ["examples", "micro_instructions", "rules", "prompts", "evaluations"]
    counts_, runs, aliases = _read(
        connect_server,
        " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM delta.`{lake / t}`" for t in tables),
        f"SELECT status, counts FROM delta.`{lake / 'runs'}` WHERE status = 'succeeded'",
        f"SELECT alias FROM delta.`{lake / 'prompt_aliases'}`")
    count = {r["t"]: r["n"] for r in counts_}
    assert count["examples"] == 40
    assert count["micro_instructions"] == 12  # one teacher call per train row, on the server's workers
    assert count["rules"] >= 1 and count["prompts"] >= 2
    assert count["evaluations"] >= 2
    assert runs and "extract" in json.loads(runs[-1]["counts"])
    assert {"clustered", "selected", "resolved"} <= {r["alias"] for r in aliases}


def test_bulk_scoring_on_local_ray_through_spark_connect(connect_server, lake):
    """Ray's local mode needs no Spark: `pld score` with score.engine=ray runs under Connect (the server
    writes the Parquet handoff, the client's Ray actors score it, the server MERGEs the results).
    Ray on Spark (setup_ray_cluster needs sparkContext) is refused up front, naming the setting.
    Scores the test split with the prompts of the end-to-end run above (same module lakehouse)."""
    refused = _pld("score", connect_server, lake, "score.engine=ray", "score.ray.setup_on_spark=true", timeout=600)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "score.ray.setup_on_spark=true cannot run under Spark Connect" in refused.stderr
    assert "Traceback" not in refused.stderr  # one clear error line, not a stack from inside Ray

    out = _pld("score", connect_server, lake, "score.engine=ray", "score.ray.num_actors=1",
               "score.ray.batch_size=8")
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout[out.stdout.index("{"):])["score"]
    assert result["ray_mode"] == "local" and result["scored"] == 16

    rows, runs = _read(connect_server,
                       f"SELECT label, error FROM delta.`{lake / 'predictions'}` WHERE condition = 'score'",
                       f"SELECT status FROM delta.`{lake / 'runs'}` WHERE command = 'score'")
    assert len(rows) == 16
    assert sum(r["error"] is None for r in rows) >= 12
    assert {r["label"] for r in rows if r["error"] is None} <= {"gender", "profession", "race", "religion"}
    # the refused command failed before its first runs row: no 'failed' score run
    statuses = [r["status"] for r in runs]
    assert "failed" not in statuses and "succeeded" in statuses
