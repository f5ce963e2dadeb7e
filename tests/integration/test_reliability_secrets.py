"""API keys never leave the environment: not into Delta tables (data files and ``_delta_log``),
not into logs, reports or exception messages.

`pld -v run` (ingest -> extract -> cluster -> consolidate -> resolve -> evaluate + report) runs
with teacher and student on the ``openai`` backend against a PipelineServer on 127.0.0.1, both
reading a random key from the environment. The server's first answers are faults that echo the
request headers (the ``Authorization: Bearer <key>`` one included) into an HTTP 500 body and into
a 200 non-JSON body, then a 401, so error rows, retries and logged warnings all pass through text
that held the key. Then `pld llm check` fails on the same echoes, so an exception message reaches
the user. Every byte under the run's folders and every line of output is searched for the key.
"""
from __future__ import annotations

import json
import secrets

import pytest

from tests.conftest import CONF
from tests.integration.servers import PipelineServer, has_traceback, pld_args, pld_env, run_pld

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

KEY_ENV = "PLD_REL_SECRET_KEY"


def _files_containing(root, needles: list[str]) -> list[tuple[str, str]]:
    """(file, needle) for every file under ``root`` whose bytes contain a needle."""
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [(str(p.relative_to(root)), n) for n in needles if n.encode() in data]
    return hits


def test_api_key_reaches_no_table_log_report_or_error(spark, tmp_path):
    from pyspark.sql import functions as F

    key = "sk-pld-" + secrets.token_hex(24)
    # one extract example exhausts its retries (2 attempts) on each kind of echo; another gets a 401
    script = ["echo_headers", "echo_headers", "echo_headers_200", "echo_headers_200", "401",
              "echo_auth_cut500", "echo_auth_cut500", "echo_auth_cut200", "echo_auth_cut200"]
    srv = PipelineServer(script).start()
    try:
        lake, reports = tmp_path / "lakehouse", tmp_path / "reports"
        sets = [f"lakehouse.path={lake}", "spark.master=local[2]", "spark.driver_memory=1g", "spark.shuffle_partitions=2",
                "dataset.sample.train=12", "dataset.sample.val=8", "dataset.sample.test=8",
                f"evaluate.report_dir={reports}", "evaluate.bootstrap=10", "resolve.max_rounds=1",
                "resolve.train_sample=8", "extract.partitions=1", "extract.max_in_flight=1",
                "extract.max_error_rate=0.5", "cluster.clusterer.min_samples=2"]
        for role in ("teacher", "student"):
            sets += [f"{role}.type=openai", f"{role}.model=m-{role}", f"{role}.base_url={srv.url}",
                     f"{role}.api_key_env={KEY_ENV}", f"{role}.max_retries=1", f"{role}.backoff_base_s=0.01"]
        env = pld_env({KEY_ENV: key})
        run = run_pld(pld_args(["run"], CONF / "stereoset.yaml", sets, verbose=True), cwd=tmp_path, env=env,
                      log_prefix=tmp_path / "pld-run", timeout=1500)
        assert run.proc.returncode == 0, run.stderr[-3000:]
        assert not has_traceback(run.stderr)

        # positive controls: the key was in use, the echoes carried it, and error rows exist
        assert srv.log and all(e["headers"].get("Authorization") == f"Bearer {key}" for e in srv.log)
        assert [e["fault"] for e in srv.log[:len(script)]] == script
        assert srv.answered("classify") > 0 and srv.answered("consolidate") + srv.answered("resolve") > 0
        from pld_spark.config import load_config
        from pld_spark.context import RunContext

        ctx = RunContext(load_config(CONF / "stereoset.yaml", sets), command="test").replace(spark=spark)
        errs = [r.error for r in ctx.store.read("micro_instructions").where(F.col("error").isNotNull()).collect()]
        assert len(errs) == 5, errs
        # the four echoes carried the header into the error text; a cut body may end before the
        # Authorization header (header order varies), so at least three show the scrubbed form
        assert sum("Bearer ***" in e for e in errs) >= 3, errs
        assert any(e.startswith("ServerError") and "Bearer ***" in e for e in errs), errs  # scrubbed echo
        assert any(e.startswith("MalformedResponseError") and "Bearer ***" in e for e in errs), errs
        assert any(e.startswith("AuthError") and KEY_ENV in e for e in errs), errs  # names the variable
        assert any(reports.rglob("*.html")) and any(reports.rglob("*.md"))
        assert (lake / "micro_instructions" / "_delta_log").is_dir()

        # an exception that reaches the user, built from a body that echoed the key
        srv.set_script(["echo_headers"] * 2 + ["echo_headers_200"] * 2 + ["echo_auth_cut500"] * 2)
        checks = []
        for i in range(3):
            p = run_pld(pld_args(["llm", "check", "--role", "teacher"], CONF / "stereoset.yaml", sets), cwd=tmp_path,
                        env=env, log_prefix=tmp_path / f"check{i}", timeout=300)
            assert p.proc.returncode == 2 and not has_traceback(p.stderr), p.stderr[-2000:]
            checks.append(p.stderr)
        assert "ServerError" in checks[0] or "HTTP 500" in checks[0]
        assert "not JSON" in checks[1]  # a cut echo of all headers (the cut may end before Authorization)
        assert "HTTP 500" in checks[2] and "Bearer ***" in checks[2]

        # the whole key, and any 12-character piece of its random part (a cut body keeps a prefix)
        secret = key[len("sk-pld-"):]
        needles = [key] + [secret[i: i + 12] for i in range(0, len(secret) - 11)]
        leaks = _files_containing(tmp_path, needles)  # tables + _delta_log, reports, stdout/stderr logs
        assert leaks == [], f"API key found: {leaks}"
        stored = json.dumps([r.asDict() for r in ctx.store.read("runs").collect()], default=str)
        assert "run" in stored and not any(n in stored for n in needles)
        print(f"\nscanned {sum(1 for p in tmp_path.rglob('*') if p.is_file())} files; requests={len(srv.log)}; "
              f"errors stored={errs}")
    finally:
        srv.stop()
