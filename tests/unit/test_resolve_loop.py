"""More of the conflict loop's decisions (:func:`pld_spark.pipeline.resolve.run_loop`) on scripted
scores, no Spark, no model: zero rounds, a candidate identical to the current prompt, the
operation cap, the min_delta gate, and what a round records about its sample. (Acceptance by the
paired test, rejection, the retry of an empty proposal and a failed teacher call are in
tests/unit/test_resolve.py; the stage on the real model in tests/integration/test_distill_real_model.py.)
"""
import json
from types import SimpleNamespace

from pld_spark.config import ResolveConfig, load_config
from pld_spark.pipeline.resolve import Proposal, run_loop
from pld_spark.validation import PromptJudge
from tests.conftest import CONF

LABELS = load_config(CONF / "stereoset.yaml").task.label_names
START = [{"rule_id": "r1", "label": "race", "instruction": "If a country is named, the label is race.",
          "support": 3, "topic": "", "member_micro_ids": ["m1"], "cluster_id": 0}]
MOTHER = {"op": "add", "instruction": "If a mother is named, the label is gender.", "label": "gender"}
PRIEST = {"op": "add", "instruction": "If a priest is named, the label is religion.", "label": "religion"}


def _rows(prefix, labels):
    return [{"example_id": f"{prefix}{i}", "input_text": f"x{i}", "label": lab} for i, lab in enumerate(labels)]


TRAIN = _rows("t", ["race", "gender", "race", "gender"])
VAL = _rows("v", ["race", "gender", "race", "gender"] * 5)


class ScriptedJudge(PromptJudge):
    """The real judge (calibration, macro-F1, paired bootstrap) over scripted label scores:
    ``score(text, rows) -> labels``; every scoring pass is logged in ``passes``."""

    def __init__(self, score):
        super().__init__(student=None, labels=LABELS, calibration="none", bootstrap=200)
        self.score = score
        self.passes: list[tuple[str, list[str]]] = []

    def raw(self, text, rows):
        self.passes.append((text, [r["example_id"] for r in rows]))
        return [{lab: (0.0 if lab == p else -5.0) for lab in LABELS} for p in self.score(text, rows)]


def right_with(word):
    """Every gold label right when the prompt contains ``word``, else 'race' for everything."""
    return lambda text, rows: [r["label"] if word in text else "race" for r in rows]


def built(rules):
    text = "|".join(r["instruction"] for r in rules)
    return SimpleNamespace(assembled=SimpleNamespace(text=text, version=f"pv-{len(rules)}-{len(text)}"))


def test_zero_rounds_scores_val_only_and_asks_the_teacher_nothing():
    judge = ScriptedJudge(right_with("country"))

    def propose(*a):
        raise AssertionError("no round, no teacher call")

    res = run_loop("pv-s", "If a country", START, TRAIN, VAL, LABELS, ResolveConfig(max_rounds=0), judge=judge,
                   propose=propose, build=built)
    assert judge.passes == [("If a country", [r["example_id"] for r in VAL])]  # train is not even scored
    assert res.stop_reason == "max_rounds is 0" and res.best_version == "pv-s" and res.best_rules == START
    assert len(res.rounds) == 1 and res.rounds[0].accepted and res.rounds[0].train_macro_f1 is None
    assert res.start_val == res.best_val == res.rounds[0].val_macro_f1 == 0.5  # 2 of 4 labels present
    assert not res.candidates and not res.new_rules and res.best.preds == [r["label"] for r in VAL]


def test_a_candidate_identical_to_the_current_prompt_stops_the_loop():
    same = SimpleNamespace(assembled=SimpleNamespace(text="s", version="pv-s"))
    res = run_loop("pv-s", "s", START, TRAIN, VAL, LABELS, ResolveConfig(max_rounds=3), judge=ScriptedJudge(
        right_with("never")), propose=lambda *a: Proposal([MOTHER]), build=lambda rules: same)
    assert res.stop_reason == "candidate prompt is identical to the current one" and len(res.rounds) == 2
    r1 = res.rounds[1]
    assert r1.candidate_version == "pv-s" and r1.candidate_val_macro_f1 == r1.val_macro_f1 and not r1.accepted
    assert not res.candidates and res.best_version == "pv-s"


def test_min_delta_gates_a_clear_win_and_only_max_operations_are_applied():
    seen = []

    def propose(t, rules, fails, oks):
        seen.append(([r["rule_id"] for r in rules], fails, oks))
        return Proposal([MOTHER, PRIEST, {"op": "delete", "rule_id": "r1"}])

    for min_delta, accepted in ((0.0, True), (0.5, False)):  # the win is +1/3 macro-F1 on val, for sure
        cfg = ResolveConfig(max_rounds=1, min_delta=min_delta, max_operations=1, failures_per_class=1,
                            successes_per_class=1)
        res = run_loop("pv-s", "s", START, TRAIN, VAL, LABELS, cfg, judge=ScriptedJudge(right_with("mother")),
                       propose=propose, build=built)
        r1 = res.rounds[1]
        assert r1.accepted is accepted and (r1.val_macro_f1, r1.candidate_val_macro_f1) == (1 / 6, 0.5)
        assert res.best_version == (r1.candidate_version if accepted else "pv-s")
        assert [(k, parent) for _, k, parent, _ in res.candidates] == [
            ("pld_resolved" if accepted else "pld_rejected", "pv-s")]
        diff = json.loads(r1.rule_diff)
        assert len(diff["added"]) == 1 and not diff["deleted"]  # max_operations=1: only the first op
        # what the round showed the teacher: one failure and one success per gold label present
        assert (r1.failures_sampled, r1.successes_sampled) == (1, 1)
        assert r1.sampled_example_ids[0] in ("t1", "t3") and r1.sampled_example_ids[1] in ("t0", "t2")
        assert res.new_rules[0].source_example_ids == r1.sampled_example_ids
    assert seen[0][0] == ["r1"] and [(r["label"], r["pred"]) for r in seen[0][1]] == [("gender", "race")]
