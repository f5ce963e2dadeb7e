"""evaluate's pure parts: shots, the conditions to run, PLD prompt lookup
(:mod:`pld_spark.prompts.conditions`) and the metrics rows (:func:`pld_spark.pipeline.evaluate.transform`),
no Spark, no model.

The stage with the real student is tests/integration/test_evaluate_real_model.py; report
rendering of reused conditions is tests/unit/test_report.py.
"""
import json

import pandas as pd
import pytest

from pld_spark.config import load_config
from pld_spark.pipeline.evaluate import Scored, transform
from pld_spark.prompts import conditions as C
from pld_spark.prompts.conditions import PLD_ALIASES, Condition, build_conditions, resolve_pld
from pld_spark.prompts.student import approx_tokens
from pld_spark.prompts.versions import PromptNotFoundError, PromptRef, version_id
from pld_spark.scoring import result_frame, result_row
from tests.conftest import CONF

LABELS = ["gender", "profession", "race", "religion"]


def _cfg(*sets):
    return load_config(CONF / "stereoset.yaml", list(sets))


def test_select_shots_stratified_and_seeded():
    train = pd.DataFrame({"example_id": [f"e{i}" for i in range(12)], "input_text": [f"t{i}" for i in range(12)],
                          "label": ["a"] * 6 + ["b"] * 4 + ["c"] * 2})
    shots = C.select_shots(train, 5, ["a", "b", "c"], seed=3)
    assert len(shots) == 5 and len({s["example_id"] for s in shots}) == 5
    assert {s["label"] for s in shots} == {"a", "b", "c"}  # every label when k allows
    assert shots == C.select_shots(train, 5, ["a", "b", "c"], seed=3)
    assert [s["example_id"] for s in shots] != [
        s["example_id"] for s in C.select_shots(train, 5, ["a", "b", "c"], seed=4)]
    two = C.select_shots(train, 2, ["a", "b", "c"], seed=3)
    assert len({s["label"] for s in two}) == 2  # k < labels: distinct labels as far as k allows
    assert len(C.select_shots(train, 50, ["a", "b", "c"], seed=3)) == 12


class _Versions:
    """PromptVersions.resolve over a dict: alias or version -> PromptRef (unknown: PromptNotFoundError)."""

    def __init__(self, refs):
        self.refs = refs

    def resolve(self, ref):
        if ref not in self.refs:
            raise PromptNotFoundError(f"prompt '{ref}' is neither a prompt version nor an alias")
        return self.refs[ref]


CLUSTERED = PromptRef("pv-c", "Rules: 1. [race] a country.", "pld_cluster", "clustered")


def test_resolve_pld_reports_missing_aliases_and_raises_for_an_explicit_reference():
    got = resolve_pld(_Versions({"clustered": CLUSTERED}))
    assert set(got) == set(PLD_ALIASES) and got["pld_cluster"] is CLUSTERED
    for name, alias in PLD_ALIASES.items():
        if alias != "clustered":
            assert got[name] == f"prompt '{alias}' is neither a prompt version nor an alias (run `pld distill` first)"
    live = PromptRef("pv-l", "live text", "pld_resolved", "live")
    assert resolve_pld(_Versions({"live": live}), "live") == {"pld": live}
    with pytest.raises(PromptNotFoundError, match="prompt 'pv-x'"):
        resolve_pld(_Versions({}), "pv-x")


def test_build_conditions_in_config_order_with_skips():
    cfg = _cfg("evaluate.conditions=[zero_shot, few_shot, pld_cluster, pld_resolved, cot]", "evaluate.few_shot_k=2")
    train = pd.DataFrame({"example_id": ["a", "b", "c"], "input_text": ["x", "y", "z"],
                          "label": ["race", "gender", "race"]})
    conds, skipped = build_conditions(cfg, approx_tokens, train,
                                      {"pld_cluster": CLUSTERED, "pld_resolved": "no 'resolved' alias"})
    assert [c.name for c in conds] == ["zero_shot", "few_shot", "pld_cluster", "cot"]
    assert skipped == {"pld_resolved": "no 'resolved' alias"}
    by = {c.name: c for c in conds}
    assert by["zero_shot"].prompt_version == version_id(by["zero_shot"].text)  # stored under its content address
    assert by["cot"].text.startswith(by["zero_shot"].text) and by["cot"].label_system == by["zero_shot"].text
    assert len(by["few_shot"].shots) == 2 and by["few_shot"].note == f"k=2 (seed {cfg.evaluate.seed})"
    assert (by["pld_cluster"].prompt_version, by["pld_cluster"].kind) == ("pv-c", "pld_cluster")
    assert by["pld_cluster"].note == "alias 'clustered'" and by["pld_cluster"].token_count == approx_tokens(
        CLUSTERED.text)
    # no train rows: few_shot is skipped, not an error
    _, skipped = build_conditions(cfg, approx_tokens, train.head(0), {})
    assert skipped["few_shot"] == "no train examples for the shots"
    assert skipped["pld_cluster"] == "no prompt for pld_cluster"
    # an explicit --prompt-version replaces both alias conditions with `pld`
    explicit = PromptRef("pv-l", "live text", "pld_resolved", "live")
    conds, skipped = build_conditions(cfg, approx_tokens, train, {"pld": explicit})
    assert [c.name for c in conds] == ["zero_shot", "few_shot", "cot", "pld"] and skipped == {}
    assert conds[-1].prompt_version == "pv-l" and conds[-1].note == "alias 'live'"
    baseline = C.baseline_versions("stereoset", conds, "run-1")
    assert sorted(v.kind for v in baseline) == ["cot", "few_shot", "zero_shot"]
    assert all(v.prompt_version == version_id(v.text) for v in baseline)


def _scored(name, gold, pred, latency):
    rows = [result_row(f"d{i}", "llamacpp", "m", "batch", label=p, probabilities={p: 1.0}, latency_s=latency,
                       tokens_in=100) for i, p in enumerate(pred)]
    return Scored(result_frame(rows).assign(prompt_version="pv", condition=name), "local", 0.5, "batch")


def test_transform_scores_each_prompt_once_and_reuses_figures():
    cfg = _cfg("evaluate.bootstrap=50")
    gold = LABELS * 2
    test = pd.DataFrame({"doc_id": [f"d{i}" for i in range(8)], "gold": gold})
    conds = [Condition("zero_shot", "pv-z", "z", "zero_shot"),
             Condition("pld_cluster", "pv-kept", "p", "pld_cluster", note="alias 'clustered'"),
             Condition("pld_resolved", "pv-kept", "p", "pld_cluster", note="alias 'distilled'")]
    scored = {"zero_shot": _scored("zero_shot", gold, ["race"] * 8, 0.02),
              "pld_cluster": _scored("pld_cluster", gold, gold, 0.04)}  # pld_resolved: not scored again
    results, rows, preds = transform(conds, scored, test, LABELS, cfg.evaluate, run_id="r1", task="stereoset",
                                     model="m")
    assert list(results) == ["zero_shot", "pld_cluster", "pld_resolved"]
    cl, rs = results["pld_cluster"], results["pld_resolved"]
    assert cl["macro_f1"] == 1.0 and cl["latency_p50"] == pytest.approx(0.04) and results["zero_shot"]["macro_f1"] < 1
    assert rs["reused_from"] == "pld_cluster" and rs["prompt_version"] == "pv-kept" and rs["macro_f1"] == 1.0
    assert rs["latency_p50"] is None and rs["n"] == 8
    assert preds["pld_resolved"] == preds["pld_cluster"] == gold and preds["zero_shot"] == ["race"] * 8
    by = {r["condition"]: r for r in rows}
    assert set(by) == {"zero_shot", "pld_cluster", "pld_resolved"}
    assert by["pld_resolved"]["latency_p50"] is None and by["pld_resolved"]["latency_first"] is None
    assert by["pld_resolved"]["note"] == "alias 'distilled'; same prompt as pld_cluster; figures reused"
    assert by["pld_cluster"]["note"] == "alias 'clustered'" and by["pld_cluster"]["engine"] == "local"
    assert sum(map(sum, json.loads(by["zero_shot"]["confusion"])["matrix"])) == 8
    assert all(r["run_id"] == "r1" and r["task"] == "stereoset" and r["student_model"] == "m" for r in rows)


def test_the_pld_side_of_the_paired_comparisons():
    from types import SimpleNamespace as NS

    from pld_spark.pipeline.evaluate import pld_side

    conds = [NS(name="zero_shot", prompt_version="z"), NS(name="pld_cluster", prompt_version="c"),
             NS(name="pld_selected", prompt_version="c")]
    results = {"zero_shot": {}, "pld_cluster": {}, "pld_selected": {}}
    assert pld_side(results, conds, promoted="c") == "pld_cluster"  # the promoted prompt's condition
    # nothing promoted (or a stale alias from another run): the furthest stage evaluated, not nothing
    assert pld_side(results, conds, promoted=None) == "pld_selected"
    assert pld_side(results, conds, promoted="stale") == "pld_selected"
    assert pld_side({**results, "pld_resolved": {}}, conds, promoted=None) == "pld_resolved"
    assert pld_side({**results, "pld": {}}, conds, promoted="c") == "pld"
    assert pld_side({"zero_shot": {}}, conds[:1], promoted=None) is None
