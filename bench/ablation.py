"""Ablations of the quality benchmark: each improvement switched off in turn, same split, same
models, with the paired difference on the same test rows against the full run.

    .venv/bin/python bench/ablation.py --config conf/stereoset_local_large.yaml \
        --lakehouse /work/bench_lake/stereoset --baseline bench/results/quality_stereoset_large.json \
        --only calibration embedder clustering

Every variant is one ``bench/quality.py`` run in the same ``--lakehouse`` (the teacher's
extractions, consolidations and the student's label scores are cached there by content, so a
variant pays only for the prompts it changes) with the ``--set`` overrides of :data:`VARIANTS`.
Its PLD prompt (the run's ``pld`` side: the promoted prompt, else the loop's) is compared with
the baseline's on the same test rows by a paired bootstrap of the macro-F1 difference
(baseline - variant: positive = the step helps). Variants evaluate only the conditions they
need (``evaluate.conditions``), so zero-/few-shot prompts are not scored again.

Writes ``bench/results/ablation_<task>.json`` (``--name``) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, text_table, write_result  # noqa: E402

#: step -> (what is switched off, overrides restoring the behaviour before the step)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "calibration": ("0. calibration chosen on validation -> batch centring (the old default)",
                    ["student.calibration=batch"]),
    "calibration_cv": ("0b. calibration candidates judged in-sample on val -> by 5-fold cross-validation",
                       ["student.calibration_folds=5"]),
    "embedder": ("1. semantic embedder of rule conditions -> TF-IDF + SVD of whole rules",
                 ["cluster.embedder.type=tfidf_svd", "cluster.embedder.condition_only=false"]),
    "clustering": ("2. per-label clustering, eps from the data, central fallback -> one DBSCAN, eps 0.4, min_samples 6",
                   ["cluster.group_by=null", "cluster.clusterer.eps=0.4", "cluster.clusterer.min_samples=6",
                    "cluster.central_fallback=false"]),
    "consolidation": ("3. consolidation with member inputs and the keyword-trigger check -> rules only, no check",
                      ["consolidate.template_version=consolidate-v1", "consolidate.keyword_check=false"]),
    "selection": ("4. rule selection on validation -> keep every rule", ["select.mode=off"]),
    "loop": ("5. grouped failures, retry, paired acceptance -> flat failures, bare +min_delta",
             ["resolve.template_version=resolve-v1", "resolve.retry_empty=false", "resolve.accept_confidence=0.5"]),
    "exemplars": ("6b. one cluster-chosen example under each rule -> rules only", ["consolidate.exemplars=false"]),
    "label_examples": ("6c. label examples (k-means medoids of each label's train inputs) after the rules -> "
                       "one cluster exemplar under each rule", ["consolidate.label_examples=0",
                                                                 "consolidate.exemplars=true"]),
    "group_priors": ("6d. one rule per group (Contract-NLI: hypothesis) with its train label counts -> none",
                     ["consolidate.group_priors=0"]),
}
CONDITIONS = '["zero_shot","zero_shot_bare","pld_resolved"]'


def pld_preds(result: dict) -> tuple[str, dict]:
    name = result.get("evaluation_meta", {}).get("pld_condition") or "pld_resolved"
    # a condition with the same prompt as an earlier one keeps no predictions of its own
    reused = {c["condition"]: c.get("reused_from") for c in result.get("conditions", [])}
    return name, result["test_predictions"][reused.get(name) or name]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--task", default="stereoset", choices=["stereoset", "contractnli"])
    ap.add_argument("--lakehouse", required=True, help="the baseline's lakehouse (its caches make variants cheap)")
    ap.add_argument("--baseline", required=True, help="the full run's bench/results/quality_*.json")
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default: all)")
    ap.add_argument("--set", action="append", default=[], help="extra overrides for every variant")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    started = time.perf_counter()
    from pld_spark.metrics import mcnemar, paired_bootstrap

    base = json.loads(Path(args.baseline).read_text())
    labels = base["evaluation_meta"]["labels"]
    base_name, base_p = pld_preds(base)
    gold_by_doc = dict(zip(base["test_gold"]["doc_ids"], base["test_gold"]["labels"]))
    rows, out = [], {}
    for key in args.only or list(VARIANTS):
        what, sets = VARIANTS[key]
        name = f"{args.name or 'ablation_' + args.task}_{key}"
        cmd = [sys.executable, str(Path(__file__).parent / "quality.py"), "--task", args.task, "--config", args.config,
               "--lakehouse", args.lakehouse, "--name", name, "--set", f"evaluate.conditions={CONDITIONS}",
               *[a for s in [*sets, *args.set] for a in ("--set", s)]]
        print(f"== {key}: {what}\n   {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, text=True)
        if proc.returncode != 0:
            out[key] = {"what": what, "sets": sets, "error": f"exit {proc.returncode}"}
            continue
        var = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        var_name, var_p = pld_preds(var)
        docs = base_p["doc_ids"]
        if var_p["doc_ids"] != docs:
            raise SystemExit(f"{key}: the variant scored other test rows than the baseline")
        gold = [gold_by_doc.get(d) for d in docs]
        st = paired_bootstrap(gold, base_p["labels"], var_p["labels"], labels, n_resamples=args.bootstrap, seed=0)
        mc = mcnemar(gold, base_p["labels"], var_p["labels"])
        f1 = {c["condition"]: c["macro_f1"] for c in var["conditions"]}
        out[key] = {"what": what, "sets": sets, "variant_pld": var_name, "variant_macro_f1": f1.get(var_name),
                    "variant_promoted": var["evaluation_meta"].get("pld_promoted"),
                    "baseline_minus_variant": {k: round(v, 4) for k, v in st.items() if k != "n"},
                    "mcnemar_p": round(mc["p_value"], 4), "wall_s": round(time.perf_counter() - t0, 1),
                    "result_file": f"bench/results/{name}.json"}
        rows.append([key, f"{f1.get(var_name, float('nan')):.3f}", f"{st['delta']:+.3f}",
                     f"[{st['ci_low']:+.3f}, {st['ci_high']:+.3f}]", f"{st['p_a_better']:.0%}"])
        print(text_table(["switched off", "variant PLD F1", "full - variant", "95% CI", "full better in"], rows),
              flush=True)
    base_f1 = {c["condition"]: c["macro_f1"] for c in base["conditions"]}.get(base_name)
    path = write_result(args.name or f"ablation_{args.task}", {
        "config": args.config, "baseline": args.baseline, "baseline_pld": base_name, "baseline_macro_f1": base_f1,
        "variants": out}, started)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
