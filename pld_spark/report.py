"""The evaluation report: one self-contained HTML file (plots embedded as PNG data URIs)
and a Markdown summary, written to ``<report_dir>/<run_id>/``.

Input is the plain dict :func:`pld_spark.pipeline.evaluate.run` returns (conditions with
their metrics), so a report can be re-rendered from stored ``evaluations`` rows too.
Plots need matplotlib (extra ``pld_spark[report]``); without it the report still has every
number, with a note where the plots would be.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

PLD_CONDITIONS = ("pld", "pld_resolved", "pld_selected", "pld_cluster")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- plots
def plot_macro_f1(conditions: Sequence[dict]) -> str | None:
    """Bar chart of macro-F1 per condition with bootstrap 95% CI error bars (base64 PNG)."""
    plt = _pyplot()
    if plt is None or not conditions:
        return None
    names = [c["condition"] for c in conditions]
    f1 = [c["macro_f1"] for c in conditions]
    lo = [max(0.0, c["macro_f1"] - (c.get("ci_low") if c.get("ci_low") is not None else c["macro_f1"]))
          for c in conditions]
    hi = [max(0.0, (c.get("ci_high") if c.get("ci_high") is not None else c["macro_f1"]) - c["macro_f1"])
          for c in conditions]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.6))
    colors = ["#d98b2b" if n in PLD_CONDITIONS else "#4c78a8" for n in names]
    ax.bar(names, f1, yerr=[lo, hi], capsize=6, color=colors)
    for i, v in enumerate(f1):
        ax.text(i + 0.08, v + 0.01, f"{v:.2f}", ha="left", va="bottom", fontsize=9)  # beside the CI bar
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("macro-F1 (95% CI)")
    ax.set_title("Macro-F1 by condition (same test split)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_latency(conditions: Sequence[dict]) -> str | None:
    """Grouped bars: latency p50 and p95 per example, plus the first (cold-prefix) request."""
    plt = _pyplot()
    conditions = [c for c in conditions if not _reused(c)]  # nothing measured: no bars
    if plt is None or not conditions:
        return None
    import numpy as np

    names = [c["condition"] for c in conditions]
    x = np.arange(len(names))
    w = 0.27
    series = [("p50", "latency_p50", "#4c78a8"), ("p95", "latency_p95", "#9ecae9"),
              ("first request (cold prefix)", "latency_first", "#e45756")]
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 3.6))
    for i, (label, key, color) in enumerate(series):
        vals = [np.nan if c.get(key) is None else c[key] * 1000 for c in conditions]  # unmeasured: no bar
        ax.bar(x + (i - 1) * w, vals, w, label=label, color=color)
    ax.set_xticks(x, names)
    ax.set_ylabel("ms per example")
    ax.set_yscale("symlog", linthresh=100)
    ax.set_title("Student latency per example")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_confusion(cond: dict) -> str | None:
    """Confusion matrix heatmap (rows true, columns predicted; failures as an extra column)."""
    plt = _pyplot()
    conf = cond.get("confusion") or {}
    if plt is None or not conf.get("labels"):
        return None
    import numpy as np

    labels = list(conf["labels"])
    mat = np.array(conf["matrix"], dtype=float)
    fails = np.array(conf.get("failures") or [0] * len(labels), dtype=float)
    cols = labels
    if fails.sum() > 0:
        mat = np.column_stack([mat, fails])
        cols = labels + ["(failed)"]
    fig, ax = plt.subplots(figsize=(0.8 * len(cols) + 1.8, 0.7 * len(labels) + 1.4))
    ax.imshow(mat, cmap="Blues")
    vmax = mat.max() if mat.size else 0
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax.text(j, i, f"{int(mat[i, j])}", ha="center", va="center", fontsize=9,
                    color="white" if vmax and mat[i, j] > vmax / 2 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{cond['condition']} (macro-F1 {cond['macro_f1']:.2f})", fontsize=10)
    return _png(fig)


# ----------------------------------------------------------------------------- text
SUMMARY_COLUMNS = ("condition", "prompt version", "n", "macro-F1 [95% CI]", "val F1", "calibration", "accuracy",
                   "p50", "p95", "prompt tok/ex", "prefix reuse")
PAIRED_COLUMNS = ("comparison (a - b)", "a", "b", "delta macro-F1 [95% CI]", "a better in", "McNemar p")


def _reused(c: dict) -> str | None:
    """The condition whose figures ``c`` reuses (same prompt version, scored once), else None."""
    return c.get("reused_from") or None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def summary_rows(conditions: Sequence[dict]) -> list[list[str]]:
    """The summary table's cells, one row per condition (shared by the CLI, HTML and Markdown).

    A condition that reuses another's figures (same prompt) shows its quality figures and
    ``see <condition>`` where a measurement would be: nothing unmeasured is printed as 0."""
    rows = []
    for c in conditions:
        src = _reused(c)
        measured = (lambda text: f"see {src}") if src else (lambda text: text)
        rows.append([
            c["condition"], str(c.get("prompt_version") or "-"), str(c.get("n", "-")),
            f"{c['macro_f1']:.3f} [{_fmt(c.get('ci_low'))}, {_fmt(c.get('ci_high'))}]",
            _fmt(c.get("val_macro_f1")), str(c.get("calibration") or "-"), _fmt(c.get("accuracy")), measured(_ms(c.get("latency_p50"))), measured(_ms(c.get("latency_p95"))),
            _fmt(c.get("prompt_tokens_mean"), 0), measured(_pct(c.get("prefix_hit_rate"))),
        ])
    return rows


def paired_rows(paired: dict[str, dict]) -> list[list[str]]:
    """One row per paired comparison on the same test rows (shared by the CLI, HTML and Markdown)."""
    return [[k, v["a"], v["b"], f"{v['delta']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]",
             f"{v['p_a_better'] * 100:.0f}% of resamples", _fmt(v.get("mcnemar_p"))] for k, v in paired.items()]


def pld_note(meta: dict[str, Any]) -> str:
    """Which PLD prompt the comparisons use, said plainly."""
    name = meta.get("pld_condition")
    if not name:
        return "no PLD prompt was evaluated"
    if name == "pld":
        return "PLD = the prompt version given with --prompt-version"
    if meta.get("pld_promoted"):
        return f"PLD = {name}, the prompt this task's 'distilled' alias points at (it beat zero-shot on validation)"
    return (f"PLD = {name}: NOT promoted to 'distilled' (it did not beat zero-shot on validation); "
            f"compared anyway so the numbers are visible")


def _reuse_note(c: dict) -> str:
    return f"same prompt as {_reused(c)} ({c.get('prompt_version')}); figures reused, not scored again"


def reuse_notes(conditions: Sequence[dict]) -> list[str]:
    """One line per condition that reuses another's figures."""
    return [f"{c['condition']}: {_reuse_note(c)}" for c in conditions if _reused(c)]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width text table."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(header, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join([line, sep, *body])


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    return "\n".join(out)


def latency_contrast(conditions: Sequence[dict]) -> dict[str, Any] | None:
    """PLD (with its shared rule prefix reused) vs zero-shot, both measured in this run.

    Returns None when either side is missing. ``pld`` is the conflict-loop prompt when it was
    evaluated, else the clustering prompt."""
    by = {c["condition"]: c for c in conditions}
    zs = by.get("zero_shot")
    # a condition that reuses another's figures measured nothing: contrast the one that did
    pld = next((by[n] for n in PLD_CONDITIONS if n in by and not _reused(by[n])), None)
    if zs is None or pld is None:
        return None
    out: dict[str, Any] = {"zero_shot": zs, "pld": pld,
                           "same_prompt": [n for n in PLD_CONDITIONS if n in by and _reused(by[n]) == pld["condition"]]}
    if zs.get("latency_p50") and pld.get("latency_p50"):
        out["p50_ratio"] = pld["latency_p50"] / zs["latency_p50"]
    if zs.get("prompt_tokens_mean") and pld.get("prompt_tokens_mean"):
        out["prompt_token_ratio"] = pld["prompt_tokens_mean"] / zs["prompt_tokens_mean"]
    if pld.get("latency_first") and pld.get("latency_p50"):
        out["cold_over_warm"] = pld["latency_first"] / pld["latency_p50"]
    return out


def _contrast_sentence(lc: dict[str, Any]) -> str:
    zs, pld = lc["zero_shot"], lc["pld"]
    parts = [
        f"{pld['condition']} sends {_fmt(pld.get('prompt_tokens_mean'), 0)} prompt tokens per example "
        f"vs {_fmt(zs.get('prompt_tokens_mean'), 0)} for zero_shot"
        + (f" ({lc['prompt_token_ratio']:.1f}x)" if "prompt_token_ratio" in lc else "") + ".",
        f"With the shared rule prefix reused ({(pld.get('prefix_hit_rate') or 0) * 100:.0f}% of requests, "
        f"{_fmt(pld.get('prefix_reused_mean'), 0)} tokens each), its p50 latency is {_ms(pld.get('latency_p50'))} "
        f"vs {_ms(zs.get('latency_p50'))} for zero_shot"
        + (f" ({lc['p50_ratio']:.2f}x)" if "p50_ratio" in lc else "") + ".",
    ]
    if pld.get("latency_first") is not None:
        parts.append(f"The first {pld['condition']} request, before the prefix was cached, took "
                     f"{_ms(pld.get('latency_first'))}.")
    for name in lc.get("same_prompt") or ():
        parts.append(f"{name} uses the same prompt as {pld['condition']}; its figures are reused, not measured again.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- render
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;
background:#fff;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:4px 9px;text-align:left}
th{background:#f0f3f7} td.num{text-align:right} .meta{color:#555;font-size:.9em} .note{color:#8a5a00}
.grid{display:flex;flex-wrap:wrap;gap:12px} .grid figure{margin:0}
code{background:#f5f5f5;padding:1px 4px}
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _img(b64: str | None, alt: str) -> str:
    if not b64:
        return f'<p class="note">[{html.escape(alt)}: plot needs matplotlib, <code>pip install pld_spark[report]</code>]</p>'
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"></figure>'


def render_html(result: dict[str, Any]) -> str:
    """The report as one HTML string."""
    conds = result.get("conditions_list") or list(result.get("conditions", {}).values())
    meta = result.get("meta", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>PLD evaluation {html.escape(str(result.get('run_id')))}"
             f"</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>Prompt-Level Distillation: evaluation of task <code>{html.escape(str(meta.get('task', '')))}</code></h1>")
    meta_items = [("run", result.get("run_id")), ("student", meta.get("student")), ("engine", meta.get("engine")),
                  ("calibration", meta.get("calibration")), ("test examples", meta.get("n_test")),
                  ("labels", ", ".join(meta.get("labels", []))), ("bootstrap resamples", meta.get("bootstrap")),
                  ("created", meta.get("created"))]
    parts.append("<p class='meta'>" + " &middot; ".join(f"<b>{html.escape(k)}</b>: {html.escape(str(v))}"
                                                       for k, v in meta_items if v is not None) + "</p>")
    parts.append("<h2>Summary</h2>")
    parts.append(_html_table(SUMMARY_COLUMNS, summary_rows(conds)))
    skipped = result.get("skipped") or {}
    notes = [html.escape(n) for n in reuse_notes(conds)]
    notes += [f"skipped <b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in skipped.items()]
    if notes:
        parts.append("<ul>" + "".join(f"<li class='note'>{n}</li>" for n in notes) + "</ul>")
    parts.append(_img(plot_macro_f1(conds), "macro-F1 by condition"))
    if result.get("paired"):
        parts.append("<h2>Paired comparisons on the same test rows</h2>")
        parts.append(f"<p>{html.escape(pld_note(meta))}; zero_shot_best = {html.escape(str(meta.get('zero_shot_best')))}"
                     " (the better zero-shot on validation).</p>")
        parts.append(_html_table(PAIRED_COLUMNS, paired_rows(result["paired"])))

    parts.append("<h2>Latency: PLD with prefix reuse vs zero-shot (same run)</h2>")
    lc = latency_contrast(conds)
    if lc:
        parts.append(f"<p>{html.escape(_contrast_sentence(lc))}</p>")
    else:
        parts.append("<p class='note'>zero_shot and a PLD condition are both needed for this contrast.</p>")
    lat_header = ("condition", "p50", "p95", "mean", "first request (cold)", "prompt tok/ex", "output tok/ex",
                  "prefix hit rate", "reused tok/ex", "reused share")
    lat_rows = []
    for c in conds:
        if _reused(c):
            see = f"see {_reused(c)}"
            lat_rows.append([c["condition"], see, see, see, see, _fmt(c.get("prompt_tokens_mean"), 0),
                             _fmt(c.get("output_tokens_mean"), 1), see, see, see])
            continue
        lat_rows.append([c["condition"], _ms(c.get("latency_p50")), _ms(c.get("latency_p95")),
                         _ms(c.get("latency_mean")), _ms(c.get("latency_first")), _fmt(c.get("prompt_tokens_mean"), 0),
                         _fmt(c.get("output_tokens_mean"), 1), _pct(c.get("prefix_hit_rate")),
                         _fmt(c.get("prefix_reused_mean"), 0), _pct(c.get("prefix_reused_share"))])
    parts.append(_html_table(lat_header, lat_rows))
    parts.append(_img(plot_latency(conds), "latency per condition"))

    parts.append("<h2>Per-class precision / recall / F1</h2>")
    for c in conds:
        pc = c.get("per_class") or {}
        rows = [[lab, _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1"]), v["support"]] for lab, v in pc.items()]
        parts.append(f"<h3>{html.escape(c['condition'])} <span class='meta'>prompt {html.escape(str(c.get('prompt_version')))}"
                     f", errors {c.get('errors', 0)}{', ' + html.escape(c['note']) if c.get('note') else ''}</span></h3>")
        parts.append(_html_table(("label", "precision", "recall", "F1", "support"), rows))

    parts.append("<h2>Confusion matrices</h2><div class='grid'>")
    for c in conds:
        if not _reused(c):  # the same predictions as the condition it reuses
            parts.append(_img(plot_confusion(c), f"confusion matrix {c['condition']}"))
    parts.append("</div>")
    parts.append("<p class='meta'>Macro-F1 averages every label of the task (failures count as wrong); the CI is a "
                 "seeded percentile bootstrap over test examples. Latency is wall time per example inside the "
                 "student call; 'first request' is the first example of a condition, before its prompt prefix "
                 "was cached.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(result: dict[str, Any]) -> str:
    """The Markdown summary: headline table, skipped conditions, latency contrast."""
    conds = result.get("conditions_list") or list(result.get("conditions", {}).values())
    meta = result.get("meta", {})
    out = [f"# PLD evaluation: {meta.get('task', '')} (run {result.get('run_id')})", "",
           f"Student `{meta.get('student')}`, engine `{meta.get('engine')}`, calibration `{meta.get('calibration')}`, "
           f"{meta.get('n_test')} test examples.", "", _md_table(SUMMARY_COLUMNS, summary_rows(conds)), ""]
    out += [f"- **{c['condition']}**: {_reuse_note(c)}" for c in conds if _reused(c)]
    for k, v in (result.get("skipped") or {}).items():
        out.append(f"- skipped **{k}**: {v}")
    if result.get("paired"):
        out += ["", "## Paired comparisons on the same test rows", "",
                f"{pld_note(meta)}; zero_shot_best = {meta.get('zero_shot_best')} (the better zero-shot on validation).",
                "", _md_table(PAIRED_COLUMNS, paired_rows(result["paired"]))]
    lc = latency_contrast(conds)
    out += ["", "## Latency: PLD with prefix reuse vs zero-shot (same run)", "",
            _contrast_sentence(lc) if lc else "zero_shot and a PLD condition are both needed for this contrast.", ""]
    return "\n".join(out)


def write_report(result: dict[str, Any], report_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<report_dir>/<run_id>/report.html`` and ``summary.md``; return both paths."""
    out = Path(report_dir) / str(result["run_id"])
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "report.html", out / "summary.md"
    html_path.write_text(render_html(result), encoding="utf-8")
    md_path.write_text(render_markdown(result), encoding="utf-8")
    if _pyplot() is None:
        log.warning("matplotlib is not installed: the report has no plots (pip install 'pld_spark[report]')")
    return html_path, md_path
