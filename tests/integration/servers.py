"""Real local servers for integration tests (reusable by other test modules and benches).

- :class:`FaultServer`: an OpenAI-compatible HTTP server on 127.0.0.1 (``http.server`` in a
  thread) that injects faults, either from a script (one fault per request, in order) or at
  random with a seeded rate; healthy requests get a canned answer or are proxied to an
  ``upstream`` server (e.g. :class:`LlamaCppServer`), so extraction can run against the real
  embedded model behind a 20% fault rate. Every request is counted and logged.
- :class:`LlamaCppServer`: ``python -m llama_cpp.server`` with the embedded GGUF model, in a
  subprocess on a free port; stopped (by its own pid) on exit.

Faults: ``429`` (with ``Retry-After``), ``500``, ``503``, ``hang`` (no answer for ``hang_s``,
past the client's timeout), ``malformed`` (200 with a body that is not JSON),
``empty_choices`` (200 with ``"choices": []``), ``bad_content`` (200, well-formed envelope,
content that is not the JSON asked for), ``401``, ``400``, ``context`` (400 with a
context-length message), ``drop`` (close the connection without answering), ``ok``.
"""
from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Sequence

FAULT_KINDS = ("429", "500", "503", "hang", "malformed", "empty_choices", "bad_content", "401", "400", "context",
               "drop", "ok")
RETRYABLE_FAULTS = ("429", "500", "503", "hang", "malformed", "empty_choices", "drop")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def completion_body(content: str, model: str = "fault-server", prompt_tokens: int = 10,
                    completion_tokens: int | None = None) -> dict[str, Any]:
    """A minimal OpenAI chat-completions response."""
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens,
                  "completion_tokens": completion_tokens if completion_tokens is not None else max(1, len(content) // 4),
                  "total_tokens": prompt_tokens + (completion_tokens or max(1, len(content) // 4))},
    }


class FaultServer:
    """OpenAI-compatible server with scripted or random faults. Use as a context manager.

    Args:
        faults: scripted faults, consumed one per chat request; when exhausted, ``fault_rate``
            applies (0 by default, i.e. healthy).
        fault_rate: probability of a random fault per request once the script is used up.
        fault_kinds: the kinds drawn at random (default: the retryable ones).
        seed: RNG seed for the random faults (reproducible runs).
        retry_after: the ``Retry-After`` header value sent with ``429`` (seconds, as text).
        hang_s: how long a ``hang`` waits before answering (set it above the client timeout).
        upstream: base URL (``http://127.0.0.1:port/v1``) that healthy requests are proxied to.
        reply_text: canned content for healthy requests without upstream; a request with a
            ``response_format`` gets ``reply_json`` (serialised) instead.
    """

    def __init__(self, faults: Sequence[str] = (), *, fault_rate: float = 0.0,
                 fault_kinds: Iterable[str] = RETRYABLE_FAULTS, seed: int = 0, retry_after: str | float = "1",
                 hang_s: float = 5.0, upstream: str | None = None, reply_text: str = "ok",
                 reply_json: dict[str, Any] | None = None, upstream_timeout_s: float = 300.0):
        for f in faults:
            if f not in FAULT_KINDS:
                raise ValueError(f"unknown fault {f!r}; known: {FAULT_KINDS}")
        self.script: list[str] = list(faults)
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.rng = random.Random(seed)
        self.retry_after = str(retry_after)
        self.hang_s = hang_s
        self.upstream = upstream.rstrip("/") if upstream else None
        self.upstream_timeout_s = upstream_timeout_s
        self.reply_text = reply_text
        self.reply_json = reply_json if reply_json is not None else {"answer": "ok"}
        self.counts: Counter[str] = Counter()  # outcome -> number of requests
        self.log: list[dict[str, Any]] = []  # one entry per request: path, fault, headers, body
        self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for an OpenAI client (``.../v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def set_script(self, faults: Sequence[str]) -> None:
        """Replace the scripted faults and reset the counters."""
        with self._lock:
            self.script = list(faults)
            self.counts.clear()
            self.log.clear()
            self.requests = 0

    def next_fault(self) -> str:
        with self._lock:
            self.requests += 1
            if self.script:
                return self.script.pop(0)
            if self.fault_rate > 0 and self.rng.random() < self.fault_rate:
                return self.rng.choice(self.fault_kinds)
            return "ok"

    def start(self) -> "FaultServer":
        server = self
        self._stop.clear()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, fmt, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes | dict, headers: dict[str, str] | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected for "hang"

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fault-server", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    req = json.loads(raw or b"{}")
                except ValueError:
                    req = {}
                fault = server.next_fault()
                with server._lock:
                    server.counts[fault] += 1
                    server.log.append({"path": self.path, "fault": fault, "headers": dict(self.headers.items()),
                                       "body": req, "time": time.time()})
                server._respond(self, fault, raw, req)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ responses
    def _healthy(self, handler, raw: bytes, req: dict) -> None:
        if self.upstream:
            target = self.upstream + handler.path[len("/v1"):] if handler.path.startswith("/v1") else \
                self.upstream + handler.path
            r = urllib.request.Request(target, data=raw, method="POST",
                                       headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(r, timeout=self.upstream_timeout_s) as resp:
                    handler._send(resp.status, resp.read())
            except urllib.error.HTTPError as e:
                handler._send(e.code, e.read() or b"{}")
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                handler._send(502, {"error": {"message": f"upstream failed: {type(e).__name__}"}})
            return
        content = json.dumps(self.reply_json) if req.get("response_format") else self.reply_text
        handler._send(200, completion_body(content, model=str(req.get("model") or "fault-server")))

    def _respond(self, handler, fault: str, raw: bytes, req: dict) -> None:
        if fault == "ok":
            self._healthy(handler, raw, req)
        elif fault == "429":
            handler._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                          {"Retry-After": self.retry_after})
        elif fault in ("500", "503"):
            handler._send(int(fault), {"error": {"message": "server error", "type": "server_error"}})
        elif fault == "hang":
            self._stop.wait(self.hang_s)
            handler._send(200, completion_body("too late"))
        elif fault == "malformed":
            handler._send(200, b'{"choices": [ this is not json')
        elif fault == "empty_choices":
            handler._send(200, {"id": "x", "object": "chat.completion", "choices": [], "usage": {}})
        elif fault == "bad_content":
            handler._send(200, completion_body("Sure! Here is my answer, but not in JSON."))
        elif fault == "401":
            handler._send(401, {"error": {"message": "invalid api key", "type": "auth"}})
        elif fault == "400":
            handler._send(400, {"error": {"message": "bad request: unknown field", "type": "invalid_request"}})
        elif fault == "context":
            handler._send(400, {"error": {"message": "This model's maximum context length is 2048 tokens",
                                          "code": "context_length_exceeded"}})
        elif fault == "drop":
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:  # pragma: no cover - guarded in __init__
            handler._send(500, {"error": {"message": f"unknown fault {fault}"}})


class LlamaCppServer:
    """``python -m llama_cpp.server`` on a free loopback port, for the embedded GGUF model."""

    def __init__(self, model_path: str | Path, *, n_ctx: int = 1024, n_threads: int = 2,
                 python: str = sys.executable, startup_timeout_s: float = 120.0, log_path: str | Path | None = None):
        self.model_path = str(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.python = python
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/llama_server_{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @staticmethod
    def available() -> tuple[bool, str]:
        """Whether ``llama_cpp.server`` can be imported here (the ``[server]`` extra)."""
        try:
            import llama_cpp.server.app  # noqa: F401
        except ImportError as e:
            return False, f"llama_cpp.server not importable (pip install 'llama-cpp-python[server]'): {e}"
        return True, ""

    def start(self) -> "LlamaCppServer":
        cmd = [self.python, "-m", "llama_cpp.server", "--model", self.model_path, "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
               "--n_threads_batch", str(self.n_threads), "--model_alias", "smollm2", "--verbose", "False"]
        t0 = time.perf_counter()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = time.perf_counter() - t0
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {self.startup_timeout_s}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LlamaCppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
