"""Paired comparisons of the conditions of a stored quality result, in macro-F1 and in accuracy.

    .venv/bin/python bench/paired_result.py bench/results/quality_stereoset_large_v8_label_examples.json \
        pld_cluster:few_shot pld_cluster:few_shot_rules pld_cluster:zero_shot

Macro-F1 weighs each label equally, so on StereoSet's test split its 15 religion rows (3%) carry a
quarter of the score; accuracy weighs each row equally. Both are paired on the same test rows
(percentile bootstrap of the difference a - b, resampling rows), from the predictions the result
stored (``test_predictions``, ``test_gold``): no model is run. Writes
``bench/results/paired_<result name>.json`` and prints the table.

``--without-rows-of OTHER.json`` keeps only the test rows that OTHER did not score: when a run
extends an earlier run's test split (the sampler keeps the earlier rows), the new rows alone are
a replication on rows nobody has seen (written as ``paired_<result>_without_<other>.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import text_table, write_result  # noqa: E402


def paired_accuracy(gold, a, b, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Accuracy difference a - b, its 95% percentile bootstrap CI, and the discordant rows."""
    import numpy as np

    x = np.array([p == g for p, g in zip(a, gold)], dtype=float)
    y = np.array([p == g for p, g in zip(b, gold)], dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_resamples, len(x)))
    d = x[idx].mean(axis=1) - y[idx].mean(axis=1)
    return {"delta": round(float(x.mean() - y.mean()), 4), "ci_low": round(float(np.percentile(d, 2.5)), 4),
            "ci_high": round(float(np.percentile(d, 97.5)), 4), "only_a_right": int(((x == 1) & (y == 0)).sum()),
            "only_b_right": int(((x == 0) & (y == 1)).sum()), "n": len(x)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result", help="a bench/results/quality_*.json written with test predictions")
    ap.add_argument("pairs", nargs="+", help="a:b condition names (a - b)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--without-rows-of", default=None, metavar="OTHER",
                    help="a quality result whose test rows are left out (the rows it did not score)")
    args = ap.parse_args()
    started = time.perf_counter()
    from pld_spark.metrics import paired_bootstrap

    res = json.loads(Path(args.result).read_text())
    labels = res["evaluation_meta"]["labels"]
    ids, gold = res["test_gold"]["doc_ids"], res["test_gold"]["labels"]
    reused = {c["condition"]: c.get("reused_from") for c in res["conditions"]}
    name = f"paired_{Path(args.result).stem}"
    if args.without_rows_of:
        other = json.loads(Path(args.without_rows_of).read_text())
        if "test_gold" not in other:
            ap.error(f"--without-rows-of {args.without_rows_of}: no test_gold (written before results kept "
                     "their test rows)")
        seen = set(other["test_gold"]["doc_ids"])
        keep = [k for k, i in enumerate(ids) if i not in seen]
        if not keep:
            ap.error(f"--without-rows-of {args.without_rows_of}: it scored every test row of {args.result}")
        print(f"{len(keep)} of {len(ids)} test rows not in {args.without_rows_of}")
        ids, gold = [ids[k] for k in keep], [gold[k] for k in keep]
        name += f"_without_{Path(args.without_rows_of).stem}"

    def preds(name: str) -> list:
        p = res["test_predictions"][reused.get(name) or name]
        by_id = dict(zip(p["doc_ids"], p["labels"]))
        return [by_id.get(i) for i in ids]

    out, rows = {}, []
    for pair in args.pairs:
        a, b = pair.split(":")
        f1 = paired_bootstrap(gold, preds(a), preds(b), labels, n_resamples=args.bootstrap)
        acc = paired_accuracy(gold, preds(a), preds(b), n_resamples=args.bootstrap)
        out[f"{a}_vs_{b}"] = {"macro_f1": f1, "accuracy": acc}
        rows.append([f"{a} - {b}", f"{f1['delta']:+.3f} [{f1['ci_low']:+.3f}, {f1['ci_high']:+.3f}]",
                     f"{acc['delta']:+.3f} [{acc['ci_low']:+.3f}, {acc['ci_high']:+.3f}]",
                     f"{acc['only_a_right']} / {acc['only_b_right']}"])
    print(text_table(["comparison", "macro-F1 delta [95% CI]", "accuracy delta [95% CI]", "only a / only b right"],
                     rows))
    write_result(name, {"result": args.result, "without_rows_of": args.without_rows_of, "rows": len(ids),
                        "bootstrap": args.bootstrap, "paired": out}, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
