"""Champion/challenger decision (pure, no Spark, no model): :func:`pld_spark.monitor.promotion.decide`.

A challenger is promoted only when the lower bound of the paired CI of macro-F1 (challenger -
champion) is above the margin and no label's F1 drops by more than ``max_label_drop``; otherwise
the reason names each failed condition with its value. The statistic is the one of ``pld compare``
(:func:`pld_spark.monitor.stats.compare_stats`) at the configured confidence.
"""
import pytest

from pld_spark.config_sections import PromotionConfig
from pld_spark.monitor.promotion import CANDIDATE, PROMOTED, decide
from pld_spark.monitor.stats import compare_stats

LABELS = ["gender", "profession", "race", "religion"]
GOLD = [lab for lab in LABELS for _ in range(15)]  # 60 rows, 15 per label


def _wrong(lab):
    return LABELS[(LABELS.index(lab) + 1) % len(LABELS)]


def _preds(right_per_label: dict[str, int]) -> list[str]:
    """The first ``right_per_label[label]`` rows of each label right, the rest wrong."""
    out, seen = [], {lab: 0 for lab in LABELS}
    for g in GOLD:
        out.append(g if seen[g] < right_per_label[g] else _wrong(g))
        seen[g] += 1
    return out


CHAMPION = _preds({"gender": 9, "profession": 9, "race": 9, "religion": 9})


def test_a_clearly_better_challenger_is_promoted_with_the_compare_statistic():
    cfg = PromotionConfig()
    challenger = _preds({"gender": 15, "profession": 15, "race": 14, "religion": 15})
    d = decide(GOLD, challenger, CHAMPION, LABELS, cfg, n_resamples=300, seed=4)
    assert d.decision == PROMOTED and d.reason.endswith("beats the champion")
    want = compare_stats(GOLD, challenger, CHAMPION, LABELS, n_resamples=300, seed=4, level=0.9)
    assert (d.statistic, d.ci_low, d.ci_high, d.p_better) == pytest.approx(
        (want["delta"], want["ci_low"], want["ci_high"], want["p_a_better"]))
    assert d.ci_low > 0 and d.n == 60 and d.worst_label_drop < 0  # every label improved
    # the CI is at promotion.confidence: a 99% interval is wider than the 90% one
    wide = decide(GOLD, challenger, CHAMPION, LABELS, PromotionConfig(confidence=0.99), n_resamples=300, seed=4)
    assert wide.ci_low < d.ci_low and wide.ci_high > d.ci_high


def test_a_worse_challenger_stays_a_candidate_and_the_reason_says_why():
    challenger = _preds({"gender": 6, "profession": 9, "race": 9, "religion": 5})
    d = decide(GOLD, challenger, CHAMPION, LABELS, PromotionConfig(), n_resamples=300, seed=4)
    assert d.decision == CANDIDATE and d.statistic < 0
    assert f"the CI lower bound {d.ci_low:+.4f} is not above promotion.margin 0.0" in d.reason
    assert d.worst_label == "religion" and d.worst_label_drop > 0.05
    assert f"label 'religion' F1 drops by {d.worst_label_drop:.4f} > promotion.max_label_drop 0.05" in d.reason


def test_a_better_challenger_that_drops_one_label_stays_a_candidate():
    # big gains on three labels, religion loses 6 of its 9 right answers
    challenger = _preds({"gender": 15, "profession": 15, "race": 15, "religion": 3})
    d = decide(GOLD, challenger, CHAMPION, LABELS, PromotionConfig(), n_resamples=300, seed=4)
    assert d.ci_low > 0, "the overall CI clears the margin"
    assert d.decision == CANDIDATE and d.worst_label == "religion"
    assert "label 'religion' F1 drops" in d.reason and "not above promotion.margin" not in d.reason
    # allowing a bigger drop promotes it
    lax = decide(GOLD, challenger, CHAMPION, LABELS, PromotionConfig(max_label_drop=0.5), n_resamples=300, seed=4)
    assert lax.decision == PROMOTED


def test_the_margin_is_on_the_ci_lower_bound():
    challenger = _preds({"gender": 12, "profession": 12, "race": 12, "religion": 12})
    at0 = decide(GOLD, challenger, CHAMPION, LABELS, PromotionConfig(), n_resamples=300, seed=4)
    assert at0.decision == PROMOTED and at0.ci_low > 0
    strict = decide(GOLD, challenger, CHAMPION, LABELS, PromotionConfig(margin=at0.ci_low + 0.01),
                    n_resamples=300, seed=4)
    assert strict.decision == CANDIDATE and "not above promotion.margin" in strict.reason


def test_identical_prompts_are_not_promoted_and_no_rows_is_a_candidate():
    same = decide(GOLD, CHAMPION, CHAMPION, LABELS, PromotionConfig(), n_resamples=100)
    assert same.decision == CANDIDATE and same.statistic == 0 and same.ci_low == 0
    empty = decide([], [], [], LABELS, PromotionConfig())
    assert empty.decision == CANDIDATE and empty.reason == "no labelled rows to compare on"
