"""BaseLLM.flush_cache and RunContext.flush_llm_caches around a recorded persistent layer (no Spark, no model)."""
import logging

from pld_spark.config import LLMConfig
from pld_spark.llm.registry import build_client


class Recorded:
    def __init__(self, fail=False):
        self.flushes, self.fail = 0, fail

    def get_many(self, keys):
        return {}

    def put_many(self, entries):
        return len(list(entries))

    def flush(self):
        self.flushes += 1
        if self.fail:
            raise OSError("disk full")
        return 2


class NoBuffer:
    def get_many(self, keys):
        return {}

    def put_many(self, entries):
        return 0


def _client(cache):
    c = build_client(LLMConfig(type="openai", model="m", base_url="http://127.0.0.1:9"), role="student")
    c.attach_cache(cache)
    return c


def test_flush_cache_calls_a_buffered_layer_and_skips_one_without_a_buffer():
    rec = Recorded()
    assert _client(rec).flush_cache() == 2 and rec.flushes == 1
    assert _client(NoBuffer()).flush_cache() == 0
    off = build_client(LLMConfig(type="openai", model="m", base_url="http://127.0.0.1:9", cache=False), role="student")
    off.attach_cache(Recorded())
    assert off.persistent_cache is None and off.flush_cache() == 0


def test_run_context_flushes_built_clients_and_logs_a_failed_flush(caplog):
    from pld_spark.config import load_config
    from pld_spark.context import RunContext
    from tests.conftest import CONF

    ctx = RunContext(load_config(CONF / "stereoset.yaml", []), command="test")
    ctx.flush_llm_caches()  # nothing built yet: nothing to do, no Spark started
    assert "teacher" not in ctx.__dict__ and "store" not in ctx.__dict__
    ok, bad = Recorded(), Recorded(fail=True)
    ctx.replace(teacher=_client(bad), student=_client(ok))
    with caplog.at_level(logging.ERROR):
        ctx.flush_llm_caches()
    assert ok.flushes == 1 and bad.flushes == 1
    assert "could not write the teacher's buffered responses" in caplog.text


def test_commit_predictions_writes_the_cached_answers_before_the_rows():
    from pld_spark.config import load_config
    from pld_spark.context import RunContext
    from tests.conftest import CONF

    events: list = []

    class Cache(Recorded):
        def flush(self):
            events.append("flush")
            return super().flush()

    class Store:
        def merge(self, table, df, update=False):
            events.append(("merge", table, df, update))

    ctx = RunContext(load_config(CONF / "stereoset.yaml", []), command="test")
    ctx.replace(student=_client(Cache()), store=Store())
    ctx.commit_predictions("rows")
    assert events == ["flush", ("merge", "predictions", "rows", True)]
