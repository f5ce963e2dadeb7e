"""A model process that dies becomes one clear error: which model, which signal, why, what to do.

Where a model runs and how its death reaches the driver:

- **a Spark task** (extract's teacher calls): Spark reports ``Python worker exited unexpectedly
  (crashed)``; with ``spark.python.worker.faulthandler.enabled`` (set by
  :func:`pld_spark.engines.spark.session_builder`) the message carries Python's fault handler
  line, e.g. ``Fatal Python error: Illegal instruction``. A worker killed by SIGKILL (the
  out-of-memory killer) leaves no such line.
- **a Ray actor** (score): Ray raises ``RayActorError``/``ActorDiedError`` (typed), whose text
  may name the signal.
- **the driver** (resolve, evaluate, ``pld llm check``): the process itself dies, so the ``pld``
  command runs its work in a supervised child (:mod:`pld_spark.supervisor`) that reports how it
  died.

:func:`stage_guard` wraps a stage: an exception that is a model-process death is re-raised as
:class:`~pld_spark.errors.ModelCrashError` with the explanation (the engine's exception stays
attached as ``__cause__`` for ``--verbose`` debugging, but the CLI prints one line).
"""
from __future__ import annotations

import contextlib
import re
import signal as _signal
from typing import Iterator

from pld_spark.errors import ModelCrashError

#: faulthandler's text for each fatal signal it catches
FAULT_TEXT = {"Illegal instruction": "SIGILL", "Segmentation fault": "SIGSEGV", "Bus error": "SIGBUS",
              "Aborted": "SIGABRT", "Floating-point exception": "SIGFPE"}

CAUSES = {
    "SIGILL": ("illegal instruction: the llama.cpp library executed a CPU instruction this process may not run - "
               "typically a wheel compiled with native flags (-march=native) on another CPU, or AMX/AVX-512 code on a "
               "CPU that advertises it",
               "reinstall the portable build: `make install` (or scripts/build_llama_cpp.sh, then pip install "
               "--only-binary=llama-cpp-python --find-links <its folder> llama-cpp-python), and check it with "
               "`python scripts/check_portable_ggml.py`; never reuse a llama-cpp-python wheel built on another "
               "machine"),
    "SIGSEGV": ("segmentation fault in native code: a corrupt or truncated model file, a model format this "
                "llama.cpp does not support, or a llama.cpp bug",
                "check the model file (its sha256 against the registry, `pld llm check`), try a smaller n_ctx, and "
                "report the model and llama-cpp-python version if it persists"),
    "SIGBUS": ("bus error: the memory-mapped model file changed or vanished under the process (e.g. rewritten "
               "while in use) or /dev/shm is full",
               "do not rewrite model files while jobs run; re-assemble the model (PLD_MODEL_INSTALL=1)"),
    "SIGABRT": ("abort: llama.cpp stopped on an internal check (GGML_ASSERT), often a context or batch larger "
                "than the model allows, or running out of memory while allocating",
                "lower n_ctx / the input size (input_policy.max_tokens) and see the process's stderr for the "
                "failed check"),
    "SIGFPE": ("floating-point exception in native code", "report the model and llama-cpp-python version"),
    "SIGKILL": ("killed: most often the kernel's out-of-memory killer (see `dmesg`), or an operator/scheduler "
                "kill",
                "give each model process more memory: fewer concurrent model processes (Spark task slots, "
                "score.ray.num_actors), a smaller model or n_ctx"),
}
UNKNOWN = ("the process died without a Python error (no fault handler line: often SIGKILL from the "
           "out-of-memory killer)", CAUSES["SIGKILL"][1])


def signal_name(sig: int | str | None) -> str | None:
    """``4`` / ``-4`` / ``"SIGILL"`` -> ``"SIGILL"`` (None if unknown)."""
    if sig is None:
        return None
    if isinstance(sig, str):
        return sig if sig.startswith("SIG") else None
    try:
        return _signal.Signals(abs(int(sig))).name
    except ValueError:
        return None


def explain(sig: str | None, model: str | None, where: str) -> str:
    """One message: where a model process died, with which signal, the likely cause and the fix."""
    cause, fix = CAUSES.get(sig or "", UNKNOWN)
    who = f"the process running model {model!r}" if model else "a model process"
    how = f"with {sig}" if sig else "unexpectedly"
    return f"{who} ({where}) died {how}: {cause}. Fix: {fix}."


def signal_from_text(text: str) -> str | None:
    """The signal named in a crash report (faulthandler line, or ``SIGxxx``/``signal N``)."""
    m = re.search(r"Fatal Python error: (" + "|".join(map(re.escape, FAULT_TEXT)) + ")", text)
    if m:
        return FAULT_TEXT[m.group(1)]
    m = re.search(r"\b(SIG(?:ILL|SEGV|BUS|ABRT|FPE|KILL))\b", text)
    if m:
        return m.group(1)
    m = re.search(r"killed by signal (\d+)|signal (\d+)", text)
    if m:
        return signal_name(int(m.group(1) or m.group(2)))
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _is_ray_actor_death(exc: BaseException) -> bool:
    try:
        from ray.exceptions import ActorDiedError, RayActorError
    except ImportError:
        return False
    return isinstance(exc, (RayActorError, ActorDiedError))


def model_crash(exc: BaseException, model: str | None) -> ModelCrashError | None:
    """The :class:`ModelCrashError` an engine exception stands for, or None if it is something else.

    Spark gives no exception class for a crashed Python worker (only its JVM message), so that case
    is recognised by Spark's own fixed text; Ray's actor death is a typed exception."""
    for e in _chain(exc):
        if isinstance(e, ModelCrashError):
            return e
        text = str(e)
        if "Python worker exited unexpectedly" in text:
            sig = signal_from_text(text)
            return ModelCrashError(explain(sig, model, "a Spark task"), signal_name=sig, model=model)
        if _is_ray_actor_death(e):
            sig = signal_from_text(text)
            return ModelCrashError(explain(sig, model, "a Ray actor"), signal_name=sig, model=model)
    return None


@contextlib.contextmanager
def stage_guard(stage: str, model: str | None) -> Iterator[None]:
    """Re-raise a model-process death inside ``stage`` as a clear :class:`ModelCrashError`."""
    try:
        yield
    except ModelCrashError:
        raise
    except Exception as e:  # noqa: BLE001 - only re-raised as a different type when it is a crash
        crash = model_crash(e, model)
        if crash is None:
            raise
        raise ModelCrashError(f"stage '{stage}': {crash}", signal_name=crash.signal_name, model=model) from e
