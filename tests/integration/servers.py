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
from typing import Any, Callable, Iterable, Sequence

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
        fault_for: ``fault_for(request_body) -> fault kind or None``, asked first for every chat
            request: faults tied to what a request is about (e.g. the examples whose calls fail),
            whatever order the requests arrive in. None falls through to the script and the rate.
    """

    def __init__(self, faults: Sequence[str] = (), *, fault_rate: float = 0.0,
                 fault_kinds: Iterable[str] = RETRYABLE_FAULTS, seed: int = 0, retry_after: str | float = "1",
                 hang_s: float = 5.0, upstream: str | None = None, reply_text: str = "ok",
                 reply_json: dict[str, Any] | None = None, upstream_timeout_s: float = 300.0,
                 fault_for: Callable[[dict[str, Any]], str | None] | None = None):
        for f in faults:
            if f not in FAULT_KINDS:
                raise ValueError(f"unknown fault {f!r}; known: {FAULT_KINDS}")
        self.script: list[str] = list(faults)
        self.fault_for = fault_for
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

    def next_fault(self, body: dict[str, Any] | None = None) -> str:
        with self._lock:
            self.requests += 1
            picked = self.fault_for(body) if self.fault_for is not None and body is not None else None
            if picked is not None:
                if picked not in FAULT_KINDS:
                    raise ValueError(f"fault_for returned unknown fault {picked!r}; known: {FAULT_KINDS}")
                return picked
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
                fault = server.next_fault(req)
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


# =============================================================================== reliability helpers
# Additive helpers for the reliability tests and bench/reliability.py: a teacher/student stand-in
# that answers every request shape of the pipeline (so whole `pld` commands run against a real
# loopback server quickly), faults that echo request headers (to prove keys are scrubbed), and
# `pld` subprocesses in their own process group (so kill -9 takes the JVM and workers with it).

ECHO_FAULTS = ("echo_headers", "echo_headers_200", "echo_auth_cut500", "echo_auth_cut200")


def schema_answer(schema: dict[str, Any] | None, text: str, labels: Sequence[str]) -> dict[str, Any]:
    """A valid JSON answer for a pipeline request schema, built from the request's text.

    The label is the one after ``Correct label:`` in the prompt, else the label named most
    often, else the first. Strings get a checkable rule naming that label; arrays are empty
    (a resolve round with no edits); enums take their first value.
    """
    import re as _re

    m = (_re.search(r"Correct label:\s*([\w-]+)", text)
         or _re.search(r"most point to \"([\w-]+)\"", text))
    label = m.group(1) if m and m.group(1) in labels else None
    if label is None:
        counts = {lab: len(_re.findall(r"(?<![\w-])" + _re.escape(lab) + r"(?![\w-])", text, _re.I)) for lab in labels}
        label = max(labels, key=lambda lab: (counts[lab], -list(labels).index(lab))) if labels else "label"
    rule = f"If the sentence is mainly about a group defined by {label}, the label is {label}."
    out: dict[str, Any] = {}
    for key, prop in ((schema or {}).get("properties") or {}).items():
        if "enum" in prop:
            out[key] = prop["enum"][0]
        elif prop.get("type") == "array":
            out[key] = []
        elif key == "label":
            out[key] = label
        elif key == "topic":
            out[key] = f"{label} cues"
        elif key == "reasoning":
            out[key] = f"The sentence is about {label}."
        else:
            out[key] = rule
    return out


class PipelineServer(FaultServer):
    """A :class:`FaultServer` whose healthy answers fit every pipeline request (no upstream).

    - requests with a ``response_format`` schema get :func:`schema_answer` (extract,
      consolidate, resolve);
    - other requests (student classify) get a label as text, with first-token
      ``top_logprobs`` when asked for them;
    - ``latency_s``: each healthy answer takes this long (a paid call is not instant, so a
      kill -9 can land in the middle of a batch);
    - extra faults ``echo_headers`` (HTTP 500 whose body echoes every request header, the
      ``Authorization`` one included) and ``echo_headers_200`` (HTTP 200 with that echo as a
      non-JSON body): a careless client would copy the API key into its error message;
      ``echo_auth_cut500`` / ``echo_auth_cut200`` put the key 20 characters before the 500th
      / 200th character of a non-JSON body (HTTP 500 / 200), where a client that cuts the body
      before scrubbing it keeps a piece of the key.

    ``answered(kind)`` counts requests per request kind (``extract``, ``consolidate``,
    ``resolve``, ``classify``, ``other``) and :meth:`keys` gives the example key of each
    request (see :func:`request_key`).
    """

    def __init__(self, faults: Sequence[str] = (), *, labels: Sequence[str] = ("gender", "profession", "race",
                                                                                "religion"),
                 latency_s: float = 0.0, **kw):
        bad = [f for f in faults if f not in FAULT_KINDS + ECHO_FAULTS]
        if bad:
            raise ValueError(f"unknown fault(s) {bad}; known: {FAULT_KINDS + ECHO_FAULTS}")
        super().__init__((), **kw)
        self.script = list(faults)
        self.labels = list(labels)
        self.latency_s = latency_s

    def _healthy(self, handler, raw: bytes, req: dict) -> None:
        if self.upstream:
            return super()._healthy(handler, raw, req)
        if self.latency_s:
            self._stop.wait(self.latency_s)
        text = "\n".join(str(m.get("content", "")) for m in req.get("messages") or [] if isinstance(m, dict))
        rf = req.get("response_format") or {}
        model = str(req.get("model") or "pipeline-server")
        if rf:
            schema = rf.get("schema") or (rf.get("json_schema") or {}).get("schema")
            handler._send(200, completion_body(json.dumps(schema_answer(schema, text, self.labels)), model=model))
            return
        user = next((str(m.get("content", "")) for m in reversed(req.get("messages") or [])
                     if isinstance(m, dict) and m.get("role") == "user"), "")
        label = schema_answer({"properties": {"label": {"type": "string"}}}, user, self.labels)["label"]
        body = completion_body(label, model=model, completion_tokens=1)
        if req.get("logprobs"):
            top = [{"token": lab, "logprob": (-0.1 if lab == label else -3.0 - i)} for i, lab in enumerate(self.labels)]
            body["choices"][0]["logprobs"] = {"content": [{"token": label, "logprob": -0.1, "top_logprobs": top}]}
        handler._send(200, body)

    def _respond(self, handler, fault: str, raw: bytes, req: dict) -> None:
        if fault in ("echo_auth_cut500", "echo_auth_cut200"):
            auth = handler.headers.get("Authorization", "")  # "Bearer <key>": the key starts 7 characters in
            cut = 500 if fault.endswith("500") else 200
            text = "x" * (cut - 20 - 7) + auth + " <- your credentials"
            handler._send(cut if cut == 500 else 200, text.encode())
            return
        if fault in ECHO_FAULTS:
            echo = "; ".join(f"{k}: {v}" for k, v in handler.headers.items())
            if fault == "echo_headers":
                handler._send(500, {"error": {"message": f"upstream failed for request with headers {echo}"}})
            else:
                handler._send(200, f"<html>proxy error, your request headers were: {echo}</html>".encode())
            return
        super()._respond(handler, fault, raw, req)

    def answered(self, kind: str | None = None) -> int | dict[str, int]:
        """Requests per kind (or for one kind)."""
        with self._lock:
            kinds = Counter(request_kind(e["body"]) for e in self.log)
        return kinds.get(kind, 0) if kind else dict(kinds)

    def keys(self) -> list[str]:
        """The example key of every logged request, in arrival order."""
        with self._lock:
            return [request_key(e["body"]) for e in self.log]


def request_kind(body: dict[str, Any]) -> str:
    """Which pipeline call a chat request is: extract, consolidate, resolve, classify or other."""
    msgs = body.get("messages") or []
    text = "\n".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
    props = set((((body.get("response_format") or {}).get("schema") or {}).get("properties") or {}))
    if {"topic", "instruction"} <= props:
        return "consolidate"
    if "operations" in props:
        return "resolve"
    if {"reasoning", "rule"} <= props or "Correct label:" in text:
        return "extract"
    if body.get("logprobs") or "Output only the label" in text or props == {"label"}:
        return "classify"
    return "other"


def request_key(body: dict[str, Any]) -> str:
    """What a request is about: the input shown to the model (extract: the ``Input:`` block;
    classify: the user message), plus ``#repair`` for a JSON repair follow-up. Two requests with
    the same key are the same paid call made twice."""
    import re as _re

    msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    user = next((str(m.get("content", "")) for m in msgs if m.get("role") == "user"), "")
    m = _re.search(r"\nInput:\n(.*?)\n\nCorrect label:", user, _re.S)
    key = m.group(1) if m else user
    if any(m.get("role") == "assistant" for m in msgs):
        key += "#repair"
    return key


# ------------------------------------------------------------------------------- `pld` subprocesses
PLD_BIN = str(Path(sys.executable).with_name("pld"))


def pld_args(command: Sequence[str], config: str | Path, sets: Iterable[str] = (), verbose: bool = False) -> list[str]:
    """The argv of a ``pld`` command with ``--config`` and ``--set`` overrides."""
    out = [PLD_BIN] + (["-v"] if verbose else []) + list(command) + ["--config", str(config)]
    for s in sets:
        out += ["--set", s]
    return out


def pld_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a ``pld`` subprocess: one llama.cpp thread, this interpreter for Spark workers,
    JVM flags for a fast start."""
    import os

    env = dict(os.environ)
    env.update({"PLD_LLAMA_THREADS": "1", "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                "PYTHONUNBUFFERED": "1",
                # A test `pld` JVM lives under a minute and spends much of it starting Spark and Delta.
                # C1-only JIT cut that start (session + first Delta read) from 19.6 s to 15.6 s on an
                # idle 2-core machine, 22.9 s to 17.5 s under load. For short-lived test processes
                # only; a real job keeps the JVM defaults (C2 pays off over a long run).
                "JDK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1"})
    env.update(extra or {})
    return env


class PldProcess:
    """One ``pld`` command in its own process group (session), output captured to files.

    :meth:`kill9` sends SIGKILL to the whole group: the Python driver, its Spark JVM and the
    JVM's Python workers die at once, like a lost node. Only this process's own group is
    signalled (its id is the child's pid).
    """

    def __init__(self, argv: Sequence[str], *, cwd: str | Path, env: dict[str, str] | None = None,
                 log_prefix: str | Path | None = None):
        self.argv = list(argv)
        self.cwd = Path(cwd)
        prefix = Path(log_prefix) if log_prefix else self.cwd / f"pld-{int(time.time() * 1000)}"
        self.stdout_path = prefix.with_name(prefix.name + ".out")
        self.stderr_path = prefix.with_name(prefix.name + ".err")
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=str(self.cwd), env=env or pld_env(), stdout=self._out,
                                     stderr=self._err, start_new_session=True)
        self.killed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise
        finally:
            if self.proc.poll() is not None:
                self._close()
        self._reap_group()
        return rc

    def kill9(self) -> None:
        """SIGKILL the process group, then wait for the leader and the rest of the group."""
        import os
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.killed = True
        self.proc.wait(timeout=30)
        self._reap_group()
        self._close()

    def _reap_group(self, timeout: float = 20.0) -> None:
        """Wait until no process of this group is left (the JVM may outlive the driver briefly);
        SIGKILL stragglers of this group only."""
        import os
        import signal

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                return
            time.sleep(0.2)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _close(self) -> None:
        for fh in (self._out, self._err):
            if not fh.closed:
                fh.close()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def __enter__(self) -> "PldProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.kill9()
        else:
            self._reap_group(timeout=5)
            self._close()


def run_pld(argv: Sequence[str], *, cwd: str | Path, env: dict[str, str] | None = None, timeout: float = 900,
            log_prefix: str | Path | None = None) -> PldProcess:
    """Run a ``pld`` command to completion; returns the finished :class:`PldProcess`."""
    p = PldProcess(argv, cwd=cwd, env=env, log_prefix=log_prefix)
    p.wait(timeout=timeout)
    return p


def seed_prompt(ctx, rules=(), kind: str = "test", count_tokens=None) -> str:
    """Assemble a student prompt from ``rules`` (PromptRule) and store it in ``prompts`` the way
    consolidate does, so `pld score --prompt-version` can use it; -> its version."""
    from datetime import datetime, timezone

    from pld_spark.prompts.student import assemble
    from pld_spark.storage.catalog import PROMPTS

    p = assemble(ctx.cfg.task, list(rules), **({"count_tokens": count_tokens} if count_tokens else {}))
    row = {"prompt_version": p.version, "task": ctx.cfg.task.name, "kind": kind, "text": p.text,
           "sha256": p.sha256, "parent_version": None, "rule_ids": p.rule_ids, "dropped_rule_ids": [],
           "review_ids": [], "example_ids": [], "token_count": p.token_count, "token_budget": 0, "run_id": "seed",
           "created_at": datetime.now(timezone.utc)}
    ctx.store.merge("prompts", ctx.spark.createDataFrame([tuple(row[c] for c in PROMPTS.columns)], PROMPTS.ddl))
    return p.version


def run_pld_inprocess(argv: Sequence[str], capfd) -> tuple[int, str, str]:
    """Run a ``pld`` command in this process through ``pld_spark.cli.main``, reusing the test's
    Spark session (no JVM start). -> (exit code, stdout, stderr), captured at the file-descriptor
    level (``capfd``), so what the JVM writes to stderr is seen too. Tests that need a process of
    its own (kills, concurrent writers) use :func:`run_pld`."""
    from pld_spark import cli

    args = list(argv)
    if args and args[0] == PLD_BIN:
        args = args[1:]
    capfd.readouterr()
    try:
        rc = cli.main(args)
    except SystemExit as e:  # argparse errors
        rc = e.code if isinstance(e.code, int) else 2
    out, err = capfd.readouterr()
    return rc, out, err


def has_traceback(text: str) -> bool:
    """Whether a Python traceback reached the output."""
    return "Traceback (most recent call last)" in text


def wait_for_requests(srv: FaultServer, proc: PldProcess, target: int, timeout: float = 900.0) -> None:
    """Block until ``srv`` has seen ``target`` requests or ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while srv.requests < target and proc.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no progress: {srv.requests} requests, waiting for {target}\n{proc.stderr[-2000:]}")
        time.sleep(0.05)


def kill_and_resume(srv: FaultServer, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None, rng: random.Random,
                    kills: int, max_step: int, count_rows, before_run=None, delay_s: float = 0.5,
                    log_prefix: str = "run", timeout: float = 1800.0) -> list[dict[str, Any]]:
    """Start ``argv``, SIGKILL its process group ``kills`` times, then run it to the end.

    Each kill lands after a random 1..``max_step`` server requests into the run plus a random
    0..``delay_s`` seconds. Returns one record per run: ``killed``, ``rc``, ``requests`` made
    during the run, ``rows`` (``count_rows()`` after it; reading the table after a kill is itself
    the check that it is not corrupt), ``extra`` (what ``before_run()`` returned before the start),
    ``stdout`` and ``stderr``. Raises AssertionError if a run ends before its kill, or the last
    run fails.
    """
    runs = []
    for i in range(kills + 1):
        extra = before_run() if before_run else None
        start_req = srv.requests
        proc = PldProcess(argv, cwd=cwd, env=env, log_prefix=Path(cwd) / f"{log_prefix}{i}")
        if i < kills:
            wait_for_requests(srv, proc, start_req + rng.randint(1, max_step), timeout=timeout)
            time.sleep(rng.uniform(0.0, delay_s))
            if proc.poll() is not None:
                raise AssertionError(f"run {i} ended (rc {proc.poll()}) before kill {i + 1}; use more rows\n"
                                     f"{proc.stderr[-2000:]}")
            proc.kill9()
            rc = None
        else:
            rc = proc.wait(timeout=timeout)
            if rc != 0:
                raise AssertionError(f"the resumed run failed (rc {rc}):\n{proc.stderr[-3000:]}")
        runs.append({"killed": i < kills, "rc": rc, "requests": srv.requests - start_req, "rows": count_rows(),
                     "extra": extra, "stdout": proc.stdout, "stderr": proc.stderr})
    return runs
