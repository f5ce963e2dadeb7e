"""What the portable llama.cpp build costs: prefill and generation tokens/s of two or more
llama-cpp-python builds of the same version on this CPU, same model, same prompt.

    .venv/bin/python bench/llama_build.py \
        --build portable=~/.cache/pld_spark/wheels/llama_cpp_python-0.3.36-<key> \
        --build native=/tmp/native-wheels --threads 1 2 --reps 5

Each ``--build NAME=PATH`` is a wheel or a folder holding one; it is installed (``--no-deps``)
into its own target folder and measured in fresh subprocesses that import only that build
(``PYTHONPATH``). Per (build, threads) and repetition, interleaved so load drift hits every
build alike: model load time, prefill tokens/s of a ~``--prompt-tokens`` prompt (one ``eval``
of the whole prompt), and generation tokens/s of ``--gen-tokens`` single-token decode steps
(greedy argmax, no sampling code, end-of-sequence ignored). Medians over repetitions.

Writes ``bench/results/llama_build.json`` with the CPU model and flags (the native build's
speed depends on them: measure on a CPU where the native build runs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, text_table, write_result  # noqa: E402

MEASURE = r'''
import json, sys, time
import numpy as np
from llama_cpp import Llama
import llama_cpp
path, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
llm = Llama(model_path=path, n_ctx=max(512, n_prompt + n_gen + 8), n_threads=threads, n_threads_batch=threads,
            n_batch=512, verbose=False, logits_all=False)
load_s = time.perf_counter() - t0
text = ("The quarterly report describes how the regional teams met their targets, which products sold best, "
        "and what the committee decided about hiring, budgets and the next release. ") * 40
toks = llm.tokenize(text.encode(), add_bos=True)[:n_prompt]
t0 = time.perf_counter(); llm.eval(toks); prefill_s = time.perf_counter() - t0
n_vocab = llm.n_vocab()
t0 = time.perf_counter()
for _ in range(n_gen):
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
    llm.eval([int(logits.argmax())])
gen_s = time.perf_counter() - t0
print(json.dumps({"load_s": load_s, "prefill_tok_s": len(toks) / prefill_s, "gen_tok_s": n_gen / gen_s,
                  "n_prompt": len(toks), "n_gen": n_gen, "llama_cpp": llama_cpp.__file__}))
'''


def install(name: str, src: Path, root: Path) -> Path:
    wheels = [src] if src.is_file() else sorted(src.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise SystemExit(f"--build {name}: no llama_cpp_python wheel at {src}")
    target = root / name
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheels[-1])], check=True)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name or GGUF path")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=384)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--name", default="llama_build")
    args = ap.parse_args()

    from pld_spark.llm.cpu import cpu_flags, cpu_model
    from pld_spark.llm.models import resolve_model_path

    model = str(resolve_model_path(args.model))
    runs: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        builds = {}
        for spec in args.build:
            name, _, path = spec.partition("=")
            builds[name] = install(name, Path(path).expanduser(), Path(tmp))
        load0 = loadavg()
        for rep in range(args.reps):
            for name, target in builds.items():
                for th in args.threads:
                    out = subprocess.run([sys.executable, "-c", MEASURE, model, str(th), str(args.prompt_tokens),
                                          str(args.gen_tokens)], capture_output=True, text=True,
                                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=900)
                    if out.returncode != 0:
                        raise SystemExit(f"{name} threads={th}: exit {out.returncode}\n{out.stderr[-2000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    assert str(target) in r["llama_cpp"], r["llama_cpp"]
                    runs.setdefault((name, th), []).append(r)
                    print(f"rep {rep + 1}: {name:>10} threads={th}: prefill {r['prefill_tok_s']:.0f} tok/s, "
                          f"gen {r['gen_tok_s']:.1f} tok/s", flush=True)
        load1 = loadavg()
    summary = []
    for (name, th), rs in runs.items():
        summary.append({"build": name, "threads": th, "reps": len(rs),
                        "prefill_tok_s": round(statistics.median(r["prefill_tok_s"] for r in rs), 1),
                        "gen_tok_s": round(statistics.median(r["gen_tok_s"] for r in rs), 2),
                        "load_s": round(statistics.median(r["load_s"] for r in rs), 3)})
    base = {(s["threads"]): s for s in summary if s["build"] == list(builds)[0]}
    for s in summary:
        b = base.get(s["threads"])
        s["prefill_vs_first"] = round(s["prefill_tok_s"] / b["prefill_tok_s"], 3) if b else None
        s["gen_vs_first"] = round(s["gen_tok_s"] / b["gen_tok_s"], 3) if b else None
    print(text_table(["build", "threads", "prefill tok/s", "gen tok/s", "load s", "prefill x", "gen x"],
                     [[s["build"], s["threads"], s["prefill_tok_s"], s["gen_tok_s"], s["load_s"],
                       s["prefill_vs_first"], s["gen_vs_first"]] for s in summary]))
    flags = cpu_flags()
    path = write_result(args.name, {
        "model": model, "cpu": cpu_model(), "cpu_flags_of_note": sorted(
            f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "bmi"))),
        "builds": {n: str(p) for n, p in zip(builds, [b.partition("=")[2] for b in args.build])},
        "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "loadavg_during": [load0, load1],
        "summary": summary, "runs": {f"{n}/threads={t}": rs for (n, t), rs in runs.items()}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
