"""A model process that dies is one clear error: parsing engine reports, the supervisor, run_in_child."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pld_spark.engines.crash import explain, model_crash, signal_from_text, stage_guard
from pld_spark.errors import DataError, ModelCrashError
from pld_spark.supervisor import run_in_child, supervise

SPARK_SIGILL = ("org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 3.0 failed 1 "
                "times, most recent failure: Lost task 0.0 (TID 5): org.apache.spark.SparkException: Python worker "
                "exited unexpectedly (crashed): Fatal Python error: Illegal instruction\n\nCurrent thread "
                "0x00007f (most recent call first):\n  File \".../llama_cpp/_internals.py\", line 318 in decode")


def test_signal_from_engine_text():
    assert signal_from_text(SPARK_SIGILL) == "SIGILL"
    assert signal_from_text("Fatal Python error: Segmentation fault") == "SIGSEGV"
    assert signal_from_text("worker died, killed by signal 9") == "SIGKILL"
    assert signal_from_text("Python worker exited unexpectedly (crashed)") is None


def test_spark_worker_crash_becomes_a_model_crash_naming_model_signal_and_fix():
    err = model_crash(RuntimeError(SPARK_SIGILL), "smollm2-135m-instruct")
    assert isinstance(err, ModelCrashError) and err.signal_name == "SIGILL"
    msg = str(err)
    assert "smollm2-135m-instruct" in msg and "SIGILL" in msg and "Spark task" in msg
    assert "scripts/build_llama_cpp.sh" in msg and "Python worker" not in msg
    # no fault handler line (SIGKILL by the OOM killer): still a crash, the cause says so
    oom = model_crash(RuntimeError("Python worker exited unexpectedly (crashed)"), "m")
    assert oom is not None and "out-of-memory" in str(oom)
    assert model_crash(ValueError("some other failure"), "m") is None


def test_stage_guard_rewraps_crashes_only():
    with pytest.raises(ModelCrashError, match=r"stage 'extract': .*'teacher-x'.*SIGILL"):
        with stage_guard("extract", "teacher-x"):
            raise RuntimeError(SPARK_SIGILL)
    with pytest.raises(DataError):
        with stage_guard("extract", "teacher-x"):
            raise DataError("bad row 3")


def test_supervisor_reports_a_child_killed_by_sigill(capfd):
    child = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    rc = supervise(child, what="pld llm check")
    err = capfd.readouterr().err
    assert rc == 128 + signal.SIGILL
    assert "pld llm check" in err and "SIGILL" in err and "illegal instruction" in err
    assert "make install" in err  # the fix


def test_supervisor_passes_exit_codes_and_names_the_model_the_child_noted(capfd, tmp_path):
    assert supervise([sys.executable, "-c", "raise SystemExit(3)"], what="pld x") == 3
    code = ("from pld_spark import supervisor; supervisor.note_start(); "
            "supervisor.note_model('/models/tiny.gguf', '1 thread(s) (host-share)'); "
            "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    rc = supervise([sys.executable, "-c", code], what="pld run")
    err = capfd.readouterr().err
    assert rc == 128 + signal.SIGSEGV and "/models/tiny.gguf" in err and "SIGSEGV" in err


def test_supervised_child_dies_with_its_parent(tmp_path):
    """PR_SET_PDEATHSIG: killing the supervising parent takes the child (and its JVM) with it."""
    pidfile = tmp_path / "child.pid"
    child_code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent_code = ("import sys; from pld_spark.supervisor import supervise; "
                   f"supervise([sys.executable, '-c', {child_code!r}], what='x')")
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the supervised child outlived its parent")


def _sigill() -> None:
    os.kill(os.getpid(), signal.SIGILL)


def _value(x: int) -> int:
    return x * 2


def _raises() -> None:
    raise DataError("row 7 is bad")


def test_run_in_child_returns_raises_and_reports_crashes():
    assert run_in_child(_value, 21) == 42
    with pytest.raises(DataError, match="row 7"):
        run_in_child(_raises)
    with pytest.raises(ModelCrashError, match="student model m1.*SIGILL") as e:
        run_in_child(_sigill, what="student model m1")
    assert e.value.signal_name == "SIGILL"


def test_explain_without_model_or_signal():
    assert "a model process (the driver process) died unexpectedly" in explain(None, None, "the driver process")
