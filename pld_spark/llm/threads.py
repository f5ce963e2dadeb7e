"""How many threads an in-process llama.cpp model may use: the cores its process owns.

llama.cpp's threads spin at every barrier, so two processes that each run a model with all the
cores of a 2-core machine do not share it 2x slower, they run ~60x slower (measured: one
``pld llm check`` took 82.7 s with 2 threads beside another 2-thread model process, 1.3 s with
1 thread). A model's thread count therefore defaults to the cores its process owns, in this
order:

1. ``n_threads`` in the model's config (``source = "config"``), or ``PLD_LLAMA_THREADS``;
2. the cores the engine gave the process: a Spark task's ``spark.task.cpus`` on a cluster, a Ray
   actor's ``num_cpus`` (``source = "task"``; the engines put it into the config's ``n_threads``
   through :func:`with_owned_cores`);
3. otherwise (the driver, local Spark workers): this process's share of the host, the usable
   cores divided by the live processes on this host that use a llama.cpp model
   (``source = "host-share"``). Each such process holds an ``flock`` on a file in a per-user
   folder while it uses its model (released by the kernel when it dies, so a killed process
   never counts), and the share is re-read before every model call, so a model that started
   alone gives up a thread when a second model process starts.

A process counts from its first model call (:func:`model_call`) until ``PLD_MODEL_IDLE_S``
seconds (default 20) after its last one: an idle process that still holds a model in memory
does not count. Without this, a PySpark worker that ran the teacher in ``extract`` and was kept
for reuse held its slot for the rest of the run, and the driver's selection pass ran with one
thread of two (910 s for 64 val rows, ~450 s at two threads; seventh session).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

THREADS_ENV = "PLD_LLAMA_THREADS"
REGISTRY_ENV = "PLD_MODEL_REGISTRY_DIR"
IDLE_ENV = "PLD_MODEL_IDLE_S"
DEFAULT_IDLE_S = 20.0


@dataclass(frozen=True)
class ThreadBudget:
    """Threads for one model and why."""

    n: int
    source: str  # "config" | "env" | "task" | "host-share"
    detail: str = ""

    def describe(self) -> str:
        return f"{self.n} thread(s) ({self.source}{': ' + self.detail if self.detail else ''})"


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity / cgroup-pinned set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def registry_dir() -> Path:
    """Per-user folder of the host's model-process lock files."""
    base = os.environ.get(REGISTRY_ENV) or os.path.join(tempfile.gettempdir(), f"pld_spark-models-{os.getuid()}")
    p = Path(base)
    p.mkdir(parents=True, exist_ok=True)
    return p


def idle_seconds() -> float:
    """Seconds after its last model call that a process stops counting (``PLD_MODEL_IDLE_S``)."""
    raw = os.environ.get(IDLE_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_IDLE_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %.0f", IDLE_ENV, raw, DEFAULT_IDLE_S)
        return DEFAULT_IDLE_S


class _HostSlot:
    """This process's lock file in :func:`registry_dir`: held from a model call until the process
    has been idle for :func:`idle_seconds` (a daemon timer drops it; the next call takes it again)."""

    def __init__(self) -> None:
        self._fh = None
        self._pid = None
        self._path: Path | None = None
        self._lock = threading.RLock()
        self._busy = 0
        self._timer: threading.Timer | None = None

    def take(self) -> None:
        import fcntl

        # after a fork the child has its own pid: it needs its own slot; a process whose registry
        # folder changed (REGISTRY_ENV set later) moves its slot there
        path = registry_dir() / f"{os.getpid()}.lock"
        with self._lock:
            if self._fh is not None and self._pid == os.getpid():
                if self._path == path:
                    return
                self._drop()
            if self._pid != os.getpid():  # a forked child inherits neither the lock nor the count
                self._fh, self._busy, self._timer = None, 0, None
            for _ in range(5):
                fh = open(path, "a+")  # noqa: SIM115 - held open while the slot is held
                # blocking: a counter in live_model_processes() holds it only for a moment
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                try:
                    same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    self._fh, self._pid, self._path = fh, os.getpid(), path
                    return
                fh.close()  # a counter removed the file as stale before we locked it: take a new one
            raise OSError(f"could not take a stable lock file at {path}")

    def holds(self, path: Path) -> bool:
        return self._fh is not None and self._pid == os.getpid() and self._path == path

    def begin(self) -> None:
        """A model call starts: hold the slot (again) and keep it until the call ends."""
        with self._lock:
            self.take()
            self._busy += 1
            self._cancel_timer()

    def end(self) -> None:
        """A model call ended: drop the slot once the process has been idle for idle_seconds()."""
        with self._lock:
            if self._pid != os.getpid():
                return
            self._busy = max(0, self._busy - 1)
            if self._busy == 0:
                self._arm()

    def _arm(self) -> None:
        self._cancel_timer()
        t = threading.Timer(idle_seconds(), self._idle_release)
        t.daemon = True
        self._timer = t
        t.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_release(self) -> None:
        with self._lock:
            if self._busy == 0 and self._timer is threading.current_thread():
                self._timer = None
                if self._fh is not None and self._pid == os.getpid():
                    self._drop()

    def release(self) -> None:
        with self._lock:
            if self._fh is None or self._pid != os.getpid():
                return
            self._cancel_timer()
            self._drop()

    def _drop(self) -> None:
        import fcntl

        try:
            os.unlink(self._fh.name)  # unlinked while locked: a process waiting for it sees a new inode
        except OSError:
            pass
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
        except OSError:
            pass
        self._fh = self._path = None


_SLOT = _HostSlot()


def register_model_process() -> None:
    """Count this process as one using a llama.cpp model (a model was just loaded): until it has
    been idle for :func:`idle_seconds`, it exits, or :func:`unregister_model_process`."""
    try:
        _SLOT.begin()
        _SLOT.end()
    except OSError as e:  # a read-only /tmp must not stop a model from loading
        log.warning("could not register in the model-process registry (%s); thread share may oversubscribe", e)


def unregister_model_process() -> None:
    _SLOT.release()


@contextlib.contextmanager
def model_call():
    """Count this process as a model process for the length of a model call (and idle_seconds()
    after it). Take it before :func:`host_share` is read for the call."""
    try:
        _SLOT.begin()
    except OSError as e:
        log.warning("could not register in the model-process registry (%s); thread share may oversubscribe", e)
        yield
        return
    try:
        yield
    finally:
        _SLOT.end()


def live_model_processes() -> int:
    """Processes on this host using a model now (in a call, or within idle_seconds() of one; this
    one included if so).

    A lock file whose ``flock`` can be taken belongs to a process that is gone or idle: it is removed."""
    import fcntl

    n = 0
    try:
        entries = list(registry_dir().glob("*.lock"))
    except OSError:
        return 1
    for path in entries:
        if _SLOT.holds(path):
            n += 1
            continue
        try:
            with open(path, "a+") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    n += 1  # held: a live process
                    continue
                # stale (its process died or went idle): removed while still locked, so a process
                # taking it now sees a new inode and makes its own
                path.unlink(missing_ok=True)
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except OSError:
            continue
    return max(1, n)


def host_share() -> ThreadBudget:
    cores, procs = usable_cores(), live_model_processes()
    return ThreadBudget(max(1, cores // procs), "host-share", f"{cores} core(s) / {procs} model process(es)")


def thread_budget(n_threads: int | None, source: str = "config") -> ThreadBudget:
    """The budget for a model whose config says ``n_threads`` (set by ``source``; see the module
    docstring)."""
    if n_threads:
        return ThreadBudget(int(n_threads), source)
    env = os.environ.get(THREADS_ENV)
    if env and env.strip().isdigit() and int(env) > 0:
        return ThreadBudget(int(env), "env", THREADS_ENV)
    return host_share()


def with_owned_cores(llm_cfg, cores: float | None, source: str = "task"):
    """``llm_cfg`` with ``n_threads`` set to the cores an engine gave the process (Spark task
    cpus, Ray actor num_cpus), unless it sets its own or is not an in-process llama.cpp model."""
    if llm_cfg.type != "llamacpp" or llm_cfg.n_threads is not None or not cores:
        return llm_cfg
    return llm_cfg.model_copy(update={"n_threads": max(1, int(cores)),
                                      "extra": {**llm_cfg.extra, "threads_source": source}})
