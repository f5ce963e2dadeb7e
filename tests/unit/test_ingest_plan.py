"""Ingest's pure parts: the sample plan (a cap is a cap) and the quality gates (no Spark)."""
import random

import pytest

from pld_spark.pipeline.ingest import allocate_cap, quality_problems, reason_kind

# skewed like StereoSet's train split (race 577, profession 486, gender 153, religion 47)
SKEWED = {"race": 577, "profession": 486, "gender": 153, "religion": 47}


@pytest.mark.parametrize("cap", [80, 8, 4, 3, 1])
def test_cap_is_never_exceeded_and_stays_stratified(cap):
    plan = allocate_cap(cap, SKEWED)
    assert sum(plan.values()) == min(cap, sum(SKEWED.values()))
    assert all(0 <= plan[lab] <= n for lab, n in SKEWED.items())
    if cap >= len(SKEWED):
        assert all(q >= 1 for q in plan.values())  # every label when the cap allows it
    assert plan == allocate_cap(cap, dict(reversed(list(SKEWED.items()))))  # deterministic, order-free


def test_cap_80_follows_the_label_shares():
    # shares 36.55 / 30.79 / 9.69 / 2.98: rounding each (the old sampler) kept 37+31+10+3 = 81 rows;
    # largest remainders give the 3 rows left after the floors to religion, profession, gender
    assert allocate_cap(80, SKEWED) == {"race": 36, "profession": 31, "gender": 10, "religion": 3}


def test_cap_8_gives_the_rare_label_one_and_shares_the_rest():
    plan = allocate_cap(8, SKEWED)
    assert plan == {"race": 3, "profession": 3, "gender": 1, "religion": 1}


def test_cap_below_the_number_of_labels_goes_to_the_largest_shares():
    assert allocate_cap(1, SKEWED) == {"race": 1, "profession": 0, "gender": 0, "religion": 0}
    assert allocate_cap(2, SKEWED) == {"race": 1, "profession": 1, "gender": 0, "religion": 0}


def test_no_cap_or_a_cap_above_the_rows_keeps_everything():
    assert allocate_cap(None, SKEWED) == SKEWED
    assert allocate_cap(10_000, SKEWED) == SKEWED
    assert allocate_cap(5, {"a": 2, "b": 0, "c": 1}) == {"a": 2, "b": 0, "c": 1}


def test_ties_break_by_size_then_name():
    assert allocate_cap(1, {"b": 5, "a": 5}) == {"a": 1, "b": 0}
    assert allocate_cap(3, {"b": 5, "a": 5, "c": 9}) == {"a": 1, "b": 1, "c": 1}


def test_random_counts_never_exceed_cap_or_availability():
    rng = random.Random(7)
    for _ in range(2000):
        counts = {f"l{i}": rng.choice([0, 1, 1, 2, 3, 5, 40, 900]) for i in range(rng.randint(1, 7))}
        cap = rng.randint(1, 60)
        plan = allocate_cap(cap, counts)
        present = [lab for lab, n in counts.items() if n > 0]
        assert sum(plan.values()) == min(cap, sum(counts.values())), (cap, counts, plan)
        assert all(0 <= plan[lab] <= counts[lab] for lab in counts), (cap, counts, plan)
        if cap >= len(present):
            assert all(plan[lab] >= 1 for lab in present), (cap, counts, plan)


def test_reason_kind_drops_the_row_specific_tail():
    assert reason_kind("label outside the label set: astrology") == "label outside the label set"
    assert reason_kind("text longer than 4000 characters (5123)") == "text longer than 4000 characters"
    assert reason_kind("undecodable text (not UTF-8: invalid start byte at byte 4)") == "undecodable text"
    assert reason_kind("split must be train, val or test, got holdout") == "split must be train, val or test"
    assert reason_kind("duplicate id") == "duplicate id"


def test_misspelt_label_is_named_with_counts_and_the_way_out():
    labels = ["gender", "profession", "race", "religon"]
    problems = quality_problems(labels, {"gender": 255, "profession": 810, "race": 962}, 2106,
                                {"label outside the label set: religion": 79}, 0.2)
    assert set(problems) == {"missing_labels"}
    msg = problems["missing_labels"]
    assert "'religon'" in msg and "religon=0" in msg and "'religion'=79" in msg
    assert "misspelt" in msg and "dataset.allow_missing_labels: true" in msg


def test_a_large_share_rejected_for_one_reason_is_a_problem():
    reasons = {"label outside the label set: a": 150, "label outside the label set: b": 100, "empty text": 5}
    problems = quality_problems(["x", "y"], {"x": 500, "y": 245}, 1000, reasons, 0.2)
    assert set(problems) == {"reject_share"}
    assert "'label outside the label set': 250 of 1000 rows (25%)" in problems["reject_share"]
    assert "dataset.max_reject_share" in problems["reject_share"]
    assert quality_problems(["x", "y"], {"x": 500, "y": 245}, 1000, reasons, 0.3) == {}
    assert quality_problems(["x", "y"], {"x": 500, "y": 245}, 1000, reasons, 1.0) == {}
