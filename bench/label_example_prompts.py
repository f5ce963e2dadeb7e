"""Write diagnostic prompt versions: a stored prompt's rules with label examples chosen by a given
k-means seed and count, and the same examples without the rules, so ``pld evaluate
--prompt-version`` and ``pld compare`` can measure each on the same rows (BENCHMARKS.md, label
examples: the "seed 0" rows).

    .venv/bin/python bench/label_example_prompts.py --config conf/stereoset_local_large.yaml \
        --set lakehouse.path=/work/bench_lake/ss/lakehouse --rules-from pv-4c6d551cd0ee --per-label 3 --seed 0

Uses the product's own choice (:func:`pld_spark.prompts.examples.label_medoids`, MiniLM) and
assembly; prints the two prompt versions it wrote (kind ``pld_diag``). No model call.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_config_args, load_cfg  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(ap, "conf/stereoset_local_large.yaml")
    ap.add_argument("--rules-from", required=True, help="prompt version whose rules (texts as stored) to keep")
    ap.add_argument("--per-label", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="k-means random_state")
    args = ap.parse_args()
    from pld_spark.context import RunContext
    from pld_spark.pipeline.embedders import MiniLMEmbedder
    from pld_spark.prompts.examples import SHOT_COLUMNS, as_shots, label_medoids
    from pld_spark.prompts.student import PromptRule, assemble
    from pld_spark.prompts.versions import PromptVersion, PromptVersions
    from pld_spark.storage.readers import example_rows

    cfg = load_cfg(args.config, args.set)
    ctx = RunContext(cfg, "bench-label-example-prompts")
    chosen = label_medoids(example_rows(ctx, "train", SHOT_COLUMNS), MiniLMEmbedder(), cfg.task.label_names,
                           args.per_label, seed=args.seed)
    shots = as_shots(chosen, cfg.consolidate.exemplar_max_chars, cfg.task.input_template)
    versions = PromptVersions(ctx.store, cfg.task.name)
    rules = [PromptRule(r["rule_id"], r["label"], r["instruction"], int(r.get("support") or 0))
             for r in versions.rules(args.rules_from)]
    for name, rs in (("rules + examples", rules), ("examples only", [])):
        v = PromptVersion.from_assembled(cfg.task.name, "pld_diag", assemble(cfg.task, rs, shots=shots),
                                         parent_version=args.rules_from)
        versions.write([v])
        print(f"{name}: {v.prompt_version} ({len(v.example_ids)} examples, {len(rs)} rules)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
