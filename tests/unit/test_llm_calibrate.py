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
    assert set(cal.val_macro_f1) == {"none", "val_centred", "prior", "fitted"}
    assert cal.val_macro_f1[cal.method] == max(cal.val_macro_f1.values())
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
