"""Extraction throughput benchmark: how many teacher calls per second our extract code path
achieves against a remote, latency-bound teacher, for ``extract.max_in_flight`` 1, 4, 16, 64.

The teacher is a local OpenAI-compatible stub (a subprocess on 127.0.0.1, ``http.server``
with HTTP/1.1 keep-alive) that answers every chat completion with a valid extraction JSON
(``{"reasoning", "rule"}`` naming the gold label it reads from the prompt) after a fixed added
latency (``--latency-ms``, default 300). A stub is the right tool here: the benchmark measures
our client-side concurrency, not a model. The stub counts requests and the peak number in
flight, so the concurrency the client claims is checked on the server side.

Three measurements, all in this process and against the same stub, with the real code:

- ``sequential``: a plain loop, one ``client.chat([request])`` after another (the baseline);
- ``executor``: :func:`pld_spark.engines.executor.call_rows`, the function each Spark partition
  runs (thread pool of ``max_in_flight``), called directly in-process: one partition, no Spark
  (ideal = in_flight / latency);
- ``spark``: :func:`pld_spark.pipeline.extract.transform` (``mapInPandas`` over ``--partitions``
  partitions, one client per worker process) collected on the driver, exactly as
  ``extract.run`` does per batch (ideal = in_flight * partitions / latency). Its wall time
  includes Spark's fixed job cost, measured separately with an identity ``mapInPandas`` job
  of the same shape (``spark_fixed_s``).

All clients are the ``openai`` backend with the response cache off (a cache hit would not be a
call). ``achieved / ideal`` is the efficiency; ``achieved / sequential`` the speed-up.

    .venv/bin/python bench/extract_throughput.py --n 256 --latency-ms 300

Writes ``bench/results/extract_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, add_config_args, load_cfg, loadavg, text_table, write_result  # noqa: E402

log = logging.getLogger("bench.extract_throughput")


# ----------------------------------------------------------------------------- the stub server
def serve(port: int, latency_ms: float) -> None:
    """Run the stub (blocking). OpenAI chat completions on /v1/chat/completions; GET /stats, /reset."""
    import re
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"requests": 0, "in_flight": 0, "peak": 0}
    lock = threading.Lock()
    delay = latency_ms / 1000.0
    label_re = re.compile(r"Correct label:\s*(.+)")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a pooled client connection is reused

        def log_message(self, fmt, *args):
            pass

        def _send(self, status: int, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            if self.path.startswith("/reset"):
                with lock:
                    state.update(requests=0, peak=state["in_flight"])
            with lock:
                self._send(200, dict(state))

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            req = json.loads(self.rfile.read(n) or b"{}")
            with lock:
                state["requests"] += 1
                state["in_flight"] += 1
                state["peak"] = max(state["peak"], state["in_flight"])
            try:
                time.sleep(delay)
                msgs = req.get("messages") or []
                prompt = "\n".join(str(m.get("content", "")) for m in msgs)
                m = label_re.search(prompt)
                label = m.group(1).strip() if m else "unknown"
                content = json.dumps({
                    "reasoning": f"The input is about a {label} topic, which decides the label.",
                    "rule": f"If the sentence describes people by their {label} and generalises about them, "
                            f"the label is {label}."})
                body = {"id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
                        "model": req.get("model") or "stub",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": len(content) // 4,
                                  "total_tokens": max(1, len(prompt) // 4) + len(content) // 4}}
                self._send(200, body)
            finally:
                with lock:
                    state["in_flight"] -= 1

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512  # 64+ concurrent connects must not overflow the listen backlog

    Server(("127.0.0.1", port), Handler).serve_forever()


class StubProcess:
    """The stub in a subprocess (its own GIL), stopped by its own pid."""

    def __init__(self, latency_ms: float):
        from socket import AF_INET, SOCK_STREAM, socket

        with socket(AF_INET, SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.latency_ms = latency_ms
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def __enter__(self) -> "StubProcess":
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(self.port),
                                      "--latency-ms", str(self.latency_ms)])
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.get("/stats")
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("stub server did not start")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


# ----------------------------------------------------------------------------- measurements
class PoolFullCounter(logging.Handler):
    """Counts urllib3 'Connection pool is full, discarding connection' warnings (a connection
    opened beyond the pool size and thrown away after one request)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        if "pool is full" in record.getMessage():
            self.count += 1


def example_rows(cfg, n: int, seed: int) -> list[dict]:
    """``n`` rendered train-like rows (example_id, input_text, label) from the configured dataset."""
    from pld_spark.data.input_policy import apply_policy, render_input
    from pld_spark.data.loaders import load_dataset

    rows = [r for r in load_dataset(cfg.dataset).rows if r.get("text") and r.get("label")]
    random.Random(seed).shuffle(rows)
    pol = cfg.input_policy
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        body = apply_policy(r["text"], r.get("pair"), pol.mode, pol.max_tokens, pol.chars_per_token, None, "regex")
        out.append({"example_id": f"{r['example_id']}#{i}", "input_text": render_input(body, r.get("pair"),
                                                                                       cfg.task.input_template),
                    "label": r["label"]})
    return out


def measure(label: str, fn, n: int, stub: StubProcess, ideal: float | None, seq_rate: float | None, **extra):
    stub.get("/reset")
    with Timer() as t:
        out = fn()
    stats = stub.get("/stats")
    rate = n / t.s
    row = {"mode": label, "n": n, "wall_s": round(t.s, 3), "calls_per_s": round(rate, 2),
           "ideal_calls_per_s": round(ideal, 2) if ideal else None,
           "efficiency": round(rate / ideal, 3) if ideal else None,
           "speedup_vs_sequential": round(rate / seq_rate, 2) if seq_rate else None,
           "server_requests": stats["requests"], "server_peak_in_flight": stats["peak"],
           "load_before": t.load_before, "load_after": t.load_after, **extra}
    if isinstance(out, list):
        row["row_errors"] = sum(1 for r in out if r.get("error"))
        row["valid_rules"] = sum(1 for r in out if r.get("valid"))
    print(f"{label:<26} {row['calls_per_s']:>8.2f} calls/s (ideal {row['ideal_calls_per_s']}, peak in flight "
          f"{stats['peak']}, load {t.load_after})", flush=True)
    return row


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap)
    ap.add_argument("--n", type=int, default=256, help="examples per executor / spark measurement")
    ap.add_argument("--n-seq", type=int, default=64, help="examples for the sequential baseline")
    ap.add_argument("--latency-ms", type=float, default=300.0, help="stub's added latency per call")
    ap.add_argument("--in-flight", default="1,4,16,64", help="max_in_flight values")
    ap.add_argument("--partitions", type=int, default=2, help="Spark partitions for the spark measurement")
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--name", default="extract_throughput")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.port, args.latency_ms)
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    started = time.perf_counter()
    in_flight = [int(x) for x in args.in_flight.split(",") if x.strip()]
    latency = args.latency_ms / 1000.0
    with StubProcess(args.latency_ms) as stub:
        from functools import partial

        from pld_spark.config import with_overrides
        from pld_spark.engines.executor import Pacer, call_rows
        from pld_spark.llm.registry import build_client
        from pld_spark.pipeline import extract as X

        cfg = load_cfg(args.config, [*args.set, "teacher.type=openai", f"teacher.base_url={stub.url}",
                                     "teacher.model=stub-teacher", "teacher.cache=false",
                                     "teacher.requests_per_minute=null", "teacher.tokens_per_minute=null"])
        spec = X.ExtractSpec.from_config(cfg)
        mk, hd = partial(X.make_request, spec), partial(X.handle, spec)
        rows = example_rows(cfg, max(args.n, args.n_seq), args.seed)
        counter = PoolFullCounter()
        logging.getLogger("urllib3.connectionpool").addHandler(counter)
        logging.getLogger("urllib3.connectionpool").propagate = False
        client = build_client(cfg.teacher, role="teacher")
        results = []
        client.chat([mk(rows[0])])  # warm-up: session, imports

        def sequential():
            return [hd(r, client.chat([mk(r)])[0]) for r in rows[: args.n_seq]]

        seq = measure("sequential", sequential, args.n_seq, stub, 1 / latency, None, in_flight=1)
        results.append(seq)
        seq_rate = seq["calls_per_s"]
        for k in in_flight:
            counter.count = 0
            row = measure(f"executor in_flight={k}", lambda: call_rows(client, rows[: args.n], mk, hd, k, Pacer(None)),
                          args.n, stub, min(k, args.n) / latency, seq_rate, in_flight=k, partitions=1)
            row["pool_full_discards"] = counter.count
            results.append(row)
        spark_fixed = None
        if not args.skip_spark:
            from pld_spark.engines.spark import get_spark

            spark = get_spark(cfg.spark)
            df = spark.createDataFrame(rows[: args.n], "example_id STRING, input_text STRING, label STRING").cache()
            df.count()

            def identity(batches):
                yield from batches

            ident = df.repartition(args.partitions).mapInPandas(identity, df.schema)
            ident.collect()  # warm the Python workers
            with Timer() as t:
                ident.collect()
            spark_fixed = round(t.s, 3)
            print(f"spark fixed cost (identity mapInPandas, {args.partitions} partitions): {spark_fixed}s", flush=True)
            warm = with_overrides(cfg, {"extract.max_in_flight": 1})
            X.transform(df.limit(args.partitions * 2), warm, partitions=args.partitions).collect()  # workers build clients
            for k in in_flight:
                c = with_overrides(cfg, {"extract.max_in_flight": k})
                per_part = -(-args.n // args.partitions)
                ideal = min(k, per_part) * args.partitions / latency
                row = measure(f"spark in_flight={k} x{args.partitions}",
                              lambda: [r.asDict() for r in X.transform(df, c, partitions=args.partitions).collect()],
                              args.n, stub, ideal, seq_rate, in_flight=k, partitions=args.partitions)
                row["spark_fixed_s"] = spark_fixed
                net = row["wall_s"] - spark_fixed
                row["calls_per_s_excl_fixed"] = round(args.n / net, 2) if net > 0 else None
                results.append(row)
            spark.stop()
        client.close()
    print()
    print(text_table(("mode", "n", "wall_s", "calls/s", "ideal", "achieved/ideal", "x sequential", "peak", "load1"),
                     [(r["mode"], r["n"], r["wall_s"], r["calls_per_s"], r["ideal_calls_per_s"], r["efficiency"],
                       r["speedup_vs_sequential"], r["server_peak_in_flight"],
                       r["load_after"][0] if r["load_after"] else None) for r in results]))
    if spark_fixed is not None:
        print(f"\nspark fixed job cost (identity mapInPandas): {spark_fixed}s; spark rows include it")
    payload = {"latency_ms": args.latency_ms, "n": args.n, "n_seq": args.n_seq, "partitions": args.partitions,
               "teacher": {"type": "openai", "endpoint": "local stub (bench/extract_throughput.py serve)",
                           "http": "HTTP/1.1 keep-alive"},
               "spark_fixed_s": spark_fixed, "results": results, "loadavg_end": loadavg(),
               "pid": os.getpid()}
    path = write_result(args.name, payload, started)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
