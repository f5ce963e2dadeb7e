"""Conflict-loop logic: sampling, operations, metric (no Spark)."""
import json

from pld_spark.config import load_config
from pld_spark.pipeline.resolve import RuleSet, apply_operations, macro_f1, score, stratified_sample
from tests.conftest import CONF
from tests.distill_fakes import KeywordStudent

LABELS = load_config(CONF / "stereoset.yaml").task.label_names


def test_macro_f1_over_the_label_set():
    assert macro_f1(["race", "gender"], ["race", "gender"], LABELS) == 0.5  # 2 of 4 labels absent -> 0
    assert macro_f1(["race", "race"], ["race", "<none>"], ["race"]) == 2 / 3
    assert macro_f1([], [], LABELS) == 0.0


def test_stratified_sample_covers_confusions_and_is_seeded():
    rows = ([{"example_id": f"g{i}", "label": "gender", "pred": "race"} for i in range(5)]
            + [{"example_id": f"h{i}", "label": "gender", "pred": "religion"} for i in range(5)]
            + [{"example_id": f"p{i}", "label": "profession", "pred": "race"} for i in range(1)])
    s = stratified_sample(rows, 4, seed=3, labels=LABELS)
    assert len(s) == 5
    assert sorted(r["pred"] for r in s if r["label"] == "gender") == ["race", "race", "religion", "religion"]
    assert s == stratified_sample(list(reversed(rows)), 4, seed=3, labels=LABELS)
    assert stratified_sample(rows, 0, seed=3, labels=LABELS) == []


def test_apply_operations_modify_add_delete_and_skip():
    rs = RuleSet([{"rule_id": "a", "label": "race", "instruction": "If a country, the label is race.", "support": 5,
                   "topic": "t", "member_micro_ids": ["m1", "m2"], "cluster_id": 0},
                  {"rule_id": "b", "label": "gender", "instruction": "If a mother, the label is gender.", "support": 3,
                   "topic": "", "member_micro_ids": ["m3"], "cluster_id": 1}])
    ops = [{"op": "modify", "rule_id": "a", "instruction": "If a nationality is named, the label is race."},
           {"op": "delete", "rule_id": "b"},
           {"op": "add", "instruction": "If a job title is named, the label is profession.", "label": "Profession"},
           {"op": "add", "instruction": "no label here at all", "label": "race"},
           {"op": "modify", "rule_id": "zzz", "instruction": "If x, race.", "label": "race"},
           {"op": "add", "instruction": "If y, the label is fish.", "label": "fish"},
           {"op": "rename", "rule_id": "a"}]
    new, rows, diff = apply_operations(rs, ops, LABELS, source_example_ids=["e1", "e2"])
    assert [r["label"] for r in new.rules] == ["race", "profession"]
    mod = next(r for r in rows if r.parent_rule_id == "a")
    assert mod.member_micro_ids == ["m1", "m2"] and mod.origin == "resolve" and mod.support == 5
    assert mod.source_example_ids == ["e1", "e2"]
    added = next(r for r in rows if r.parent_rule_id is None)
    assert added.member_micro_ids == [] and added.cluster_id == -1
    assert diff["deleted"] == ["b"] and diff["modified"] == [{"from": "a", "to": mod.rule_id}]
    assert diff["added"] == [added.rule_id]
    reasons = sorted(s["reason"] for s in diff["skipped"])
    assert reasons == ["label not in the label set", "rule names no label of the label set", "unknown op 'rename'",
                       "unknown rule_id"]
    json.dumps(diff)


def test_score_batches_and_maps_errors():
    class Flaky(KeywordStudent):
        def classify(self, system, inputs, labels, calibration="none"):
            res = super().classify(system, inputs, labels, calibration)
            res[0].error, res[0].label = "boom", None
            return res

    preds = score(Flaky(), "1. [race] If 'somali', race.", ["a somali man"] * 5, LABELS, "none", batch_size=2)
    assert preds == ["<none>", "race", "<none>", "race", "<none>"]
