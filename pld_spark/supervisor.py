"""Run a command's work in a child process, so a model that kills it is reported, not silent.

A native crash in the driver (llama.cpp dying with SIGILL on an unsupported instruction, a
segfault, the out-of-memory killer) ends the Python process at once: nothing in it can print an
explanation, and the user saw only ``Illegal instruction`` or exit code 132. So the ``pld``
command line runs as a thin parent that starts the real work as a child (``python -m
pld_spark.cli ...`` with ``PLD_SUPERVISED=1``) and waits; when the child dies from a signal the
parent prints one message naming the signal, the model the child had loaded
(:func:`note_model` writes it to a small state file the parent reads) and the likely cause and
fix (:mod:`pld_spark.engines.crash`), and exits with ``128 + signal``.

- The child gets ``PR_SET_PDEATHSIG(SIGKILL)`` so it never outlives a killed parent; SIGINT and
  SIGTERM to the parent are forwarded to the child.
- On Databricks (the job's Python process owns the cluster's Spark session) and in-process
  calls of ``cli.main(argv)`` (tests) nothing is supervised.
- :func:`run_in_child` is the same for one function (``pld llm check`` loads the model there).
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

SUPERVISED_ENV = "PLD_SUPERVISED"
STATE_ENV = "PLD_STATE_FILE"
DISABLE_ENV = "PLD_NO_SUPERVISOR"


def _set_pdeathsig() -> None:
    """Linux: deliver SIGKILL to this (child) process when its parent dies."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def note_model(model: str, detail: str = "") -> None:
    """Record (for the supervising parent) that this process is about to run ``model``."""
    path = os.environ.get(STATE_ENV)
    if not path or os.environ.get(SUPERVISED_ENV) != "1":
        return
    try:
        p = Path(path)
        state = json.loads(p.read_text()) if p.exists() else {}
        if state.get("pid") not in (None, os.getpid()):
            return  # a Spark worker or other descendant inherited the variable: not the supervised process
        state.update(pid=os.getpid(), model=model, detail=detail)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(p)
    except (OSError, ValueError):
        pass


def note_start() -> None:
    """Claim the state file for this (supervised) process."""
    path = os.environ.get(STATE_ENV)
    if path and os.environ.get(SUPERVISED_ENV) == "1":
        try:
            Path(path).write_text(json.dumps({"pid": os.getpid()}))
        except OSError:
            pass


def should_supervise() -> bool:
    return (os.environ.get(SUPERVISED_ENV) != "1" and os.environ.get(DISABLE_ENV) != "1"
            and "DATABRICKS_RUNTIME_VERSION" not in os.environ)


def crash_message(rc: int, state: dict[str, Any], what: str) -> str:
    from pld_spark.engines.crash import explain, signal_name

    sig = signal_name(-rc)
    model = state.get("model")
    detail = f" ({state['detail']})" if state.get("detail") else ""
    return f"error: {what}: " + explain(sig, f"{model}{detail}" if model else None, "the driver process")


def supervise(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` as a supervised child; on death by signal print the explanation. Returns the
    exit status to use (the child's, or ``128 + signal``)."""
    fd, state_path = tempfile.mkstemp(prefix="pld-state-", suffix=".json")
    os.close(fd)
    child_env = {**os.environ, **(env or {}), SUPERVISED_ENV: "1", STATE_ENV: state_path}
    try:
        proc = subprocess.Popen(list(cmd), env=child_env, preexec_fn=_set_pdeathsig)  # noqa: PLW1509
    except OSError as e:
        os.unlink(state_path)
        print(f"error: could not start {what}: {e}", file=sys.stderr)
        return 2

    def forward(signum, _frame):
        try:
            proc.send_signal(signum)
        except OSError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    try:
        state = json.loads(Path(state_path).read_text() or "{}")
    except (OSError, ValueError):
        state = {}
    finally:
        Path(state_path).unlink(missing_ok=True)
    if rc < 0 and -rc not in (signal.SIGINT, signal.SIGTERM):
        print(crash_message(rc, state, what), file=sys.stderr)
        return 128 - rc
    return rc if rc >= 0 else 128 - rc


def _parent_logging() -> tuple[int, int, str | None]:
    """How the parent logs (pld_spark's level, the root level, the root handler's format), so a spawned
    child prints the same INFO lines (a spawned process starts with logging unconfigured)."""
    root = logging.getLogger()
    fmt = next((f for h in root.handlers if (f := getattr(h.formatter, "_fmt", None))), None)
    return logging.getLogger("pld_spark").getEffectiveLevel(), root.level, fmt


def _child_main(conn, fn, args, kwargs, log_setup=None) -> None:
    if log_setup is not None:
        level, root_level, fmt = log_setup
        if fmt is not None:
            logging.basicConfig(level=root_level, format=fmt)
        logging.getLogger("pld_spark").setLevel(level)
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as e:  # noqa: BLE001 - shipped to the parent, which re-raises it
        try:
            conn.send(("err", e))
        except Exception:  # noqa: BLE001 - an unpicklable exception travels as text
            conn.send(("err", RuntimeError(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")))
    finally:
        conn.close()


def run_in_child(fn: Callable[..., Any], *args: Any, what: str = "the model", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh (spawned) process; its result or exception comes back.

    If the child dies from a signal, raises :class:`~pld_spark.errors.ModelCrashError` with the
    explanation. ``fn`` and its arguments must pickle (module-level function, plain data)."""
    from pld_spark.engines.crash import explain, signal_name
    from pld_spark.errors import ModelCrashError

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child, fn, args, kwargs, _parent_logging()), daemon=True)
    proc.start()
    child.close()
    result = None
    try:
        if parent.poll(None):
            result = parent.recv()
    except EOFError:
        result = None
    proc.join()
    if result is None:
        sig = signal_name(-proc.exitcode) if proc.exitcode and proc.exitcode < 0 else None
        raise ModelCrashError(explain(sig, what, "a child process") if sig else
                              f"{what}: the child process exited with status {proc.exitcode} without an answer",
                              signal_name=sig, model=what)
    status, value = result
    if status == "err":
        raise value
    return value
