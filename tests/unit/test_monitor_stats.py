"""The monitor's pure statistics (no Spark, no model), each against a direct computation:
the paired comparison of two prompts, PSI and chi-square of label counts, nearest-neighbour input
distance, and which drift thresholds a day crosses."""
import math
import random

import numpy as np
import pytest
from scipy.stats import binomtest
from scipy.stats import chi2 as chi2_dist

from pld_spark.config_sections import DriftConfig
from pld_spark.metrics import paired_bootstrap
from pld_spark.monitor.stats import PSI_FLOOR, chi_square, compare_stats, drift_reasons, nearest_distances, psi

LABELS = ["gender", "profession", "race", "religion"]


def _f1_by_hand(gold, pred, label):
    tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
    fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
    fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


def test_compare_stats_match_a_direct_computation():
    rng = random.Random(11)
    n = 120
    gold = [rng.choice(LABELS) for _ in range(n)]
    # A is right 70% of the time, B 50%; some failures (None) and one label outside the set
    pred_a = [g if rng.random() < 0.7 else rng.choice(LABELS) for g in gold]
    pred_b = [g if rng.random() < 0.5 else rng.choice(LABELS + [None]) for g in gold]
    pred_a[3], pred_b[4] = None, "not-a-label"
    gold_all = gold + ["unknown-gold"]  # dropped: its gold label is outside the set
    ids = [f"d{i:03d}" for i in range(n + 1)]
    texts = [f"text {i} " + "x" * 400 for i in range(n + 1)]
    st = compare_stats(gold_all, pred_a + ["gender"], pred_b + ["race"], LABELS, doc_ids=ids, texts=texts, top=7,
                       n_resamples=300, seed=5)

    assert (st["n"], st["dropped"]) == (n, 1)
    clean_b = [p if p in LABELS else None for p in pred_b]
    f1a = {lab: _f1_by_hand(gold, pred_a, lab) for lab in LABELS}
    f1b = {lab: _f1_by_hand(gold, clean_b, lab) for lab in LABELS}
    assert st["macro_f1_a"] == pytest.approx(sum(f1a.values()) / 4)
    assert st["macro_f1_b"] == pytest.approx(sum(f1b.values()) / 4)
    assert st["delta"] == pytest.approx(st["macro_f1_a"] - st["macro_f1_b"]) and st["delta"] > 0
    for lab in LABELS:
        got = st["per_label"][lab]
        assert (got["f1_a"], got["f1_b"]) == (pytest.approx(f1a[lab]), pytest.approx(f1b[lab]))
        assert got["delta"] == pytest.approx(f1a[lab] - f1b[lab]) and got["support"] == gold.count(lab)
    boot = paired_bootstrap(gold, pred_a, clean_b, LABELS, n_resamples=300, seed=5)
    assert (st["ci_low"], st["ci_high"], st["p_a_better"]) == (boot["ci_low"], boot["ci_high"], boot["p_a_better"])
    assert st["ci_low"] <= st["delta"] <= st["ci_high"]

    a_only = sum(1 for g, a, b in zip(gold, pred_a, clean_b) if a == g and b != g)
    b_only = sum(1 for g, a, b in zip(gold, pred_a, clean_b) if b == g and a != g)
    assert (st["mcnemar"]["a_only"], st["mcnemar"]["b_only"]) == (a_only, b_only)
    assert st["mcnemar"]["p_value"] == pytest.approx(binomtest(a_only, a_only + b_only, 0.5).pvalue)

    differ = [i for i in range(n) if pred_a[i] != clean_b[i]]
    assert st["n_disagree"] == len(differ) and len(st["disagreements"]) == 7
    one_right = sorted(ids[i] for i in differ if (pred_a[i] == gold[i]) != (clean_b[i] == gold[i]))
    assert [d["doc_id"] for d in st["disagreements"]] == one_right[:7]  # the discordant pairs first, by id
    first = st["disagreements"][0]
    i = ids.index(first["doc_id"])
    assert (first["gold"], first["a"], first["b"]) == (gold[i], pred_a[i], clean_b[i])
    assert first["right"] == ("a" if pred_a[i] == gold[i] else "b") and len(first["input_text"]) == 300


def test_compare_stats_of_identical_predictions_and_bad_lengths():
    gold = ["race", "gender", "race"]
    st = compare_stats(gold, gold, gold, LABELS, n_resamples=50)
    assert st["delta"] == 0 and st["mcnemar"] == {"a_only": 0, "b_only": 0, "p_value": 1.0}
    assert st["disagreements"] == [] and st["n_disagree"] == 0 and st["p_a_better"] == 0.5
    with pytest.raises(ValueError, match="same rows"):
        compare_stats(gold, gold[:2], gold, LABELS)


def test_psi_on_known_distributions():
    # p = (0.5, 0.5) against q = (0.8, 0.2)
    want = (0.5 - 0.8) * math.log(0.5 / 0.8) + (0.5 - 0.2) * math.log(0.5 / 0.2)
    assert psi({"a": 50, "b": 50}, {"a": 80, "b": 20}, ["a", "b"]) == pytest.approx(want)
    assert want == pytest.approx(0.4159, abs=1e-4)
    # the same shares at another scale: no shift
    assert psi({"a": 3, "b": 1}, {"a": 300, "b": 100}, ["a", "b"]) == pytest.approx(0.0)
    # an empty bin is floored, so PSI stays finite (and large)
    want = (1 - 0.5) * math.log(1 / 0.5) + (PSI_FLOOR - 0.5) * math.log(PSI_FLOOR / 0.5)
    got = psi({"a": 100}, {"a": 50, "b": 50}, ["a", "b"])
    assert got == pytest.approx(want) and got > 4
    assert psi({}, {"a": 1}, ["a", "b"]) is None and psi({"a": 1}, {}, ["a", "b"]) is None


def test_chi_square_matches_the_contingency_formula():
    labels = ["a", "b", "c", "d"]
    day, base = {"a": 30, "b": 10, "c": 60}, {"a": 25, "b": 25, "c": 50}  # "d": no rows on either side: left out
    obs = np.array([[30, 10, 60], [25, 25, 50]], dtype=float)
    exp = obs.sum(axis=1, keepdims=True) * obs.sum(axis=0, keepdims=True) / obs.sum()
    stat = float(((obs - exp) ** 2 / exp).sum())
    got_stat, got_p = chi_square(day, base, labels)
    assert got_stat == pytest.approx(stat) and got_p == pytest.approx(chi2_dist.sf(stat, df=2))
    assert got_p < 0.05
    same_stat, same_p = chi_square({"a": 10, "b": 30}, {"a": 20, "b": 60}, labels)
    assert same_stat == pytest.approx(0.0) and same_p == pytest.approx(1.0)
    assert chi_square({"a": 5}, {"a": 9}, labels) == (0.0, 1.0)  # one label only: nothing to test
    assert chi_square({}, {"a": 9}, labels) is None


def test_nearest_distances_are_one_minus_the_best_cosine():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    rows = np.array([[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)], [-1.0, 0.0]])
    got = nearest_distances(rows, ref)
    assert got.tolist() == pytest.approx([0.0, 1 - math.sqrt(0.5), 1.0])
    assert nearest_distances(np.zeros((0, 2)), ref).shape == (0,)


def test_drift_reasons_name_the_statistic_and_its_threshold():
    cfg = DriftConfig(enabled=True, input_distance_threshold=0.5, min_rows=20)
    calm = {"n": 100, "psi": 0.05, "chi2_p": 0.4, "error_share": 0.02, "input_distance": 0.3}
    assert drift_reasons(calm, cfg) == []
    bad = {"n": 100, "psi": 1.234, "chi2_p": 1e-9, "error_share": 0.25, "input_distance": 0.8}
    assert drift_reasons(bad, cfg) == ["PSI 1.234 > drift.psi_threshold 0.2",
                                       "chi-square p 1e-09 < drift.chi2_p_threshold 0.01",
                                       "error share 0.250 > drift.error_share_threshold 0.1",
                                       "input distance 0.800 > drift.input_distance_threshold 0.5"]
    assert drift_reasons({**bad, "n": 19}, cfg) == []  # too few rows to tell
    off = DriftConfig(enabled=True)  # input distance measured but never alerts by default
    assert drift_reasons({**calm, "input_distance": 1.9}, off) == []
    assert drift_reasons({**calm, "psi": None, "chi2_p": None}, off) == []  # no baseline: no label signal
