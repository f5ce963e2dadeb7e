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


def _with_reused(result):
    """pld_cluster measured; pld_resolved kept the same prompt, so evaluate reused its figures."""
    from pld_spark.pipeline.evaluate import Condition, reused_result

    cluster = {**result["conditions"]["pld_resolved"], "condition": "pld_cluster", "kind": "consolidated"}
    resolved = reused_result(cluster, Condition("pld_resolved", "pv-pld", "same text", "consolidated",
                                                note="alias 'distilled'"))
    return {**result, "conditions": {"zero_shot": result["conditions"]["zero_shot"], "pld_cluster": cluster,
                                     "pld_resolved": resolved}, "skipped": {}}


def test_reuse_plan_scores_each_prompt_version_once():
    from pld_spark.pipeline.evaluate import Condition, reuse_plan

    conds = [Condition("zero_shot", "pv-z", "z", "zero_shot"), Condition("pld_cluster", "pv-p", "p", "consolidated"),
             Condition("pld_resolved", "pv-p", "p", "consolidated"), Condition("cot", "pv-z", "z", "cot")]
    assert reuse_plan(conds) == {"pld_resolved": "pld_cluster"}  # cot scores differently: never merged
    assert reuse_plan(conds[:2] + [Condition("pld_resolved", "pv-q", "q", "resolved")]) == {}


def test_reused_condition_reports_no_unmeasured_latency(result, tmp_path):
    res = _with_reused(result)
    resolved = res["conditions"]["pld_resolved"]
    assert resolved["reused_from"] == "pld_cluster" and resolved["latency_p50"] is None
    assert resolved["latency_first"] is None and resolved["prefix_hit_rate"] is None
    assert resolved["macro_f1"] == res["conditions"]["pld_cluster"]["macro_f1"]
    assert resolved["note"] == "alias 'distilled'; same prompt as pld_cluster; figures reused"
    html_path, md_path = report.write_report(res, tmp_path)
    html, md = html_path.read_text(), md_path.read_text()

    from pld_spark.pipeline.evaluate import summary_table

    table = summary_table(res)
    row = next(line for line in table.splitlines() if line.startswith("pld_resolved"))
    assert f"{resolved['macro_f1']:.3f} [" in row and row.count("see pld_cluster") == 3
    assert " ms" not in row and "0%" not in row  # nothing printed that was not measured
    assert "pld_resolved: same prompt as pld_cluster (pv-pld); figures reused, not scored again" in table
    md_row = next(line for line in md.splitlines() if line.startswith("| pld_resolved |"))
    assert " ms" not in md_row and "see pld_cluster" in md_row
    assert "- **pld_resolved**: same prompt as pld_cluster (pv-pld); figures reused" in md
    # the latency contrast is about the condition that was measured, and says why
    for text in (md, html):
        assert "took 0 ms" not in text and "pld_cluster sends 900 prompt tokens" in text
        assert "its p50 latency is 150 ms" in text and "took 2500 ms" in text
        assert "pld_resolved uses the same prompt as pld_cluster; its figures are reused, not measured again." in text
    lat_row = re.search(r"<tr><td>pld_resolved</td>(.*?)</tr>", html.split("Latency: PLD")[1]).group(1)
    assert " ms" not in lat_row and "see pld_cluster" in lat_row
    # bar chart + latency chart (measured conditions) + confusion matrices of zero_shot and pld_cluster
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 4
