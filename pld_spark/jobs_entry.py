"""Entry points for Databricks ``python_wheel_task``s (and ``python jobs/<name>.py`` locally).

A wheel task passes ``named_parameters`` as ``--name=value``. These functions turn them into a
``pld`` command line, so a job task and a local command run exactly the same code:

    --config=/Workspace/.../conf/stereoset.yaml --catalog=main --schema=pld
    --teacher_endpoint=https://... --student_model=... --set=resolve.max_rounds=1
"""
from __future__ import annotations

import argparse
import sys


def job_parser(command: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"pld-{command}", description=f"pld {command} as a job task")
    ap.add_argument("--config", required=True, help="task YAML")
    ap.add_argument("--catalog", help="Unity Catalog for the tables (Databricks)")
    ap.add_argument("--schema", help="schema for the tables (Databricks)")
    ap.add_argument("--teacher_endpoint", help="OpenAI-compatible base URL of the teacher (e.g. Model Serving)")
    ap.add_argument("--teacher_model", help="teacher model id at that endpoint")
    ap.add_argument("--teacher_key_env", help="environment variable holding the teacher's API key")
    ap.add_argument("--student_model", help="student model (registry name, GGUF path or served id)")
    from pld_spark.llm.registry import BACKENDS

    ap.add_argument("--student_type", choices=sorted(BACKENDS))
    ap.add_argument("--ray_on_spark", choices=["true", "false"], help="start Ray on the Spark cluster (score)")
    ap.add_argument("--prompt_version", help="score/evaluate: prompt version or alias (score default: live, then "
                                             "distilled, then clustered)")
    ap.add_argument("--input", help="score: table or path to score")
    ap.add_argument("--run_id", help="reuse a run id")
    ap.add_argument("--set", action="append", default=[], help="any config override key=value")
    return ap


def to_cli_argv(command: str, argv: list[str]) -> list[str]:
    """Named job parameters -> the equivalent ``pld`` argv."""
    a = job_parser(command).parse_args(argv)
    sets = list(a.set)
    if a.catalog:
        sets.append(f"lakehouse.catalog={a.catalog}")
    if a.schema:
        sets.append(f"lakehouse.schema={a.schema}")
    if a.teacher_endpoint:
        sets += ["teacher.type=openai", f"teacher.base_url={a.teacher_endpoint}"]
    if a.teacher_model:
        sets.append(f"teacher.model={a.teacher_model}")
    if a.teacher_key_env:
        sets.append(f"teacher.api_key_env={a.teacher_key_env}")
    if a.student_model:
        sets.append(f"student.model={a.student_model}")
    if a.student_type:
        sets.append(f"student.type={a.student_type}")
    if a.ray_on_spark:
        sets.append(f"score.ray.setup_on_spark={a.ray_on_spark}")
    out = [command, "--config", a.config]
    for s in sets:
        out += ["--set", s]
    if a.run_id:
        out += ["--run-id", a.run_id]
    if command in ("score", "evaluate") and a.prompt_version:
        out += ["--prompt-version", a.prompt_version]
    if command == "score" and a.input:
        out += ["--input", a.input]
    return out


def _run(command: str) -> None:
    from pld_spark.cli import main

    sys.exit(main(to_cli_argv(command, sys.argv[1:])))


def ingest() -> None:
    _run("ingest")


def extract() -> None:
    _run("extract")


def cluster() -> None:
    _run("cluster")


def consolidate() -> None:
    _run("consolidate")


def select() -> None:
    _run("select")


def resolve() -> None:
    _run("resolve")


def evaluate() -> None:
    _run("evaluate")


def score() -> None:
    _run("score")


ENTRY_POINTS = {f"pld-{n}": n for n in ("ingest", "extract", "cluster", "consolidate", "select", "resolve", "evaluate",
                                         "score")}
