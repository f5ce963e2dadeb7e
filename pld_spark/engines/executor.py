"""The teacher executor: model calls on Spark with ``mapInPandas``.

One client per Python worker process, built by ``pld_spark.llm.registry.get_or_build(llm_cfg)``
(a module-level cache, so a reused worker builds a model once, not once per task; a cache
dict captured in a closure would be pickled with every task). Inside a partition, requests
run on a thread pool of ``max_in_flight`` threads (latency-bound remote teachers overlap
their waits), paced by a per-partition request rate: the global ``requests_per_minute``
divided by the number of partitions, so the whole job never exceeds the global limit.

What a row means is the caller's business: ``make_request(row) -> ChatRequest`` and
``handle(row, response) -> dict`` are plain module-level functions (or partials of them) so
they pickle by reference. A per-row model failure is data (the response's ``error``); any
other exception (a bug, a killed worker) fails the Spark job, which is what lets the caller's
batching bound the loss of a crash.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger(__name__)


class Pacer:
    """Thread-safe minimum spacing between request starts (a simple rate limiter)."""

    def __init__(self, requests_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until the next request may start; returns the seconds waited."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        delay = start - now
        if delay > 0:
            time.sleep(delay)
        return delay


def split_rate(rate: float | None, partitions: int) -> float | None:
    """The per-partition share of a global rate (None stays None)."""
    if not rate:
        return None
    return rate / max(1, partitions)


def worker_llm_config(llm_cfg, partitions: int):
    """The config a worker builds its client from: token rate split across partitions; the
    request rate is enforced by the executor's pacer, so the client's own is switched off."""
    return llm_cfg.model_copy(update={"requests_per_minute": None,
                                      "tokens_per_minute": split_rate(llm_cfg.tokens_per_minute, partitions)})


class RegistryClientFactory:
    """Default client factory: the process-level cached client for ``llm_cfg`` (picklable).

    ``use_task_cpus`` (a cluster): an in-process model without ``n_threads`` gets the task's
    ``spark.task.cpus`` as its thread count. In local mode the workers share the host instead
    (:func:`pld_spark.llm.threads.host_share`), so concurrent workers never oversubscribe it.
    """

    def __init__(self, llm_cfg, role: str = "teacher", use_task_cpus: bool = False):
        self.llm_cfg = llm_cfg
        self.role = role
        self.use_task_cpus = use_task_cpus

    def __call__(self):
        from pld_spark.llm.registry import get_or_build
        from pld_spark.llm.threads import with_owned_cores

        cfg = self.llm_cfg
        if self.use_task_cpus:
            from pyspark import TaskContext

            tc = TaskContext.get()
            cfg = with_owned_cores(cfg, tc.cpus() if tc is not None else None)
        return get_or_build(cfg, role=self.role)


def call_rows(client, rows: list[dict[str, Any]], make_request: Callable, handle: Callable,
              max_in_flight: int, pacer: Pacer) -> list[dict[str, Any]]:
    """Send one request per row with at most ``max_in_flight`` in flight; keeps row order.

    ``client.chat([request])`` never raises for a per-row model failure (it returns a response
    with ``error``); a request that cannot even be rendered becomes an error row too.
    """
    from pld_spark.llm.types import ChatResponse

    limit = max(1, min(max_in_flight, client.max_concurrency))

    def one(row: dict[str, Any]) -> dict[str, Any]:
        try:
            req = make_request(row)
        except (KeyError, ValueError, TypeError) as e:
            return handle(row, ChatResponse(error=f"could not render the request: {e}", error_type=type(e).__name__))
        pacer.wait()
        resp = client.chat([req])[0]
        return handle(row, resp)

    if limit == 1 or len(rows) <= 1:
        return [one(r) for r in rows]
    with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="teacher") as pool:
        return list(pool.map(one, rows))


def map_teacher(df, *, make_request: Callable, handle: Callable, out_schema: str, llm_cfg,
                client_factory: Callable[[], Any] | None = None, max_in_flight: int = 4,
                requests_per_minute: float | None = None, partitions: int | None = None):
    """``df`` -> one output row per input row, computed by teacher calls on the executors.

    Lazy (a DataFrame); the caller decides when to run it. ``out_schema`` is a DDL string of
    what ``handle`` returns. ``client_factory`` (picklable, zero-argument) replaces the
    registry in tests.
    """
    import pandas as pd

    from pld_spark.engines.spark import default_parallelism, master_of

    spark = df.sparkSession
    n = max(1, int(partitions or default_parallelism(spark)))
    local = master_of(spark, None).startswith("local")
    factory = client_factory or RegistryClientFactory(worker_llm_config(llm_cfg, n), use_task_cpus=not local)
    rpm = split_rate(requests_per_minute, n)
    columns = [f.strip().split()[0] for f in _split_ddl(out_schema)]

    def fn(batches):
        client = None
        pacer = Pacer(rpm)
        for pdf in batches:
            rows = pdf.to_dict("records")
            if not rows:
                continue
            if client is None:  # an empty partition never builds (loads) a model
                client = factory()
            out = call_rows(client, rows, make_request, handle, max_in_flight, pacer)
            yield pd.DataFrame(out, columns=columns)

    return df.repartition(n).mapInPandas(fn, out_schema)


def _split_ddl(ddl: str) -> list[str]:
    from pld_spark.storage.catalog import _split_top

    return _split_top(ddl)
