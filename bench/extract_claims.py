"""What batch claims (``extract_claims``) cost a single extract run.

Each batch of ``pld extract`` first claims its ids with one Delta MERGE and reads the claims
back, so two overlapping runs split the work (see pld_spark/pipeline/extract.py). This
measures the price of that when no other run is around: ``extract.run`` end to end (real
Spark + Delta, the ``openai`` backend) against the same local stub teacher as
``bench/extract_throughput.py`` (fixed added latency per call, valid extraction JSON), on a
fresh lakehouse per run, with ``extract.claim`` false (the baseline) and true, alternating,
in this process. Ingest is not timed; a warm-up run first pays the JVM's one-off costs.

    .venv/bin/python bench/extract_claims.py --n 128 --batch-size 16 --reps 2

Prints per-run wall times, the on/off ratio and the added seconds per batch; writes
``bench/results/extract_claims.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, add_config_args, load_cfg, text_table, write_result  # noqa: E402
from extract_throughput import StubProcess, example_rows  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    ap.add_argument("--n", type=int, default=128, help="train examples per run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--latency-ms", type=float, default=300.0, help="stub's added latency per call")
    ap.add_argument("--reps", type=int, default=2, help="runs per condition (alternating off, on)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--name", default="extract_claims")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="pld-bench-claims-"))
    with StubProcess(args.latency_ms) as stub:
        from pld_spark.context import RunContext
        from pld_spark.engines.spark import get_spark
        from pld_spark.pipeline import extract, ingest

        base = [*args.set, "teacher.type=openai", f"teacher.base_url={stub.url}", "teacher.model=stub-teacher",
                "teacher.cache=false", "teacher.requests_per_minute=null", "teacher.tokens_per_minute=null",
                f"extract.batch_size={args.batch_size}", f"extract.max_in_flight={args.in_flight}"]
        rows = example_rows(load_cfg(args.config, base), args.n, args.seed)
        data = root / "train.jsonl"
        data.write_text("".join(json.dumps({"id": r["example_id"], "text": r["input_text"], "label": r["label"],
                                            "split": "train"}) + "\n" for r in rows), encoding="utf-8")
        base += ["dataset.loader=generic", f"dataset.path={data}", "dataset.columns.id=id",
                 "dataset.columns.split=split"]
        spark = get_spark(load_cfg(args.config, base).spark)

        def one(tag: str, claim: bool, n_rows: int | None = None) -> dict:
            sets = [*base, f"lakehouse.path={root / tag}", f"extract.claim={str(claim).lower()}"]
            sets.append(f"dataset.sample.train={n_rows if n_rows is not None else 'null'}")
            ctx = RunContext(load_cfg(args.config, sets), command="bench").replace(spark=spark)
            ingest.run(ctx)
            stub.get("/reset")
            with Timer() as t:
                counts = extract.run(ctx)
            calls = stub.get("/stats")["requests"]
            assert counts["sent"] == calls == counts["train_examples"], (counts, calls)
            return {"run": tag, "claim": claim, "n": counts["sent"], "batches": counts["batches"],
                    "wall_s": round(t.s, 2), "server_requests": calls, "load_after": t.load_after}

        one("warmup", True, n_rows=16)
        runs = []
        for rep in range(args.reps):
            for claim in (False, True):
                r = one(f"rep{rep}-{'on' if claim else 'off'}", claim)
                print(f"{r['run']:<10} claim={claim!s:<5} {r['wall_s']:>7.2f}s  {r['batches']} batches", flush=True)
                runs.append(r)
        spark.stop()
    off = statistics.median(r["wall_s"] for r in runs if not r["claim"])
    on = statistics.median(r["wall_s"] for r in runs if r["claim"])
    batches = runs[0]["batches"]
    summary = {"median_wall_off_s": off, "median_wall_on_s": on, "ratio_on_off": round(on / off, 3),
               "added_s_per_batch": round((on - off) / batches, 2), "batches": batches}
    print()
    print(text_table(("run", "claim", "n", "batches", "wall_s"),
                     [(r["run"], str(r["claim"]), r["n"], r["batches"], r["wall_s"]) for r in runs]))
    print(f"\nmedian wall: claims off {off:.2f}s, on {on:.2f}s; ratio on/off {summary['ratio_on_off']}; "
          f"{summary['added_s_per_batch']}s added per batch ({batches} batches of {args.batch_size}, "
          f"{args.latency_ms:.0f} ms per call, {args.in_flight} in flight)")
    path = write_result(args.name, {"args": vars(args), "runs": runs, "summary": summary}, started)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
