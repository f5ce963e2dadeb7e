"""Metrics against hand-computed values (and scikit-learn as a second opinion)."""
import numpy as np
import pandas as pd
import pytest

from pld_spark import metrics

LABELS = ["a", "b", "c"]


def test_macro_f1_hand_computed():
    # true: a a a b b c ; pred: a a b b c c
    # a: tp2 fp0 fn1 -> P 1, R 2/3, F1 0.8
    # b: tp1 fp1 fn1 -> P .5, R .5, F1 .5
    # c: tp1 fp1 fn0 -> P .5, R 1, F1 2/3
    y = ["a", "a", "a", "b", "b", "c"]
    p = ["a", "a", "b", "b", "c", "c"]
    rep = metrics.classification_report(y, p, LABELS)
    assert rep["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert rep["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert rep["confusion"]["matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert rep["errors"] == 0


def test_failures_count_as_wrong_and_unseen_label_scores_zero():
    # 'c' never occurs and is never predicted: F1 0 still counts in the macro average.
    # One failure (None) on a true 'a' and one label outside the set on a true 'b'.
    y = ["a", "a", "b", "b"]
    p = ["a", None, "b", "zzz"]
    rep = metrics.classification_report(y, p, LABELS)
    # a: tp1 fp0 fn1 -> F1 2/3 ; b: same -> 2/3 ; c: 0
    assert rep["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert rep["accuracy"] == pytest.approx(0.5)
    assert rep["errors"] == 2
    assert rep["confusion"]["failures"] == [1, 1, 0]
    assert rep["per_class"]["a"]["support"] == 2
    from sklearn.metrics import f1_score

    sk = f1_score(y, [x if x in LABELS else "__err__" for x in p], labels=LABELS, average="macro", zero_division=0)
    assert rep["macro_f1"] == pytest.approx(sk)


def test_macro_f1_matches_sklearn_on_random_data():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y = list(rng.choice(LABELS, 200))
    p = list(rng.choice(LABELS + [None], 200))
    sk = f1_score(y, [x or "__err__" for x in p], labels=LABELS, average="macro", zero_division=0)
    assert metrics.macro_f1(y, p, LABELS) == pytest.approx(sk)


def test_bootstrap_ci_seeded_and_brackets_point_estimate():
    rng = np.random.default_rng(0)
    y = list(rng.choice(LABELS, 120))
    p = [t if rng.random() < 0.7 else rng.choice(LABELS) for t in y]
    lo, hi = metrics.bootstrap_macro_f1(y, p, LABELS, n_resamples=300, seed=5)
    assert (lo, hi) == metrics.bootstrap_macro_f1(y, p, LABELS, n_resamples=300, seed=5)
    assert (lo, hi) != metrics.bootstrap_macro_f1(y, p, LABELS, n_resamples=300, seed=6)
    point = metrics.macro_f1(y, p, LABELS)
    assert lo < point < hi
    assert 0.05 < hi - lo < 0.4


def test_bootstrap_of_perfect_predictions_is_degenerate():
    y = ["a", "b", "c"] * 10
    assert metrics.bootstrap_macro_f1(y, y, LABELS, n_resamples=50, seed=1) == (1.0, 1.0)


def test_bootstrap_matches_direct_resampling():
    """The vectorised bincount path equals recomputing macro_f1 on each resample."""
    rng = np.random.default_rng(3)
    y = list(rng.choice(LABELS, 40))
    p = list(rng.choice(LABELS + [None], 40))
    lo, hi = metrics.bootstrap_macro_f1(y, p, LABELS, n_resamples=100, seed=9)
    idx = np.random.default_rng(9).integers(0, 40, size=(100, 40))
    scores = [metrics.macro_f1([y[i] for i in row], [p[i] for i in row], LABELS) for row in idx]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(scores, [0.025, 0.975])))


def test_latency_and_token_stats():
    lat = metrics.latency_stats([2.0, 0.1, 0.2, None, 0.3, 0.4])
    # values 2.0 .1 .2 .3 .4 -> median .3 ; p95 linear: sorted [.1 .2 .3 .4 2.0], pos 3.8 -> .4 + .8*1.6
    assert lat["p50"] == pytest.approx(0.3)
    assert lat["p95"] == pytest.approx(0.4 + 0.8 * 1.6)
    assert lat["first"] == pytest.approx(2.0)
    tok = metrics.token_stats([100, 100, 100, 100], [1, 1, 2, 0], [0, 90, 90, 90])
    assert tok["prompt_tokens_mean"] == 100
    assert tok["output_tokens_mean"] == 1
    assert tok["prefix_hit_rate"] == pytest.approx(0.75)
    assert tok["prefix_reused_share"] == pytest.approx(270 / 400)
    assert metrics.latency_stats([])["p50"] is None


def test_condition_metrics_error_rows_are_wrong_even_with_a_label():
    pdf = pd.DataFrame({
        "gold": ["a", "b", "c", "a"],
        "label": ["a", "b", "c", "a"],
        "error": [None, None, None, "timeout"],
        "latency_s": [1.0, 0.2, 0.2, None],
        "tokens_in": [50, 50, 50, 0],
        "tokens_out": [1, 1, 1, 0],
        "prefix_reused_tokens": [0, 40, 40, 0],
    })
    m = metrics.condition_metrics(pdf, LABELS, n_resamples=50, seed=0)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["errors"] == 1
    # a: tp1 fp0 fn1 -> 2/3 ; b, c: 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert m["latency_p50"] == pytest.approx(0.2)
    assert m["latency_first"] == pytest.approx(1.0)
    assert m["prefix_hit_rate"] == pytest.approx(0.5)
    assert m["ci_low"] <= m["macro_f1"] <= m["ci_high"]


def test_paired_bootstrap_matches_a_direct_computation():
    """The paired CI is the percentile interval of macro-F1(a) - macro-F1(b) over row resamples,
    recomputed here directly with scikit-learn on the same seeded resamples."""
    import numpy as np
    from sklearn.metrics import f1_score

    from pld_spark.metrics import paired_bootstrap

    rng = np.random.default_rng(1)
    labels = ["a", "b", "c"]
    gold = list(rng.choice(labels, size=120, p=[0.6, 0.3, 0.1]))
    pred_a = [g if rng.random() < 0.8 else str(rng.choice(labels)) for g in gold]
    pred_b = [g if rng.random() < 0.6 else str(rng.choice(labels)) for g in gold]
    got = paired_bootstrap(gold, pred_a, pred_b, labels, n_resamples=300, seed=7)

    def f1(t, p):
        return f1_score(t, p, labels=labels, average="macro", zero_division=0)

    g, a, b = np.array(gold), np.array(pred_a), np.array(pred_b)
    r = np.random.default_rng(7)
    diffs = []
    for _ in range(300):
        idx = r.integers(0, len(g), size=len(g))
        diffs.append(f1(g[idx], a[idx]) - f1(g[idx], b[idx]))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    assert got["delta"] == pytest.approx(f1(g, a) - f1(g, b), abs=1e-12)
    assert got["ci_low"] == pytest.approx(lo, abs=1e-9) and got["ci_high"] == pytest.approx(hi, abs=1e-9)
    assert got["delta"] > 0 and got["ci_low"] > 0 and got["n"] == 120
    # identical predictions: a zero difference with a zero-width interval
    same = paired_bootstrap(gold, pred_a, pred_a, labels, n_resamples=50)
    assert same["delta"] == same["ci_low"] == same["ci_high"] == 0.0


def test_mcnemar_counts_discordant_pairs():
    from pld_spark.metrics import mcnemar

    gold = ["x"] * 10
    a = ["x"] * 9 + ["y"]
    b = ["y"] * 8 + ["x"] * 2
    m = mcnemar(gold, a, b)
    assert (m["a_only"], m["b_only"]) == (8, 1)
    assert m["p_value"] == pytest.approx(2 * (1 + 9) / 2 ** 9)
