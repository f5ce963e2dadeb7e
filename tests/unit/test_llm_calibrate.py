"""Calibration math (pure functions)."""
from __future__ import annotations

import math

import pytest

from pld_spark.llm.calibrate import argmax_label, calibrate, log_softmax, softmax

LABELS = ["a", "b", "c"]


def test_softmax_sums_to_one_and_matches_closed_form():
    p = softmax({"a": math.log(0.2), "b": math.log(0.3), "c": math.log(0.5)}, LABELS)
    assert p == pytest.approx({"a": 0.2, "b": 0.3, "c": 0.5})
    # renormalises any scale
    p2 = softmax({"a": -10.0, "b": -10.0, "c": -10.0}, LABELS)
    assert p2 == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_log_softmax_handles_missing_and_infinite():
    ls = log_softmax({"a": 0.0, "b": -math.inf}, LABELS)
    assert math.exp(ls["a"]) == pytest.approx(1.0)
    assert all(math.isfinite(v) for v in ls.values())


def test_none_is_plain_softmax():
    raw = [{"a": -1.0, "b": -2.0, "c": -3.0}]
    out = calibrate(raw, LABELS, "none")[0]
    assert out == pytest.approx(softmax(raw[0], LABELS))


def test_content_free_subtracts_prior():
    # The model prefers "a" everywhere by log 2; the content-free input shows the same prior.
    prior = {"a": math.log(0.5), "b": math.log(0.25), "c": math.log(0.25)}
    x = {"a": math.log(0.4), "b": math.log(0.4), "c": math.log(0.2)}
    out = calibrate([x], LABELS, "content_free", content_free=prior)[0]
    # (0.4/0.5, 0.4/0.25, 0.2/0.25) = (0.8, 1.6, 0.8) -> normalised (0.25, 0.5, 0.25)
    assert out == pytest.approx({"a": 0.25, "b": 0.5, "c": 0.25})
    assert argmax_label(out, LABELS) == "b"
    assert argmax_label(calibrate([x], LABELS, "none")[0], LABELS) in ("a", "b")


def test_content_free_needs_reference():
    with pytest.raises(ValueError):
        calibrate([{"a": 0.0, "b": 0.0, "c": 0.0}], LABELS, "content_free")


def test_batch_centring_removes_a_constant_label_bias():
    # True signal: row i prefers label i; plus a strong bias +5 towards "a" on every row.
    raw = []
    for i, lab in enumerate(LABELS):
        row = {x: (1.0 if x == lab else 0.0) for x in LABELS}
        row["a"] += 5.0
        raw.append(row)
    assert [argmax_label(p, LABELS) for p in calibrate(raw, LABELS, "none")] == ["a", "a", "a"]
    cal = calibrate(raw, LABELS, "batch")
    assert [argmax_label(p, LABELS) for p in cal] == LABELS
    for p in cal:
        assert sum(p.values()) == pytest.approx(1.0)


def test_batch_skips_failed_rows_and_keeps_them_none():
    raw = [{"a": 0.0, "b": -1.0, "c": -2.0}, None, {"a": -2.0, "b": -1.0, "c": 0.0}]
    out = calibrate(raw, LABELS, "batch")
    assert out[1] is None and out[0] is not None and out[2] is not None
    assert argmax_label(out[0], LABELS) == "a" and argmax_label(out[2], LABELS) == "c"


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="unknown calibration"):
        calibrate([], LABELS, "platt")


def test_argmax_tie_is_first_label():
    assert argmax_label({"a": 0.5, "b": 0.5, "c": 0.0}, LABELS) == "a"


def _skewed_rows(n=300, seed=0):
    """A model biased towards 'a' on rows whose gold label is mostly 'a' (a rare 'c')."""
    import random

    rng = random.Random(seed)
    raw, gold = [], []
    for _ in range(n):
        g = rng.choices(["a", "b", "c"], weights=[0.6, 0.3, 0.1])[0]
        raw.append({"a": rng.gauss(1.5, 1) + (1.5 if g == "a" else 0), "b": rng.gauss(0, 1) + (2 if g == "b" else 0),
                    "c": rng.gauss(0.5, 1) + (2 if g == "c" else 0)})
        gold.append(g)
    return raw, gold


def test_choose_picks_the_best_validation_calibration_and_round_trips():
    from pld_spark.llm.calibrate import Calibration, choose
    from pld_spark.metrics import macro_f1

    raw, gold = _skewed_rows()
    cal = choose(raw, gold, ["a", "b", "c"], prior={"a": 60, "b": 30, "c": 10})
    assert set(cal.val_macro_f1) == {"none", "val_centred", "prior", "fitted"} and cal.cv_macro_f1 == {}
    assert cal.val_macro_f1[cal.method] == max(cal.val_macro_f1.values())
    cv = choose(raw, gold, ["a", "b", "c"], prior={"a": 60, "b": 30, "c": 10}, folds=5)
    assert set(cv.cv_macro_f1) == set(cv.val_macro_f1) and cv.cv_macro_f1[cv.method] == max(cv.cv_macro_f1.values())
    # the fitted offsets start from the prior's and only keep improvements
    assert cal.val_macro_f1["fitted"] >= cal.val_macro_f1["prior"]
    # applying the stored offsets reproduces the validation score of the choice
    pred = [max(p, key=p.get) for p in cal.apply(raw, ["a", "b", "c"])]
    assert macro_f1(gold, pred, ["a", "b", "c"]) == pytest.approx(cal.val_macro_f1[cal.method], abs=1e-6)
    assert Calibration.from_json(cal.to_json()) == cal and cal.n_val == 300


def test_prior_corrected_centring_stops_overpredicting_a_rare_label():
    """Centring assumes balanced labels: on a 10%-'c' split it predicts 'c' far more than 10% of
    the time; adding the log prior puts the label frequencies back."""
    from pld_spark.llm.calibrate import centring_offsets, log_softmax, prior_offsets, _predict

    raw, gold = _skewed_rows(seed=3)
    labels = ["a", "b", "c"]
    norm = [log_softmax(r, labels) for r in raw]
    centred = centring_offsets(norm, labels)
    with_prior = prior_offsets(centred, {"a": 0.6, "b": 0.3, "c": 0.1}, labels)
    c_centred = _predict(norm, labels, centred).count("c")
    c_prior = _predict(norm, labels, with_prior).count("c")
    n_c = gold.count("c")
    assert c_centred > 2 * n_c  # centring over-predicts the rare label
    assert abs(c_prior - n_c) < 0.3 * n_c < abs(c_centred - n_c)


def test_old_stored_calibrations_without_cross_validation_scores_still_load():
    from pld_spark.llm.calibrate import Calibration

    old = '{"method": "fitted", "n_val": 32, "offsets": {"a": 0.0, "b": 1.5}, "val_macro_f1": {"fitted": 0.6}}'
    cal = Calibration.from_json(old)
    assert cal.method == "fitted" and cal.offsets == {"a": 0.0, "b": 1.5} and cal.cv_macro_f1 == {}


def test_stratified_folds_spread_every_label_over_the_folds():
    from collections import Counter

    from pld_spark.llm.calibrate import stratified_folds

    gold = ["a"] * 23 + ["b"] * 9 + ["c"] * 3
    fold = stratified_folds(gold, 5, seed=1)
    assert fold == stratified_folds(gold, 5, seed=1) and set(fold) == set(range(5))
    for lab in "abc":
        per_fold = Counter(f for f, g in zip(fold, gold) if g == lab)
        assert max(per_fold.values()) - min(per_fold.get(f, 0) for f in range(5)) <= 1
    sizes = Counter(fold).values()
    assert max(sizes) - min(sizes) <= 1


def test_cross_validated_scores_match_a_direct_computation():
    """'none' has no parameters, so its out-of-fold score is its in-sample score; 'val_centred'
    recomputed by hand, fold by fold, from the rows outside the fold."""
    from pld_spark.llm.calibrate import (_norm_rows, _predict, centring_offsets, cross_validated_scores,
                                         stratified_folds)
    from pld_spark.metrics import macro_f1

    labels = ["a", "b", "c"]
    raw, gold = _skewed_rows(n=90, seed=5)
    norm = _norm_rows(raw, labels)
    cv = cross_validated_scores(norm, gold, labels, None, ("none", "val_centred"), folds=4, seed=2)
    assert cv["none"] == pytest.approx(macro_f1(gold, _predict(norm, labels, {}), labels))
    fold = stratified_folds(gold, 4, seed=2)
    pred = [None] * len(gold)
    for f in range(4):
        offs = centring_offsets([n for n, k in zip(norm, fold) if k != f], labels)
        for i in (i for i in range(len(gold)) if fold[i] == f):
            pred[i] = _predict([norm[i]], labels, offs)[0]
    assert cv["val_centred"] == pytest.approx(macro_f1(gold, pred, labels))


def _noise_for_a_rare_label(seed):
    """60 rows; 'a' and 'b' carry signal, the rare 'c' (3 rows) none: any offset for 'c' is fitted noise."""
    import random

    rng = random.Random(seed)
    raw, gold = [], []
    for _ in range(60):
        g = rng.choices(["a", "b", "c"], weights=[0.5, 0.45, 0.05])[0]
        raw.append({"a": rng.gauss(0, 1) + (1.5 if g == "a" else 0), "b": rng.gauss(0, 1) + (1.5 if g == "b" else 0),
                    "c": rng.gauss(-1, 1)})
        gold.append(g)
    return raw, gold


def test_fitted_offsets_do_not_win_by_being_judged_on_the_rows_they_were_fitted_to():
    """In-sample, 'fitted' can never lose to 'prior' (it starts there and keeps only gains), so it
    won on 32 Contract-NLI val rows with 3 Contradictions and then over-predicted that label on test.
    Judged out of fold, the noise fit loses."""
    from pld_spark.llm.calibrate import choose

    raw, gold = _noise_for_a_rare_label(3)
    assert gold.count("c") == 3
    prior = {"a": 50, "b": 45, "c": 5}
    in_sample = choose(raw, gold, ["a", "b", "c"], prior, folds=0)
    assert in_sample.method == "fitted" and in_sample.cv_macro_f1 == {}
    cal = choose(raw, gold, ["a", "b", "c"], prior, folds=5)
    assert cal.method != "fitted"
    assert cal.cv_macro_f1["fitted"] < cal.cv_macro_f1[cal.method]
    assert cal.val_macro_f1["fitted"] > cal.val_macro_f1[cal.method]  # what the in-sample choice goes by


def test_too_few_rows_to_cross_validate_fall_back_to_in_sample():
    from pld_spark.llm.calibrate import MIN_ROWS_TO_CROSS_VALIDATE, choose

    raw, gold = _skewed_rows(n=MIN_ROWS_TO_CROSS_VALIDATE - 1, seed=1)
    cal = choose(raw, gold, ["a", "b", "c"], {"a": 60, "b": 30, "c": 10}, folds=5)
    assert cal.cv_macro_f1 == {} and cal.val_macro_f1[cal.method] == max(cal.val_macro_f1.values())
