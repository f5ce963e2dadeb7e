"""Report rendering from a metrics dict (no Spark, no model)."""
import re

import pandas as pd
import pytest

from pld_spark import metrics, report

LABELS = ["gender", "profession", "race", "religion"]


def _cond(name, version, gold, pred, lat, tin, reused):
    pdf = pd.DataFrame({"gold": gold, "label": pred, "error": [None] * len(gold), "latency_s": lat,
                        "tokens_in": tin, "tokens_out": [0] * len(gold), "prefix_reused_tokens": reused})
    m = metrics.condition_metrics(pdf, LABELS, n_resamples=100, seed=1)
    return {"condition": name, "prompt_version": version, "kind": name, "engine": "local", "calibration": "batch",
            "note": "", **m}


@pytest.fixture
def result():
    gold = ["gender", "profession", "race", "religion"] * 5
    zs = _cond("zero_shot", "pv-zero", gold, ["race"] * 20, [0.4] + [0.12] * 19, [150] * 20, [0] + [140] * 19)
    pld = _cond("pld_resolved", "pv-pld", gold, gold[:16] + ["race", None, "race", "race"], [2.5] + [0.15] * 19,
                [900] * 20, [0] + [880] * 19)
    return {"run_id": "r-test", "conditions": {"zero_shot": zs, "pld_resolved": pld},
            "skipped": {"pld_cluster": "alias 'clustered' of task 'stereoset' not found in prompt_aliases"},
            "meta": {"task": "stereoset", "student": "llamacpp:smollm2", "engine": "local", "calibration": "batch",
                     "n_test": 20, "labels": LABELS, "bootstrap": 100, "created": "2026-01-01T00:00:00"}}


def test_html_has_tables_plots_and_latency_contrast(result, tmp_path):
    html_path, md_path = report.write_report(result, tmp_path)
    assert html_path == tmp_path / "r-test" / "report.html" and md_path.name == "summary.md"
    html = html_path.read_text()
    # summary, latency, per-class and confusion sections
    for heading in ("Summary", "Latency: PLD with prefix reuse vs zero-shot (same run)", "Per-class", "Confusion"):
        assert heading in html
    assert "pv-zero" in html and "pv-pld" in html and "skipped <b>pld_cluster</b>" in html
    # bar chart + latency chart + 2 confusion matrices, all embedded
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(pngs) == 4 and all(len(p) > 2000 for p in pngs)
    # the contrast sentence carries both measured p50s and the cold first request
    assert "its p50 latency is 150 ms vs 120 ms for zero_shot (1.25x)" in html
    assert "took 2500 ms" in html
    assert "900 prompt tokens per example vs 150 for zero_shot (6.0x)" in html


def test_markdown_and_summary_table(result, tmp_path):
    from pld_spark.pipeline.evaluate import summary_table

    _, md_path = report.write_report(result, tmp_path)
    md = md_path.read_text()
    assert md.startswith("# PLD evaluation: stereoset (run r-test)")
    assert "| zero_shot | pv-zero | 20 |" in md
    assert "skipped **pld_cluster**" in md
    table = summary_table(result)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["condition", "prompt", "version"]
    zs = next(line for line in lines if line.startswith("zero_shot"))
    # always 'race' on a balanced 4-class set: macro-F1 = (2*.25*1/1.25)/4 = 0.1
    assert "0.100 [" in zs and "120 ms" in zs and "150" in zs and "95%" in zs
    assert "skipped pld_cluster" in table


def test_latency_contrast_needs_both_sides(result):
    only = {"zero_shot": result["conditions"]["zero_shot"]}
    assert report.latency_contrast(list(only.values())) is None
    lc = report.latency_contrast(list(result["conditions"].values()))
    assert lc["pld"]["condition"] == "pld_resolved"
    assert lc["p50_ratio"] == pytest.approx(0.15 / 0.12)


def test_report_without_matplotlib_still_has_numbers(result, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_pyplot", lambda: None)
    html = report.render_html(result)
    assert "data:image/png" not in html
    assert "plot needs matplotlib" in html and "pv-pld" in html
