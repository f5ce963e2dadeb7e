"""Thread budget of in-process llama.cpp models: config > env > engine-owned cores > host share."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from pld_spark.config import LLMConfig
from pld_spark.llm import threads


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv(threads.REGISTRY_ENV, str(tmp_path / "reg"))
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    yield tmp_path / "reg"
    threads.unregister_model_process()


def _wait_for(path: str, seconds: float = 60) -> None:
    # a file, not an Event: setting an Event with a SIGKILLed waiter deadlocks
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def _hold(path: str, ready, stop_file: str) -> None:
    """A process in one long model call until ``stop_file`` exists."""
    os.environ[threads.REGISTRY_ENV] = path
    with threads.model_call():
        ready.set()
        _wait_for(stop_file)


def _call_then_idle(path: str, ready, idle_file: str, stop_file: str) -> None:
    """A process that makes one model call (until ``idle_file``), then lives on idle until ``stop_file``."""
    os.environ[threads.REGISTRY_ENV] = path
    os.environ[threads.IDLE_ENV] = "0.3"
    with threads.model_call():
        ready.set()
        _wait_for(idle_file)
    _wait_for(stop_file)


def _start_holders(reg, n, target=_hold, files=()):
    ctx = mp.get_context("spawn")
    stop = reg.parent / "stop"
    procs = []
    for _ in range(n):
        ready = ctx.Event()
        p = ctx.Process(target=target, args=(str(reg), ready, *map(str, files), str(stop)), daemon=True)
        p.start()
        assert ready.wait(60)
        procs.append(p)
    return procs, stop


def test_host_share_divides_cores_by_live_model_processes(registry, monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    assert threads.host_share().n == 4  # nobody holds a model yet
    threads.register_model_process()
    assert threads.live_model_processes() == 1
    procs, stop = _start_holders(registry, 2)
    try:
        b = threads.host_share()
        assert (b.n, b.source) == (1, "host-share") and "3 model process" in b.detail
        # a model process killed with SIGKILL stops counting (its flock died with it)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].join(10)
        assert threads.live_model_processes() == 2
        assert threads.host_share().n == 2
        assert len(list(registry.glob("*.lock"))) == 2  # the stale lock file was removed
    finally:
        stop.touch()
        for p in procs:
            p.join(10)
    assert threads.live_model_processes() == 1


def test_a_process_registered_elsewhere_moves_its_slot_to_the_current_registry(tmp_path, registry, monkeypatch):
    """A test worker that loaded a model under the default registry, then counts in a fresh one."""
    monkeypatch.setenv(threads.REGISTRY_ENV, str(tmp_path / "first"))
    threads.register_model_process()
    assert len(list((tmp_path / "first").glob("*.lock"))) == 1
    monkeypatch.setenv(threads.REGISTRY_ENV, str(registry))
    assert threads.live_model_processes() == 1  # max(1, 0): nobody registered here yet
    assert not list(registry.glob("*.lock"))
    threads.register_model_process()
    assert [p.name for p in registry.glob("*.lock")] == [f"{os.getpid()}.lock"]
    assert not list((tmp_path / "first").glob("*.lock"))  # the old slot was released


def test_budget_precedence(registry, monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.thread_budget(3) == threads.ThreadBudget(3, "config")
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    assert threads.thread_budget(None).n == 2 and threads.thread_budget(None).source == "env"
    assert threads.thread_budget(5, "task").source == "task"
    monkeypatch.delenv(threads.THREADS_ENV)
    assert threads.thread_budget(None).source == "host-share"


def test_owned_cores_go_into_the_config_only_when_it_sets_none():
    cfg = LLMConfig()
    owned = threads.with_owned_cores(cfg, 2.0, source="ray actor")
    assert owned.n_threads == 2 and owned.extra["threads_source"] == "ray actor"
    assert threads.with_owned_cores(cfg.model_copy(update={"n_threads": 3}), 2).n_threads == 3
    assert threads.with_owned_cores(cfg, None).n_threads is None
    assert threads.with_owned_cores(LLMConfig(type="openai", base_url="http://x/v1"), 4).n_threads is None


def test_a_process_idle_after_its_model_calls_stops_counting(registry, monkeypatch):
    """A PySpark worker kept for reuse with the teacher still loaded must not halve the driver's
    threads: a model process counts while in a call and idle_seconds() after it, not for its life."""
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    idle = registry.parent / "idle"
    procs, stop = _start_holders(registry, 1, target=_call_then_idle, files=[idle])
    try:
        with threads.model_call():
            assert threads.host_share().n == 1  # the other process is in a call
            idle.touch()
            deadline = time.monotonic() + 20
            while threads.live_model_processes() > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert procs[0].is_alive()
            b = threads.host_share()  # alive, model still in memory, but idle for > 0.3 s
            assert (b.n, b.detail) == (2, "2 core(s) / 1 model process(es)")
    finally:
        stop.touch()
        procs[0].join(10)


def test_this_process_keeps_its_slot_through_a_long_call_and_drops_it_when_idle(registry, monkeypatch):
    monkeypatch.setenv(threads.IDLE_ENV, "0.2")
    mine = registry / f"{os.getpid()}.lock"
    with threads.model_call():
        with threads.model_call():  # nested (two threads of one process calling)
            time.sleep(0.5)  # longer than the idle time: a busy process never drops its slot
            assert mine.exists()
        time.sleep(0.4)
        assert mine.exists()
    deadline = time.monotonic() + 10
    while mine.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mine.exists()
    with threads.model_call():  # the next call takes it again
        assert mine.exists()
        assert threads.live_model_processes() == 1


def test_idle_seconds_from_the_environment(monkeypatch):
    monkeypatch.delenv(threads.IDLE_ENV, raising=False)
    assert threads.idle_seconds() == threads.DEFAULT_IDLE_S
    monkeypatch.setenv(threads.IDLE_ENV, "1.5")
    assert threads.idle_seconds() == 1.5
    monkeypatch.setenv(threads.IDLE_ENV, "soon")
    assert threads.idle_seconds() == threads.DEFAULT_IDLE_S
