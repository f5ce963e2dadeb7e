"""The no-model reference of a grouped task, paired with the conditions of a stored quality result.

    .venv/bin/python bench/group_majority.py bench/results/quality_contractnli_large_v5_group_priors.json \
        --config conf/contractnli_local_large.yaml --set lakehouse.path=/work/bench_lake/cn5/lakehouse

Each test row is answered with the most frequent train label of its group (``cluster.group_by``,
e.g. Contract-NLI's hypothesis; ties: the task's label order; a group with no train row: the most
frequent train label overall), counted on the train rows the run used (its lakehouse). No model
is run. Macro-F1 of that answer, and the paired bootstrap of every stored condition minus it on
the same test rows (``test_predictions``, ``test_gold``). Writes
``bench/results/group_majority_<result name>.json`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_config_args, load_cfg, text_table, write_result  # noqa: E402


def majority_by_group(train: list[dict], column: str, labels: list[str]) -> tuple[dict[str, str], str]:
    """group value -> its most frequent train label, and the overall most frequent label."""
    def top(counts: Counter) -> str:
        return min(labels, key=lambda lab: (-counts[lab], labels.index(lab)))

    by: dict[str, Counter] = {}
    for r in train:
        by.setdefault(" ".join(str(r[column] or "").split()), Counter())[r["label"]] += 1
    return {g: top(c) for g, c in by.items()}, top(Counter(r["label"] for r in train))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result", help="a bench/results/quality_*.json written with test predictions")
    add_config_args(ap, None)
    ap.add_argument("--bootstrap", type=int, default=2000)
    args = ap.parse_args()
    started = time.perf_counter()
    from pld_spark.context import RunContext
    from pld_spark.metrics import macro_f1, paired_bootstrap
    from pld_spark.storage.readers import example_rows

    res = json.loads(Path(args.result).read_text())
    cfg = load_cfg(args.config, args.set)
    column = cfg.cluster.group_by
    if column in (None, "label"):
        raise SystemExit(f"cluster.group_by is {column!r} in {args.config}: the reference needs a group column of "
                         "the examples (Contract-NLI: pair); pass it with --set cluster.group_by=<column>")
    labels = res["evaluation_meta"]["labels"]
    ids, gold = res["test_gold"]["doc_ids"], res["test_gold"]["labels"]
    ctx = RunContext(cfg, "bench-group-majority")
    majority, overall = majority_by_group(example_rows(ctx, "train", ("example_id", "label", column)), column, labels)
    group_of = {r["example_id"]: " ".join(str(r[column] or "").split())
                for r in example_rows(ctx, "test", ("example_id", column))}
    missing = [i for i in ids if i not in group_of]
    if missing:
        raise SystemExit(f"{len(missing)} test rows of the result are not in this lakehouse's test split, e.g. "
                         f"{missing[:3]}: pass the run's --config and lakehouse")
    ref = [majority.get(group_of[i], overall) for i in ids]
    reused = {c["condition"]: c.get("reused_from") for c in res["conditions"]}
    out = {"group_majority": {"macro_f1": round(macro_f1(gold, ref, labels), 4),
                              "accuracy": round(sum(p == g for p, g in zip(ref, gold)) / len(gold), 4),
                              "predicted": dict(Counter(ref)), "groups_in_train": len(majority)}}
    rows = [["group majority (no model)", out["group_majority"]["macro_f1"], "-"]]
    for c in res["conditions"]:
        name = c["condition"]
        p = res["test_predictions"][reused.get(name) or name]
        by_id = dict(zip(p["doc_ids"], p["labels"]))
        pred = [by_id.get(i) for i in ids]
        d = paired_bootstrap(gold, pred, ref, labels, n_resamples=args.bootstrap)
        out[f"{name}_vs_group_majority"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
        rows.append([name, round(macro_f1(gold, pred, labels), 4),
                     f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"])
    print(text_table(["condition", "test macro-F1", "minus group majority [95% CI]"], rows))
    write_result(f"group_majority_{Path(args.result).stem}", {"result": args.result, "group_by": column,
                                                               "bootstrap": args.bootstrap, "paired": out}, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
