"""Reliability figures: teacher faults, kill -9 and resume, concurrent writers.

Everything is real processes on 127.0.0.1: `pld` commands run as subprocesses (each with its own
Spark JVM) against local HTTP servers from ``tests/integration/servers.py``:

1. **faults** (real model): ``python -m llama_cpp.server`` with the embedded SmolLM2-135M
   (1 thread) behind a FaultServer that injects, at ``--fault-rate``, 429 + Retry-After, 500,
   503, hangs past the client timeout, malformed bodies, empty choices and dropped connections.
   `pld extract` (openai teacher backend, ``teacher.api_key_env`` set) runs over ``--examples``
   StereoSet train rows; then a second run with the faults off. Reported: faults injected by
   type, requests, results, error rows (by type), duplicates, whether the server's request count
   equals the rows' ``attempts`` (in total and per example), retry-policy violations, and what
   the re-run sent (only the errored examples) and left.
2. **kills**: `pld extract` and `pld score` (local engine), each SIGKILLed (whole process group)
   ``--kills`` times at random points, then run to the end, against a PipelineServer whose
   answers take ``--latency-ms`` (a stand-in for a paid remote model, so runs are long enough
   to kill mid-batch). Reported: requests per run, rows committed after each kill, duplicated
   and lost rows, paid calls repeated (the same request seen twice) against the bound of one
   batch / chunk per kill.
3. **concurrency**: two `pld extract` processes on the same lakehouse at once: exit codes,
   duplicated keys, teacher calls.

    .venv/bin/python bench/reliability.py                 # ~300 examples, 20% faults, 3 kills
    .venv/bin/python bench/reliability.py --examples 60   # quicker

Prints the figures and writes ``bench/results/reliability.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import CONF_DIR, loadavg, text_table, write_result  # noqa: E402

log = logging.getLogger("bench.reliability")

CONFIG = CONF_DIR / "stereoset.yaml"
KEY_ENV = "PLD_BENCH_TEACHER_KEY"
RETRYABLE_TYPES = ("RateLimitError", "ServerError", "LLMTimeoutError", "LLMConnectionError",
                   "MalformedResponseError")


def _common(lake: Path) -> list[str]:
    return [f"lakehouse.path={lake}", "spark.master=local[2]", "spark.driver_memory=1g", "spark.shuffle_partitions=2"]


def _ctx(spark, sets):
    from pld_spark.config import load_config
    from pld_spark.context import RunContext

    return RunContext(load_config(CONFIG, sets), command="bench").replace(spark=spark)


def _run(argv, cwd: Path, env, name: str):
    from tests.integration.servers import run_pld

    t0 = time.perf_counter()
    p = run_pld(argv, cwd=cwd, env=env, log_prefix=cwd / name, timeout=6 * 3600)
    return p, round(time.perf_counter() - t0, 1)


# ------------------------------------------------------------------------------------------ faults
def phase_faults(spark, work: Path, args) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from pld_spark.llm.models import resolve_model_path
    from pld_spark.pipeline import ingest
    from pld_spark.storage import readers
    from tests.integration.servers import FaultServer, LlamaCppServer, has_traceback, pld_args, pld_env, request_key

    max_attempts = args.max_retries + 1
    llama = LlamaCppServer(resolve_model_path("smollm2-135m-instruct"), n_ctx=1024, n_threads=1,
                           log_path=work / "llama_server.log").start()
    body = b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    urllib.request.urlopen(urllib.request.Request(llama.url + "/chat/completions", data=body,
                                                  headers={"Content-Type": "application/json"}), timeout=300).read()
    srv = FaultServer(fault_rate=args.fault_rate, seed=args.seed, retry_after="1", hang_s=args.timeout_s + 5,
                      upstream=llama.url).start()
    try:
        lake = work / "faults" / "lakehouse"
        lake.parent.mkdir(parents=True, exist_ok=True)
        sets = _common(lake) + [
            f"dataset.sample.train={args.examples}", "dataset.sample.val=4", "dataset.sample.test=4",
            "teacher.type=openai", "teacher.model=smollm2", f"teacher.base_url={srv.url}",
            f"teacher.api_key_env={KEY_ENV}", f"teacher.max_tokens={args.max_tokens}",
            f"teacher.timeout_s={args.timeout_s}", f"teacher.max_retries={args.max_retries}",
            "teacher.backoff_base_s=0.05", "teacher.backoff_max_s=0.5",
            f"extract.batch_size={args.batch_size}", "extract.max_in_flight=1", "extract.partitions=1",
            "extract.max_error_rate=1.0"]
        ctx = _ctx(spark, sets)
        ingest.run(ctx)
        train = {r.example_id: r.input_text for r in readers.current_examples(ctx, "train").collect()}
        key_to_id = {t: e for e, t in train.items()}
        env = pld_env({KEY_ENV: "sk-bench-" + secrets.token_hex(16)})
        print(f"[faults] {len(train)} train examples; llama_cpp.server {llama.url} (1 thread) behind "
              f"{srv.url} at {args.fault_rate:.0%} faults", flush=True)

        p1, wall1 = _run(pld_args(["extract"], CONFIG, sets), work / "faults", env, "extract-run1")
        log1 = list(srv.log)
        faults1 = dict(Counter(e["fault"] for e in log1 if e["fault"] != "ok"))
        micro = ctx.store.read("micro_instructions").where(F.col("teacher_model") == "openai:smollm2")
        rows1 = {r.example_id: r for r in micro.collect()}
        n_rows1 = micro.count()
        errored = {e for e, r in rows1.items() if r.error is not None}
        per_ex: dict[str, dict[str, list]] = defaultdict(lambda: {"main": [], "repair": [], "events": []})
        for e in log1:
            k = request_key(e["body"])
            rep = k.endswith("#repair")
            eid = key_to_id[k.removesuffix("#repair")]
            per_ex[eid]["repair" if rep else "main"].append(e["fault"])
            per_ex[eid]["events"].append((e["time"], e["fault"], rep))
        attempts_mismatch = [e for e, r in rows1.items()
                             if r.attempts != len(per_ex[e]["main"]) + len(per_ex[e]["repair"])]
        over_budget = [e for e in per_ex if len(per_ex[e]["main"]) > max_attempts or
                       len(per_ex[e]["repair"]) > max_attempts]
        not_exhausted = [e for e in errored if rows1[e].error.split(":", 1)[0] in RETRYABLE_TYPES
                         and len(per_ex[e]["main"]) < max_attempts and len(per_ex[e]["repair"]) < max_attempts
                         and not rows1[e].error.startswith("MalformedResponseError")]
        retry_after_short = 0
        retry_after_checked = 0
        for e in per_ex.values():
            ev = e["events"]
            for (t0, f, rep), (t1, _, rep1) in zip(ev, ev[1:]):
                if f == "429" and rep == rep1:
                    retry_after_checked += 1
                    retry_after_short += (t1 - t0) < 0.95
        first = {
            "exit_code": p1.proc.returncode, "traceback": has_traceback(p1.stderr), "wall_s": wall1,
            "requests": len(log1), "faults_injected": faults1, "faults_total": sum(faults1.values()),
            "fault_share": round(sum(faults1.values()) / max(1, len(log1)), 3),
            "examples": len(train), "rows": n_rows1, "results": len(rows1) - len(errored), "error_rows": len(errored),
            "error_types": dict(Counter(rows1[e].error.split(":", 1)[0] for e in errored)),
            "invalid_rules": sum(1 for r in rows1.values() if r.error is None and not r.valid),
            "duplicates": n_rows1 - len(rows1), "missing": len(set(train) - set(rows1)),
            "attempts_sum": sum(r.attempts for r in rows1.values()),
            "requests_equal_attempts": len(log1) == sum(r.attempts for r in rows1.values()),
            "examples_with_attempts_mismatch": len(attempts_mismatch),
            "calls_over_retry_budget": len(over_budget), "errors_before_budget_spent": len(not_exhausted),
            "retries_after_429_checked": retry_after_checked, "retries_after_429_too_early": retry_after_short,
            "repair_requests": sum(len(e["repair"]) for e in per_ex.values()),
        }
        print(f"[faults] run 1: {first['requests']} requests, faults {faults1}; {first['results']} results, "
              f"{first['error_rows']} error rows {first['error_types']}", flush=True)

        srv.fault_rate = 0.0
        n1 = len(srv.log)
        p2, wall2 = _run(pld_args(["extract"], CONFIG, sets), work / "faults", env, "extract-run2")
        log2 = srv.log[n1:]
        sent2 = Counter(key_to_id[request_key(e["body"]).removesuffix("#repair")] for e in log2)
        rows2 = {r.example_id: r for r in micro.collect()}
        ok1 = set(rows1) - errored
        rerun = {
            "exit_code": p2.proc.returncode, "traceback": has_traceback(p2.stderr), "wall_s": wall2,
            "requests": len(log2), "examples_sent": len(sent2), "errored_before": len(errored),
            "successes_resent": len(set(sent2) & ok1),
            "successes_rewritten": sum(1 for e in ok1 if rows2[e].run_id != rows1[e].run_id),
            "completed": sum(1 for e in errored if rows2[e].error is None),
            "still_errored": sorted(f"{e}: {rows2[e].error[:120]}" for e in errored if rows2[e].error is not None),
            "rows": micro.count(), "duplicates": micro.count() - len(rows2),
            "requests_equal_attempts": len(log2) == sum(rows2[e].attempts for e in sent2),
        }
        print(f"[faults] run 2 (faults off): {rerun['requests']} requests for {rerun['examples_sent']} examples "
              f"(errored before: {len(errored)}, successes re-sent: {rerun['successes_resent']}); "
              f"completed {rerun['completed']}", flush=True)
        return {"config": {"examples": len(train), "fault_rate": args.fault_rate, "max_retries": args.max_retries,
                           "timeout_s": args.timeout_s, "hang_s": args.timeout_s + 5, "retry_after_s": 1,
                           "max_tokens": args.max_tokens, "batch_size": args.batch_size,
                           "fault_kinds": list(srv.fault_kinds), "model": "SmolLM2-135M-Instruct (llama_cpp.server, "
                                                                           "1 thread)"},
                "run1": first, "rerun": rerun}
    finally:
        srv.stop()
        llama.stop()


# ------------------------------------------------------------------------------------------ kills
def phase_kills(spark, work: Path, args) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from tests.distill_fakes import seed_examples, synthetic_examples
    from pld_spark.prompts.student import PromptRule
    from tests.integration.servers import PipelineServer, kill_and_resume, pld_args, pld_env, request_key, seed_prompt

    out: dict[str, Any] = {}
    rng = random.Random(args.seed)
    latency = args.latency_ms / 1000.0
    n_per_label = max(2, math.ceil(args.kill_examples / 4))

    # extract
    srv = PipelineServer(latency_s=latency).start()
    try:
        d = work / "kills-extract"
        d.mkdir(parents=True, exist_ok=True)
        sets = _common(d / "lakehouse") + [
            "teacher.type=openai", "teacher.model=teacher", f"teacher.base_url={srv.url}", "teacher.max_retries=0",
            f"extract.batch_size={args.kill_batch}", "extract.partitions=2", "extract.max_in_flight=2"]
        ctx = _ctx(spark, sets)
        rows = synthetic_examples(n_per_label, "train")
        seed_examples(ctx, rows)
        ids = {r["example_id"] for r in rows}
        micro = lambda: ctx.store.read("micro_instructions").where(F.col("teacher_model") == "openai:teacher")  # noqa: E731
        t0 = time.perf_counter()
        runs = kill_and_resume(srv, pld_args(["extract"], CONFIG, sets), cwd=d, env=pld_env(), rng=rng,
                               kills=args.kills, max_step=3 * args.kill_batch, count_rows=lambda: micro().count(),
                               delay_s=2 * latency, timeout=3600)
        final = micro().collect()
        keys = [request_key(e["body"]) for e in srv.log]
        per = Counter(r.example_id for r in final)
        out["extract"] = {
            "examples": len(ids), "kills": args.kills, "batch_size": args.kill_batch, "latency_ms": args.latency_ms,
            "runs": [{"killed": r["killed"], "requests": r["requests"], "rows_committed_after": r["rows"]} for r in runs],
            "requests": len(keys), "calls_repeated": len(keys) - len(set(keys)),
            "repeat_bound": args.kills * args.kill_batch,
            "duplicates": sum(c - 1 for c in per.values()), "lost": len(ids - set(per)),
            "error_rows": sum(1 for r in final if r.error is not None), "wall_s": round(time.perf_counter() - t0, 1)}
        print(f"[kills] extract: {out['extract']['runs']}; repeated calls {out['extract']['calls_repeated']} "
              f"(bound {out['extract']['repeat_bound']})", flush=True)
    finally:
        srv.stop()

    # score
    srv = PipelineServer(latency_s=latency).start()
    try:
        d = work / "kills-score"
        d.mkdir(parents=True, exist_ok=True)
        chunk = args.kill_batch
        sets = _common(d / "lakehouse") + [
            "student.type=openai", "student.model=student", f"student.base_url={srv.url}", "student.max_retries=0",
            "score.engine=local", f"score.chunk_rows={chunk}", "score.ray.batch_size=2"]
        ctx = _ctx(spark, sets)
        version = seed_prompt(ctx, [PromptRule("r-prof", "profession", "If a job is named, the label is profession.")],
                              kind="bench")
        docs = d / "docs.jsonl"
        words = ["nurse", "mother", "somali", "bible", "plumber", "bride", "chemist", "hindu"]
        texts = {f"doc-{i:04d}": f"Context: The {words[i % len(words)]} arrived.\nSentence: The "
                                 f"{words[i % len(words)]} arrived early on day {i}." for i in range(4 * n_per_label)}
        docs.write_text("".join(json.dumps({"doc_id": k, "text": t}) + "\n" for k, t in texts.items()))
        preds = lambda: ctx.store.read("predictions").where(  # noqa: E731
            (F.col("prompt_version") == version) & (F.col("condition") == "score"))

        def chunk_sizes():
            done = {r.doc_id for r in preds().where(F.col("error").isNull()).select("doc_id").collect()}
            todo = spark.read.json(str(docs)).where(~F.col("doc_id").isin(list(done) or ["-"]))
            n = todo.count()
            k = max(1, math.ceil(n / chunk))
            if n == 0 or k == 1:
                return [n]
            return sorted(r["count"] for r in todo.groupBy(F.pmod(F.xxhash64("doc_id"), F.lit(k))).count().collect())

        t0 = time.perf_counter()
        runs = kill_and_resume(srv, pld_args(["score", "--prompt-version", version, "--input", str(docs)], CONFIG,
                                             sets), cwd=d, env=pld_env(), rng=rng, kills=args.kills,
                               max_step=3 * chunk, count_rows=lambda: preds().count(), before_run=chunk_sizes,
                               delay_s=2 * latency, timeout=3600)
        final = preds().collect()
        keys = [request_key(e["body"]) for e in srv.log]
        per = Counter(r.doc_id for r in final)
        out["score"] = {
            "documents": len(texts), "kills": args.kills, "chunk_rows": chunk, "latency_ms": args.latency_ms,
            "runs": [{"killed": r["killed"], "requests": r["requests"], "rows_committed_after": r["rows"],
                      "largest_chunk": max(r["extra"]) if r["extra"] else 0} for r in runs],
            "requests": len(keys), "calls_repeated": len(keys) - len(set(keys)),
            "repeat_bound": sum(max(r["extra"]) for r in runs[:-1] if r["extra"]),
            "duplicates": sum(c - 1 for c in per.values()), "lost": len(set(texts) - set(per)),
            "error_rows": sum(1 for r in final if r.error is not None),
            "labels_outside_set": sum(1 for r in final if r.label not in ctx.cfg.task.label_names),
            "wall_s": round(time.perf_counter() - t0, 1)}
        print(f"[kills] score: {out['score']['runs']}; repeated calls {out['score']['calls_repeated']} "
              f"(bound {out['score']['repeat_bound']})", flush=True)
    finally:
        srv.stop()
    return out


# ------------------------------------------------------------------------------------------ concurrency
def phase_concurrency(spark, work: Path, args) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from tests.distill_fakes import seed_examples, synthetic_examples
    from tests.integration.servers import PipelineServer, PldProcess, has_traceback, pld_args, pld_env

    srv = PipelineServer(latency_s=args.latency_ms / 1000.0).start()
    try:
        d = work / "concurrency"
        d.mkdir(parents=True, exist_ok=True)
        sets = _common(d / "lakehouse") + [
            "teacher.type=openai", "teacher.model=teacher", f"teacher.base_url={srv.url}",
            f"extract.batch_size={args.kill_batch}", "extract.partitions=2"]
        ctx = _ctx(spark, sets)
        rows = synthetic_examples(max(2, math.ceil(args.kill_examples / 4)), "train")
        seed_examples(ctx, rows)
        t0 = time.perf_counter()
        procs = [PldProcess(pld_args(["extract"], CONFIG, sets), cwd=d, env=pld_env(), log_prefix=d / f"extract-{i}")
                 for i in range(2)]
        rcs = [p.wait(timeout=3600) for p in procs]
        micro = ctx.store.read("micro_instructions").where(F.col("teacher_model") == "openai:teacher").collect()
        per = Counter(r.example_id for r in micro)
        versions = sorted(r.version for r in ctx.store.history("micro_instructions").select("version").collect())
        res = {"processes": 2, "examples": len(rows), "exit_codes": rcs,
               "tracebacks": sum(has_traceback(p.stderr) for p in procs),
               "error_lines": [ln for p in procs for ln in p.stderr.splitlines() if ln.startswith("error:")],
               "rows": len(micro), "duplicate_keys": sum(c - 1 for c in per.values()),
               "lost": len({r["example_id"] for r in rows} - set(per)),
               "teacher_calls": len(srv.log), "history_contiguous": versions == list(range(len(versions))),
               "commits": len(versions), "wall_s": round(time.perf_counter() - t0, 1)}
        print(f"[concurrency] exit codes {rcs}; {res['rows']} rows, {res['duplicate_keys']} duplicated keys, "
              f"{res['teacher_calls']} teacher calls for {len(rows)} examples", flush=True)
        return res
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------ main
def summary(res: dict[str, Any]) -> str:
    lines = []
    f = res.get("faults")
    if f:
        r1, r2 = f["run1"], f["rerun"]
        lines.append("Teacher faults (real SmolLM2 behind the fault server)")
        lines.append(text_table(["figure", "value"], [
            ["examples", r1["examples"]], ["fault rate (configured)", f["config"]["fault_rate"]],
            ["requests (run 1)", r1["requests"]], ["faults injected", r1["faults_total"]],
            *[[f"  {k}", v] for k, v in sorted(r1["faults_injected"].items())],
            ["results (rules)", r1["results"]], ["error rows", r1["error_rows"]],
            *[[f"  {k}", v] for k, v in sorted(r1["error_types"].items())],
            ["duplicates", r1["duplicates"]], ["missing examples", r1["missing"]],
            ["server requests == sum(attempts)", str(r1["requests_equal_attempts"])],
            ["examples with attempts mismatch", r1["examples_with_attempts_mismatch"]],
            ["calls over the retry budget", r1["calls_over_retry_budget"]],
            ["429 retries earlier than Retry-After", r1["retries_after_429_too_early"]],
            ["re-run: requests", r2["requests"]], ["re-run: examples sent", r2["examples_sent"]],
            ["re-run: successes re-sent", r2["successes_resent"]], ["re-run: completed", r2["completed"]],
            ["re-run: still errored", len(r2["still_errored"])], ["re-run: duplicates", r2["duplicates"]]]))
    k = res.get("kills")
    if k:
        lines.append("\nkill -9 and resume")
        rows = []
        for name in ("extract", "score"):
            x = k.get(name)
            if x:
                rows.append([name, x["kills"], x["requests"], x["calls_repeated"], x["repeat_bound"], x["duplicates"],
                             x["lost"], x["error_rows"]])
        lines.append(text_table(["command", "kills", "requests", "calls repeated", "bound", "duplicates", "lost",
                                 "error rows"], rows))
    c = res.get("concurrency")
    if c:
        lines.append("\nTwo `pld extract` at once")
        lines.append(text_table(["exit codes", "rows", "duplicate keys", "lost", "teacher calls", "tracebacks"],
                                [[str(c["exit_codes"]), c["rows"], c["duplicate_keys"], c["lost"], c["teacher_calls"],
                                  c["tracebacks"]]]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=300, help="train examples in the fault phase (real model)")
    ap.add_argument("--fault-rate", type=float, default=0.2)
    ap.add_argument("--max-retries", type=int, default=2, help="teacher.max_retries in the fault phase")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="teacher timeout; hangs last 5 s longer")
    ap.add_argument("--max-tokens", type=int, default=56)
    ap.add_argument("--batch-size", type=int, default=16, help="extract.batch_size in the fault phase")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--kill-examples", type=int, default=80, help="rows in the kill and concurrency phases")
    ap.add_argument("--kill-batch", type=int, default=8, help="extract batch / score chunk in the kill phase")
    ap.add_argument("--latency-ms", type=int, default=250, help="answer latency of the stand-in server")
    ap.add_argument("--phases", default="faults,kills,concurrency")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="kept if given; a temporary folder otherwise")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    from pld_spark.config import SparkConfig
    from pld_spark.engines.spark import get_spark

    started = time.perf_counter()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="pld-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    spark = get_spark(SparkConfig(master="local[2]", shuffle_partitions=2, ui=False, driver_memory="2g"))
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    res: dict[str, Any] = {"load_before": loadavg()}
    try:
        if "faults" in phases:
            res["faults"] = phase_faults(spark, work, args)
        if "kills" in phases:
            res["kills"] = phase_kills(spark, work, args)
        if "concurrency" in phases:
            res["concurrency"] = phase_concurrency(spark, work, args)
    finally:
        spark.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    res["load_after"] = loadavg()
    print("\n" + summary(res))
    path = write_result("reliability", {"args": vars(args), **res}, started)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
