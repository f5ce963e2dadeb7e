"""The response cache through the Delta table ``llm_cache``: across clients and across processes.

Process A (this test) answers with the real embedded model and stores the answer; a new client
with an empty memory layer, and then a second Python process reading the same lakehouse, get
it from Delta with zero model calls (the second process never even loads the model).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pld_spark.config import LLMConfig
from pld_spark.llm.base import ChatRequest
from pld_spark.llm.cache import DeltaCache
from pld_spark.llm.registry import build_client

pytestmark = [pytest.mark.spark, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
CFG = LLMConfig(type="llamacpp", n_threads=1, max_tokens=8)
REQ = dict(messages=[{"role": "user", "content": "Name one planet."}], template_version="cache-test-v1")


@pytest.mark.slow  # a second Spark JVM starts in the subprocess (~40 s idle, ~2 min on a busy 2-core box)
def test_delta_cache_across_clients_and_processes(spark, tmp_path):
    from pld_spark.storage.delta import DeltaStore

    lake = tmp_path / "lakehouse"
    store = DeltaStore(spark, str(lake))
    a = build_client(CFG, role="teacher", cache=DeltaCache(store, run_id="run-a"))
    r1 = a.chat([ChatRequest(**REQ, request_id="a1")])[0]
    assert r1.ok and not r1.cached and a.stats()["calls"] == 1
    rows = store.read("llm_cache").collect()
    assert len(rows) == 1 and rows[0]["run_id"] == "run-a" and rows[0]["model"] == CFG.model
    assert rows[0]["cache_key"] == a.cache_key(a.effective(ChatRequest(**REQ)))
    assert json.loads(rows[0]["response"])["text"] == r1.text

    # A new client (empty memory layer) in the same process: served from Delta.
    b = build_client(CFG, role="teacher", cache=DeltaCache(store, run_id="run-b"))
    r2 = b.chat([ChatRequest(**REQ, request_id="b1")])[0]
    assert r2.cached and r2.text == r1.text and b.stats()["calls"] == 0
    assert b.stats()["persistent_cache_hits"] == 1
    assert store.read("llm_cache").count() == 1  # nothing re-written

    # Another process, same lakehouse.
    script = textwrap.dedent(f"""
        import json
        from pld_spark.config import LLMConfig, SparkConfig
        from pld_spark.engines.spark import get_spark
        from pld_spark.llm.base import ChatRequest
        from pld_spark.llm.cache import DeltaCache
        from pld_spark.llm.registry import build_client
        from pld_spark.storage.delta import DeltaStore

        spark = get_spark(SparkConfig(master="local[1]", shuffle_partitions=1, ui=False, driver_memory="1g"))
        store = DeltaStore(spark, {str(lake)!r})
        c = build_client(LLMConfig(**{CFG.model_dump(mode="json")!r}), role="teacher",
                         cache=DeltaCache(store, run_id="run-c"))
        r = c.chat([ChatRequest(**{REQ!r}, request_id="c1")])[0]
        s = c.stats()
        print("RESULT " + json.dumps({{"cached": r.cached, "text": r.text, "calls": s["calls"],
                                      "model_loaded": s["model_loaded"], "error": r.error}}))
        spark.stop()
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, f"rc={out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    res = json.loads(line[len("RESULT "):])
    assert res == {"cached": True, "text": r1.text, "calls": 0, "model_loaded": False, "error": None}


def test_delta_cache_get_many_put_many_roundtrip(spark, tmp_path):
    from pld_spark.llm.cache import CacheEntry
    from pld_spark.storage.delta import DeltaStore

    store = DeltaStore(spark, str(tmp_path / "lake"))
    cache = DeltaCache(store, run_id="r1")
    assert cache.get_many(["nope"]) == {}  # no table yet: a miss, not an error
    cache.put_many([CacheEntry(key=f"k{i}", response={"text": f"t{i}", "data": {"i": i}}, tokens_in=i,
                               tokens_out=1, backend="b", model="m", template_version="v") for i in range(3)])
    # first write wins: re-putting a key never rewrites a stored answer
    cache.put_many([CacheEntry(key="k0", response={"text": "changed"}, backend="b", model="m")])
    got = cache.get_many(["k0", "k2", "k9"])
    assert set(got) == {"k0", "k2"}
    assert got["k0"].response == {"text": "t0", "data": {"i": 0}} and got["k2"].tokens_in == 2
    assert store.read("llm_cache").count() == 3


def test_buffered_delta_cache_writes_when_full_when_old_or_on_flush(spark, tmp_path):
    """The student's cache (RunContext.STUDENT_CACHE_BUFFER) buffers: one MERGE per scoring batch cost
    more than the answers. Buffered entries are served by get_many and reach the table when due."""
    from pld_spark.context import RunContext
    from pld_spark.llm.cache import CacheEntry
    from pld_spark.storage.delta import DeltaStore

    assert RunContext.STUDENT_CACHE_BUFFER["flush_rows"] > 1
    store = DeltaStore(spark, str(tmp_path / "lake"))
    entry = lambda k: CacheEntry(key=k, response={"text": k}, backend="b", model="m")  # noqa: E731
    stored = lambda: sorted(r.cache_key for r in store.read("llm_cache").select("cache_key").collect())  # noqa: E731
    cache = DeltaCache(store, run_id="r1", flush_rows=3, flush_s=3600)
    cache.put_many([entry("a"), entry("b")])
    assert not store.exists("llm_cache") and cache.pending == 2
    assert set(cache.get_many(["a", "b", "z"])) == {"a", "b"}  # served from the buffer
    cache.put_many([entry("c")])  # the third entry fills the buffer: one MERGE
    assert stored() == ["a", "b", "c"] and cache.pending == 0
    cache.put_many([entry("d")])
    assert stored() == ["a", "b", "c"]
    assert cache.flush() == 1 and stored() == ["a", "b", "c", "d"] and cache.flush() == 0
    old = DeltaCache(store, run_id="r2", flush_rows=100, flush_s=0.0)  # due at once by age
    old.put_many([entry("e")])
    assert stored()[-1] == "e" and old.pending == 0
