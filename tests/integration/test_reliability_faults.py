"""Teacher faults: `pld extract` through a 20% fault rate in front of the real embedded model.

A FaultServer on 127.0.0.1 injects 429 (with Retry-After), 500/503, hangs past the client
timeout, malformed bodies, empty choices and dropped connections at random (plus four scripted
500s at the start, so some rows are sure to exhaust their retries), and proxies every healthy
request to ``python -m llama_cpp.server`` with SmolLM2-135M. The teacher is the ``openai``
backend with ``teacher.api_key_env`` set. Checked:

- every train example ends exactly once in ``micro_instructions``, as a rule or an error row;
- the server's request count equals the sum of the rows' ``attempts``, per example and in total;
  no logical call was tried more than ``max_retries + 1`` times, errored rows used them all, and
  every retry after a 429 waited the ``Retry-After`` second;
- a re-run sends only the errored examples (counted at the server) and completes them, leaving
  the successful rows untouched.
"""
from __future__ import annotations

import secrets
import urllib.request
from collections import defaultdict

import pytest

from tests.conftest import CONF
from tests.integration.servers import FaultServer, has_traceback, pld_args, pld_env, request_key, run_pld

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

MAX_RETRIES = 1  # small, so a 20% fault rate leaves some rows errored for the re-run to complete
RETRYABLE_TYPES = ("RateLimitError", "ServerError", "LLMTimeoutError", "LLMConnectionError",
                   "MalformedResponseError")
KEY_ENV = "PLD_REL_TEACHER_KEY"


def _warm(llama_server) -> None:
    """One request so the first measured call does not pay the cold prefill (~15 s)."""
    body = b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    req = urllib.request.Request(llama_server.url + "/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=120).read()


def _sets(tmp_path, url: str, n_train: int) -> list[str]:
    return [f"lakehouse.path={tmp_path / 'lakehouse'}", "spark.master=local[2]", "spark.driver_memory=1g",
            "spark.shuffle_partitions=2",
            f"dataset.sample.train={n_train}", "dataset.sample.val=4", "dataset.sample.test=4",
            "teacher.type=openai", "teacher.model=smollm2", f"teacher.base_url={url}", f"teacher.api_key_env={KEY_ENV}",
            "teacher.max_tokens=56", "teacher.timeout_s=15", f"teacher.max_retries={MAX_RETRIES}",
            "teacher.backoff_base_s=0.05", "teacher.backoff_max_s=0.2",
            "extract.batch_size=8", "extract.max_in_flight=1", "extract.partitions=1", "extract.max_error_rate=1.0"]


def _ingest(spark, sets):
    from pld_spark.config import load_config
    from pld_spark.context import RunContext
    from pld_spark.pipeline import ingest
    from pld_spark.storage import readers

    ctx = RunContext(load_config(CONF / "stereoset.yaml", sets), command="test").replace(spark=spark)
    ingest.run(ctx)
    train = {r.example_id: r.input_text for r in readers.current_examples(ctx, "train").collect()}
    return ctx, train


def _calls_by_example(log, key_to_id):
    """example id -> {"main": [faults...], "repair": [faults...], "times": [...]} from the server log."""
    out: dict[str, dict] = defaultdict(lambda: {"main": [], "repair": [], "events": []})
    for e in log:
        k = request_key(e["body"])
        repair = k.endswith("#repair")
        eid = key_to_id[k[: -len("#repair")] if repair else k]
        out[eid]["repair" if repair else "main"].append(e["fault"])
        out[eid]["events"].append((e["time"], e["fault"], repair))
    return out


def test_extract_at_20_percent_faults_every_example_once_and_rerun_completes(spark, tmp_path, llama_server):
    from pyspark.sql import functions as F

    _warm(llama_server)
    key = "sk-rel-" + secrets.token_hex(16)
    srv = FaultServer(["500"] * 4, fault_rate=0.2, seed=11, retry_after="1", hang_s=18.0,
                      upstream=llama_server.url).start()
    try:
        sets = _sets(tmp_path, srv.url, n_train=40)
        ctx, train = _ingest(spark, sets)
        key_to_id = {text: eid for eid, text in train.items()}
        assert len(key_to_id) == len(train) >= 36  # inputs are unique, so a request names its example

        # ---- run 1: faults on
        p1 = run_pld(pld_args(["extract"], CONF / "stereoset.yaml", sets), cwd=tmp_path,
                     env=pld_env({KEY_ENV: key}), log_prefix=tmp_path / "run1", timeout=1200)
        assert p1.proc.returncode == 0, p1.stderr[-3000:]
        assert not has_traceback(p1.stderr)
        log1 = list(srv.log)
        faults1 = {k: v for k, v in srv.counts.items() if k != "ok"}
        # a DataFrame over a Delta path keeps the snapshot it was analysed with: read afresh each time
        micro = lambda: ctx.store.read("micro_instructions").where(  # noqa: E731
            F.col("teacher_model") == "openai:smollm2")
        rows1 = {r.example_id: r for r in micro().collect()}

        # every example exactly once, as a result or an error row
        assert micro().count() == len(rows1) == len(train)
        assert set(rows1) == set(train)
        errored = {eid for eid, r in rows1.items() if r.error is not None}
        ok = set(rows1) - errored
        assert errored, "the scripted 500s should have exhausted one row's retries"
        assert sum(faults1.values()) >= 0.15 * len(log1), faults1  # ~20% of requests were faulted

        # the server saw the key (so it really was in use) and the retry arithmetic adds up
        assert all(e["headers"].get("Authorization") == f"Bearer {key}" for e in log1)
        assert len(log1) == sum(r.attempts for r in rows1.values())
        per_ex = _calls_by_example(log1, key_to_id)
        max_attempts = MAX_RETRIES + 1
        for eid, r in rows1.items():
            calls = per_ex[eid]
            assert r.attempts == len(calls["main"]) + len(calls["repair"]), (eid, r.attempts, calls)
            assert 1 <= len(calls["main"]) <= max_attempts and len(calls["repair"]) <= max_attempts, (eid, calls)
            if r.error is None:
                assert calls["main"][-1] == "ok" and (not calls["repair"] or calls["repair"][-1] == "ok"), calls
            else:
                etype = r.error.split(":", 1)[0]
                assert etype in RETRYABLE_TYPES, r.error
                # the budget was spent (a slow real answer past the timeout counts too), or the
                # answer was bad JSON even after its one repair attempt
                exhausted = len(calls["main"]) == max_attempts or len(calls["repair"]) == max_attempts or \
                    etype == "MalformedResponseError"
                assert exhausted, (eid, r.error, calls)
            # Retry-After: 1 -> the next request for the same call waited at least one second
            ev = calls["events"]
            for (t0, fault, rep), (t1, _, rep1) in zip(ev, ev[1:]):
                if fault == "429" and rep == rep1:
                    assert t1 - t0 >= 0.95, (eid, ev)

        # ---- run 2: faults off; only the errored examples are sent again
        srv.fault_rate = 0.0
        n1 = len(srv.log)
        p2 = run_pld(pld_args(["extract"], CONF / "stereoset.yaml", sets), cwd=tmp_path,
                     env=pld_env({KEY_ENV: key}), log_prefix=tmp_path / "run2", timeout=1200)
        assert p2.proc.returncode == 0, p2.stderr[-3000:]
        log2 = srv.log[n1:]
        sent2 = {key_to_id[request_key(e["body"]).removesuffix("#repair")] for e in log2}
        assert sent2 == errored  # nothing successful was paid for twice
        rows2 = {r.example_id: r for r in micro().collect()}
        assert len(rows2) == len(train) and micro().count() == len(train)
        for eid in ok:  # untouched: same run, same timestamp
            assert rows2[eid].run_id == rows1[eid].run_id and rows2[eid].created_at == rows1[eid].created_at
        rerun_ids = {rows2[eid].run_id for eid in errored}
        assert len(rerun_ids) == 1 and rerun_ids != {rows1[next(iter(errored))].run_id}
        assert len(log2) == sum(rows2[eid].attempts for eid in errored)
        # completed, except rows whose real answer is itself bad JSON, before and after its repair:
        # with faults off, such a row's two requests were both answered by the model ("ok"), and it
        # fails the same way on every run (temperature 0). SmolLM2 does this for about 8% of
        # extraction prompts at max_tokens 56, so the bound is on the train set, not on `errored`.
        per_ex2 = _calls_by_example(log2, key_to_id)
        still = {eid for eid in errored if rows2[eid].error is not None}
        for eid in still:
            assert rows2[eid].error.startswith("MalformedResponseError"), rows2[eid].error
            assert per_ex2[eid]["main"] == ["ok"] and per_ex2[eid]["repair"] == ["ok"], (eid, per_ex2[eid])
        assert len(still) <= len(train) // 5, {eid: rows2[eid].error for eid in still}
        assert len(errored - still) >= 1, "the re-run completed none of the errored rows"
        print(f"\nfaults injected {faults1}; requests run1={len(log1)} run2={len(log2)}; examples={len(train)}; "
              f"errored after run1={len(errored)}; after run2={len(still)}")
    finally:
        srv.stop()
