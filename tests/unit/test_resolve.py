"""Conflict-loop logic: sampling, operations, metric, the loop's decisions (no Spark, no model)."""
import json

from pld_spark.config import ResolveConfig, load_config
from pld_spark.metrics import macro_f1
from pld_spark.pipeline.resolve import Proposal, apply_operations, promotion, run_loop, stratified_sample
from pld_spark.validation import PromptJudge, Scored
from tests.conftest import CONF

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
    rs = ([{"rule_id": "a", "label": "race", "instruction": "If a country, the label is race.", "support": 5,
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
    assert [r["label"] for r in new] == ["race", "profession"]
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


def test_a_modify_that_restates_the_rule_is_no_change_and_a_real_one_keeps_the_exemplar():
    """Seen with the 1.5B teacher (BENCHMARKS.md): five 'modify' operations that copied the rules verbatim
    became five new rules without their cluster exemplars, and the candidate lost 0.037 on val."""
    rs = [{"rule_id": "a", "label": "race", "instruction": "If a country is named, the label is race.", "support": 5,
           "topic": "t", "member_micro_ids": ["m1"], "cluster_id": 0, "example_id": "e9",
           "example_text": "Context: Ghana is BLANK.", "example_label": "race"}]
    same = [{"op": "modify", "rule_id": "a", "instruction": "If a  country is named,\nthe label is race.",
             "label": "race"}]
    new, rows, diff = apply_operations(rs, same, LABELS)
    assert new == rs and rows == [] and [s["reason"] for s in diff["skipped"]] == ["no change"]

    sharper = [{"op": "modify", "rule_id": "a", "instruction": "If a country or a nationality is named, the label "
                "is race.", "label": "race"}]
    new, rows, _ = apply_operations(rs, sharper, LABELS)
    assert (rows[0].example_id, rows[0].example_text, rows[0].example_label) == ("e9", "Context: Ghana is BLANK.",
                                                                                 "race")
    assert new[0]["example_text"] == "Context: Ghana is BLANK." and new[0]["example_id"] == "e9"
    relabelled = [{"op": "modify", "rule_id": "a", "instruction": "If a country is named, the label is religion.",
                   "label": "religion"}]
    _, rows, _ = apply_operations(rs, relabelled, LABELS)
    assert rows[0].example_text is None and rows[0].example_label is None  # an exemplar of another label


# ----------------------------------------------------------------------------- the loop
class _Built:
    """What build_prompt returns, reduced to what run_loop reads."""

    def __init__(self, rules):
        from types import SimpleNamespace

        text = "|".join(r["instruction"] for r in rules)
        self.assembled = SimpleNamespace(text=text, version="pv-" + str(abs(hash(text)) % 10**8))


def _rows(prefix, labels):
    return [{"example_id": f"{prefix}{i}", "input_text": f"x{i}", "label": lab} for i, lab in enumerate(labels)]


START = [{"rule_id": "r1", "label": "race", "instruction": "If a country is named, the label is race.",
          "support": 3, "topic": "", "member_micro_ids": ["m1"], "cluster_id": 0}]
TRAIN = _rows("t", ["race", "gender", "race", "gender"])
VAL = _rows("v", ["race", "gender", "race", "gender"])


class Judge(PromptJudge):
    """The real judge's decisions over a scripted scoring function (no model): ``score(text, rows)``."""

    def __init__(self, score):
        super().__init__(student=None, labels=LABELS, calibration="none", bootstrap=200)
        self.score = score

    def raw(self, text, rows):
        return [{lab: (0.0 if lab == p else -5.0) for lab in LABELS} for p in self.score(text, rows)]


def _scorer(good_texts):
    """Predicts every gold label right when the prompt text contains one of ``good_texts``, else 'race'."""
    def score(text, rows):
        return [r["label"] if any(g in text for g in good_texts) else "race" for r in rows]
    return score


def test_loop_accepts_a_better_candidate_then_stops_when_nothing_fails():
    ops = [{"op": "add", "instruction": "If a mother is named, the label is gender.", "label": "gender"}]
    calls = []

    def propose(t, rules, fails, oks):
        calls.append((t, [r["example_id"] for r in fails], [r["example_id"] for r in oks]))
        return Proposal(ops)

    val = VAL * 5  # enough rows for the paired test to be sure
    res = run_loop("pv-start", "start", START, TRAIN, val, LABELS, ResolveConfig(max_rounds=3, min_delta=0.01),
                   judge=Judge(_scorer(["mother"])), propose=propose, build=_Built)
    assert res.rounds[1].accepted and res.best_version != "pv-start" and "paired delta" in res.rounds[1].note
    assert res.best_val == 0.5 and res.start_val < res.best_val  # 2 of 4 labels present -> 0.5 max
    assert [r["label"] for r in res.best_rules] == ["race", "gender"]
    assert res.stop_reason == "no train failures" and len(res.rounds) == 3
    assert sorted(calls[0][1]) == ["t1", "t3"] and sorted(calls[0][2]) == ["t0", "t2"]  # failures and successes
    assert [k for _, k, _, _ in res.candidates] == ["pld_resolved"] and len(res.new_rules) == 1


def test_loop_rejects_a_candidate_the_paired_test_does_not_favour():
    ops = [{"op": "delete", "rule_id": "r1"}]

    def score(text, rows):  # train rows always fail; val rows are right only with the country rule
        return [r["label"] if "If a country" in text and r["example_id"].startswith("v") else "religion"
                for r in rows]

    res = run_loop("pv-start", "If a country", START, TRAIN, VAL, LABELS, ResolveConfig(max_rounds=2),
                   judge=Judge(score), propose=lambda *a: Proposal(ops), build=_Built)
    assert not res.rounds[1].accepted and res.best_version == "pv-start"
    assert res.stop_reason == "candidate not better than the current prompt on the paired val test"
    assert [k for _, k, _, _ in res.candidates] == ["pld_rejected"]


def test_loop_retries_an_empty_proposal_once_with_another_sample():
    answers = [Proposal([{"op": "add", "instruction": "no label", "label": "race"}]),
               Proposal([{"op": "add", "instruction": "If a mother is named, the label is gender.", "label": "gender"}])]
    seen = []

    def propose(t, rules, fails, oks):
        seen.append(t)
        return answers.pop(0)

    res = run_loop("pv-s", "s", START, TRAIN, VAL * 5, LABELS, ResolveConfig(max_rounds=1),
                   judge=Judge(_scorer(["mother"])), propose=propose, build=_Built)
    assert seen == [1, 1] and json.loads(res.rounds[1].rule_diff)["attempt"] == 2 and res.rounds[1].accepted


def test_loop_stops_on_teacher_error_and_on_no_valid_operation():
    cfg = ResolveConfig(max_rounds=2)
    res = run_loop("pv-s", "s", START, TRAIN, VAL, LABELS, cfg, judge=Judge(_scorer([])),
                   propose=lambda *a: Proposal(error="ServerError: 503"), build=_Built)
    assert res.stop_reason.startswith("teacher call failed: ServerError") and res.best_version == "pv-s"
    res = run_loop("pv-s", "s", START, TRAIN, VAL, LABELS, cfg, judge=Judge(_scorer([])),
                   propose=lambda *a: Proposal([{"op": "add", "instruction": "no label", "label": "race"}]),
                   build=_Built)
    assert res.stop_reason == "teacher proposed no valid operation (twice, with two different samples)"
    assert not res.candidates and json.loads(res.rounds[1].rule_diff)["skipped"]


def test_promotion_needs_a_paired_win_over_the_better_zero_shot():
    judge = Judge(_scorer(["good"]))
    val = VAL * 10
    best = judge.fit("good rules", val)
    zs = {"zero_shot": judge.fit("plain", val), "zero_shot_bare": judge.fit("good too", val)}
    ok, why, stat = promotion(judge, val, best, zs, 0.9)
    assert not ok and stat["vs"] == "zero_shot_bare" and why.startswith("NOT promoted")
    ok, why, stat = promotion(judge, val, best, {"zero_shot": zs["zero_shot"]}, 0.9)
    assert ok and why.startswith("promoted") and stat["delta"] > 0
