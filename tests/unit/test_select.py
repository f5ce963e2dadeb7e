"""Backward rule selection (pipeline/select.ablate) over plain data: which rules are dropped, and
when the reduced prompt replaces the full one (a paired test on validation, as in the loop)."""
from __future__ import annotations

from pld_spark.metrics import macro_f1, paired_bootstrap
from pld_spark.pipeline.select import ablate
from pld_spark.validation import Scored

LABELS = ["a", "b"]
GOLD = ["a"] * 20 + ["b"] * 20
RULES = [{"rule_id": r} for r in ("good", "harmful", "idle")]


def _scorer(wrong_with: dict[str, int]):
    """fit(rules) -> Scored whose predictions miss, per rule present, ``wrong_with[rule]`` more b rows
    (a negative number: that many fewer); a rule absent from the dict changes nothing."""
    def fit(rules):
        wrong = 6 + sum(wrong_with.get(r["rule_id"], 0) for r in rules)
        preds = ["a"] * 20 + ["a"] * wrong + ["b"] * (20 - wrong)
        return Scored("|".join(r["rule_id"] for r in rules), "none", preds, macro_f1(GOLD, preds, LABELS))
    return fit


def _compare(a: Scored, b: Scored) -> dict:
    return paired_bootstrap(GOLD, a.preds, b.preds, LABELS, n_resamples=500, seed=1)


def test_a_clearly_harmful_rule_is_dropped():
    fit = _scorer({"good": -5, "harmful": +8})
    kept, contrib, without, full, chosen, note = ablate(RULES, GOLD, fit=fit, compare=_compare, confidence=0.9)
    assert [r["rule_id"] for r in kept] == ["good", "idle"]
    assert contrib["harmful"] < 0 < contrib["good"] and contrib["idle"] == 0
    assert chosen.f1 > full.f1 and "dropped 1 rule" in note and "resamples" in note


def test_a_reduced_prompt_that_is_not_credibly_better_keeps_every_rule():
    """One changed answer in 40 is noise: the gain is real on val but no paired test would back it."""
    fit = _scorer({"good": -5, "harmful": +1})
    kept, _, _, full, chosen, note = ablate(RULES, GOLD, fit=fit, compare=_compare, confidence=0.9)
    assert kept == RULES and chosen is full
    assert "kept all" in note and "needs 90%" in note
    # without the paired gate (the old rule: any gain) the same rule would go
    kept_any, *_ = ablate(RULES, GOLD, fit=fit)
    assert [r["rule_id"] for r in kept_any] == ["good", "idle"]


def test_every_rule_contributing_keeps_them_all_and_one_rule_is_never_ablated():
    kept, *_, note = ablate(RULES, GOLD, fit=_scorer({"good": -2, "harmful": -1, "idle": -1}), compare=_compare,
                            confidence=0.9)
    assert kept == RULES and note == "every rule contributes on val"
    kept, *_, note = ablate(RULES[:1], GOLD, fit=_scorer({}), compare=_compare, confidence=0.9)
    assert kept == RULES[:1] and "fewer than two" in note
