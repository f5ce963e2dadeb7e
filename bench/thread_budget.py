"""Zero-shot latency per example with several concurrent model processes: the old thread default
(every process takes all cores) against the new one (each takes its share of the host).

    .venv/bin/python bench/thread_budget.py --procs 2 --n 40 --rounds 2

Each process builds the student (in-process llama.cpp, the embedded model by default) through the
product's registry, loads it, waits at a barrier until every process has loaded, then classifies
``--n`` StereoSet rows one at a time with the zero-shot prompt (the product's label scoring and
prompt assembly) and reports each row's latency. Conditions:

- ``old``: ``n_threads`` = all cores of the machine in every process (the previous default);
- ``new``: ``n_threads`` unset: the host share of :mod:`pld_spark.llm.threads`;
- ``single``: one process alone with the new default (the reference).

Conditions alternate over ``--rounds``. Writes ``bench/results/thread_budget.json``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_config_args, load_cfg, loadavg, pct, text_table, write_result  # noqa: E402


def _worker(config: str, sets: list[str], n_threads: int | None, texts: list[str], barrier, queue) -> None:
    from pld_spark.llm.registry import build_client
    from pld_spark.prompts.student import assemble

    cfg = load_cfg(config, sets)
    student = build_client(cfg.student.model_copy(update={"n_threads": n_threads, "cache": False}), role="student")
    system = assemble(cfg.task, count_tokens=student.count_tokens).text  # loads the model
    barrier.wait(600)
    lat = []
    t0 = time.perf_counter()
    for t in texts:
        r = student.classify(system, [t], cfg.task.label_names, calibration="none")[0]
        lat.append(r.latency_s)
    wall = time.perf_counter() - t0
    st = student.stats()
    queue.put({"pid": os.getpid(), "latencies": lat, "wall_s": wall, "threads": st.get("threads"),
               "threads_source": st.get("threads_source")})


def run_condition(name: str, procs: int, n_threads: int | None, args, texts: list[str]) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(args.config, args.set, n_threads, texts, barrier, queue))
          for _ in range(procs)]
    load0 = loadavg()
    for p in ps:
        p.start()
    res = [queue.get(timeout=3600) for _ in ps]
    for p in ps:
        p.join(60)
    lat = [x for r in res for x in r["latencies"]]
    return {"condition": name, "processes": procs, "n_threads_config": n_threads,
            "threads_chosen": [r["threads"] for r in res], "threads_source": [r["threads_source"] for r in res],
            "rows_per_process": len(texts), "latency_mean_s": statistics.mean(lat), "latency_p50_s": pct(lat, 50),
            "latency_p95_s": pct(lat, 95), "wall_s_per_process": [round(r["wall_s"], 2) for r in res],
            "loadavg_before_after": [load0, loadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(ap)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--name", default="thread_budget")
    args = ap.parse_args()
    started = time.perf_counter()
    cfg = load_cfg(args.config, args.set)
    from pld_spark.data.loaders import load_stereoset

    loaded = load_stereoset(cfg.dataset.path, cfg.dataset.options)
    texts = [cfg.task.input_template.format(text=r["text"], pair=r.get("pair") or "") for r in loaded.rows[:args.n]]
    cores = os.cpu_count() or 1
    plan = [("old", args.procs, cores), ("new", args.procs, None), ("single", 1, None)]
    results = []
    for rnd in range(args.rounds):
        for name, procs, th in plan:
            r = run_condition(name, procs, th, args, texts)
            r["round"] = rnd + 1
            results.append(r)
            print(f"round {rnd + 1} {name}: threads {r['threads_chosen']}, mean {r['latency_mean_s'] * 1000:.0f} ms, "
                  f"p95 {r['latency_p95_s'] * 1000:.0f} ms", flush=True)
    rows = []
    for name, procs, _ in plan:
        rs = [r for r in results if r["condition"] == name]
        rows.append([name, procs, str(rs[0]["threads_chosen"]),
                     round(statistics.mean(r["latency_mean_s"] for r in rs) * 1000, 1),
                     round(statistics.mean(r["latency_p50_s"] for r in rs) * 1000, 1),
                     round(statistics.mean(r["latency_p95_s"] for r in rs) * 1000, 1)])
    print(text_table(["condition", "processes", "threads", "mean ms", "p50 ms", "p95 ms"], rows))
    path = write_result(args.name, {"student": cfg.student.model, "cores": cores, "rows": args.n,
                                    "summary": [dict(zip(["condition", "processes", "threads", "mean_ms", "p50_ms",
                                                          "p95_ms"], r)) for r in rows],
                                    "runs": results}, started)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
