"""A model process killed by SIGILL inside a Spark task ends the stage with one clear error."""
from __future__ import annotations

import os
import signal

import pytest

from pld_spark import cli
from pld_spark.errors import ModelCrashError
from pld_spark.pipeline import extract, ingest

pytestmark = pytest.mark.spark


class SigillTeacherFactory:
    """A stand-in model process: building the 'model' kills the Spark worker with SIGILL, as a
    llama.cpp build with instructions the CPU may not run does on its first token."""

    def __call__(self):
        os.kill(os.getpid(), signal.SIGILL)


def test_sigill_in_a_spark_worker_is_a_clear_model_crash(make_ctx):
    ctx = make_ctx("stereoset.yaml", ["dataset.sample.train=4", "dataset.sample.val=2", "dataset.sample.test=2",
                                      "extract.claim=false"])
    ingest.run(ctx)
    with pytest.raises(ModelCrashError) as e:
        with cli._guard(ctx, "extract"):  # the guard every `pld` stage runs under
            extract.run(ctx, client_factory=SigillTeacherFactory())
    msg = str(e.value)
    assert e.value.signal_name == "SIGILL"
    assert "stage 'extract'" in msg and ctx.cfg.teacher.model in msg and "Spark task" in msg
    assert "illegal instruction" in msg and "make install" in msg
    assert "Py4J" not in msg and "at org.apache" not in msg
