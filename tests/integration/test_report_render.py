"""The evaluation report of a real (tiny) run renders in a headless browser.

evaluate runs zero-shot and a PLD prompt on 8 test rows with the real embedded student; the
HTML report is screenshotted with headless Chromium (scripts/screenshot_report.py) and the
PNG must not be blank. Skipped with a reason when no Chromium binary is installed
(``apt-get install -y chromium``).
"""
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pld_spark.pipeline import evaluate, ingest

pytestmark = [pytest.mark.spark, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "screenshot_report.py"


def _chromium():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from screenshot_report import find_chromium
    finally:
        sys.path.pop(0)
    return find_chromium()


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (apt-get install -y chromium, "
                                                "or set CHROMIUM=/path/to/chrome)")
def test_report_of_a_real_run_renders_non_blank(make_ctx, tmp_path):
    from pld_spark.storage.catalog import PROMPT_ALIASES, PROMPTS

    ctx = make_ctx("stereoset.yaml", ["dataset.sample.test=8", "dataset.sample.train=4", "evaluate.bootstrap=100",
                                      "evaluate.conditions=[zero_shot, pld_resolved]",
                                      f"evaluate.report_dir={tmp_path / 'reports'}"])
    ingest.run(ctx)
    text = ("Classify which social bias category a sentence is about.\n\nRules:\n"
            "1. [gender] Mothers, fathers, sisters, girls and boys mean gender.\n"
            "2. [race] Countries, nationalities and ethnic groups mean race.\n\n"
            "Answer with exactly one label from: gender, profession, race, religion. Output only the label.")
    now = datetime.now(timezone.utc)
    rec = {"prompt_version": "pv-distilled", "task": "stereoset", "kind": "resolved", "text": text, "sha256": "x",
           "parent_version": None, "rule_ids": ["r1", "r2"], "dropped_rule_ids": [], "review_ids": [],
           "example_ids": [], "token_count": 0, "token_budget": 1500, "run_id": "earlier", "created_at": now}
    ctx.store.merge("prompts", ctx.spark.createDataFrame([tuple(rec[c] for c in PROMPTS.columns)], PROMPTS.ddl))
    ctx.store.append("prompt_aliases", ctx.spark.createDataFrame(
        [("stereoset", "distilled", "pv-distilled", "resolve", "", now)], PROMPT_ALIASES.ddl))

    out = evaluate.run(ctx)
    html = Path(out["report_html"])
    assert html.exists() and html.parent.name == ctx.run_id
    assert (html.parent / "summary.md").exists()
    page = html.read_text()
    assert "Latency: PLD with prefix reuse vs zero-shot (same run)" in page
    z, p = out["conditions"]["zero_shot"], out["conditions"]["pld_resolved"]
    print(f"\nlatency p50 zero_shot {z['latency_p50'] * 1000:.0f} ms ({z['prompt_tokens_mean']:.0f} prompt tok), "
          f"pld_resolved {p['latency_p50'] * 1000:.0f} ms ({p['prompt_tokens_mean']:.0f} prompt tok, "
          f"{p['prefix_reused_mean']:.0f} reused), first pld request {p['latency_first'] * 1000:.0f} ms")

    png = tmp_path / "report.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(html), "-o", str(png)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert png.exists() and stats["blank"] is False
    assert stats["non_white_share"] > 0.03 and stats["colours"] > 50  # text, tables and plots, not a white page
