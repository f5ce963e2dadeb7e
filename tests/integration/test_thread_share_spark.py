"""The host share of llama.cpp threads with a real Spark worker and the embedded model: a PySpark
worker that ran a model and was kept for reuse (model still loaded, idle) stops counting, so the
driver's next model call gets every core (seventh session: select's val pass ran at 1 thread of 2
for the whole stage, 910 s for 64 rows, because the extract worker held its slot)."""
from __future__ import annotations

import os
import time

import pytest

from pld_spark.llm import threads

pytestmark = pytest.mark.integration


def test_an_idle_spark_worker_holding_a_model_does_not_halve_the_drivers_threads(spark, tmp_path, monkeypatch):
    import pandas as pd

    reg = str(tmp_path / "reg")
    monkeypatch.setenv(threads.REGISTRY_ENV, reg)
    keys = (threads.REGISTRY_ENV, threads.IDLE_ENV)

    def fn(batches):
        from pld_spark.config import LLMConfig
        from pld_spark.llm.base import ChatRequest
        from pld_spark.llm.registry import build_client

        saved = {k: os.environ.get(k) for k in keys}
        os.environ.update({threads.REGISTRY_ENV: reg, threads.IDLE_ENV: "1"})
        try:
            client = build_client(LLMConfig(type="llamacpp", max_tokens=2, cache=False), role="teacher")
            for _pdf in batches:
                r = client.chat([ChatRequest(messages=[{"role": "user", "content": "Say yes."}], max_tokens=2)])[0]
                held = os.path.exists(os.path.join(reg, f"{os.getpid()}.lock"))
                yield pd.DataFrame({"pid": [os.getpid()], "error": [r.error], "held": [held]})
        finally:  # the worker is reused by later tests: leave its environment as it was
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    row = spark.range(1).repartition(1).mapInPandas(fn, "pid long, error string, held boolean").collect()[0]
    assert row.pid != os.getpid() and row.error is None
    assert row.held  # the worker counted while it used its model

    with threads.model_call():  # the driver counts itself too: wait until it is the only one
        deadline = time.monotonic() + 30
        while threads.live_model_processes() > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        b = threads.host_share()
    assert os.path.exists(f"/proc/{row.pid}"), "the PySpark worker was not kept for reuse; nothing was tested"
    cores = threads.usable_cores()
    assert (b.n, b.detail) == (cores, f"{cores} core(s) / 1 model process(es)")
