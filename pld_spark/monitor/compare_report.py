"""The report of ``pld compare``: one HTML page and the same in Markdown, plus the printed summary.

Input is the dict :func:`pld_spark.monitor.compare.run` returns (also what the ``comparisons`` row
holds), so a page can be re-rendered from a stored row.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

from pld_spark.report import text_table

_CSS = ("body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;"
        "color:#222;padding:0 1em} table{border-collapse:collapse;margin:.6em 0;font-size:.92em}"
        "th,td{border:1px solid #ccc;padding:4px 9px;text-align:left;vertical-align:top} th{background:#f0f3f7}"
        ".meta{color:#555;font-size:.9em} code{background:#f5f5f5;padding:1px 4px}")


def _f(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _name(result: dict[str, Any], side: str) -> str:
    alias = result.get(f"alias_{side}")
    return result[f"version_{side}"] + (f" ({alias})" if alias else "")


def headline(result: dict[str, Any]) -> list[list[str]]:
    mc = result["mcnemar"]
    return [["A", _name(result, "a"), _f(result["macro_f1_a"]), _f(result.get("accuracy_a"))],
            ["B", _name(result, "b"), _f(result["macro_f1_b"]), _f(result.get("accuracy_b"))],
            ["A - B", f"95% CI [{_f(result['ci_low'])}, {_f(result['ci_high'])}]; A wins in "
                      f"{result['p_a_better']:.0%} of {result.get('bootstrap', '?')} resamples",
             f"{result['delta']:+.3f}", ""],
            ["McNemar", f"only A right: {mc['a_only']}, only B right: {mc['b_only']}", f"p = {mc['p_value']:.3g}", ""]]


HEAD_COLUMNS = ("", "prompt", "macro-F1", "accuracy")
LABEL_COLUMNS = ("label", "support", "F1 A", "F1 B", "A - B")
DIS_COLUMNS = ("doc_id", "gold", "A", "B", "right", "input")


def label_rows(result: dict[str, Any]) -> list[list[str]]:
    return [[lab, str(v["support"]), _f(v["f1_a"]), _f(v["f1_b"]), f"{v['delta']:+.3f}"]
            for lab, v in result["per_label"].items()]


def disagreement_rows(result: dict[str, Any], width: int = 120) -> list[list[str]]:
    def cut(s):
        s = " ".join((s or "").split())
        return s if len(s) <= width else s[:width - 1] + "…"

    return [[d["doc_id"], d["gold"], d["a"] or "<error>", d["b"] or "<error>", d["right"], cut(d.get("input_text"))]
            for d in result["disagreements"]]


def _meta(result: dict[str, Any]) -> str:
    scored = result.get("scored") or {}
    return (f"task {result['task']}; rows: {result['source']}, n = {result['n']}"
            + (f" ({result['dropped']} with a label outside the label set left out)" if result.get("dropped") else "")
            + f"; scored now: A {scored.get('a', 0)}, B {scored.get('b', 0)} (the rest from stored predictions); "
            f"run {result['run_id']}, {result.get('created_at', '')}")


def summary_text(result: dict[str, Any]) -> str:
    """The printed summary of a comparison."""
    parts = [f"comparison {result['comparison_id']}: {_meta(result)}", "",
             text_table(HEAD_COLUMNS, headline(result)), "", text_table(LABEL_COLUMNS, label_rows(result)), "",
             f"{result['n_disagree']} rows where A and B disagree"
             + (f"; the first {len(result['disagreements'])}:" if result["disagreements"] else ".")]
    if result["disagreements"]:
        parts.append(text_table(DIS_COLUMNS, disagreement_rows(result, 70)))
    parts += ["", f"report: {result.get('report_html', '-')}"]
    return "\n".join(parts)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in rows])


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _title(result: dict[str, Any]) -> str:
    return f"Prompt comparison: {_name(result, 'a')} vs {_name(result, 'b')}"


def render_markdown(result: dict[str, Any]) -> str:
    return "\n".join([f"# {_title(result)}", "", _meta(result), "", _md_table(HEAD_COLUMNS, headline(result)), "",
                      "## Per label", "", _md_table(LABEL_COLUMNS, label_rows(result)), "",
                      f"## Where they disagree ({result['n_disagree']} rows; the first "
                      f"{len(result['disagreements'])})", "", _md_table(DIS_COLUMNS, disagreement_rows(result)), ""])


def render_html(result: dict[str, Any]) -> str:
    title = html.escape(_title(result))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
            f"<body><h1>{title}</h1><p class='meta'>{html.escape(_meta(result))}</p>"
            f"{_html_table(HEAD_COLUMNS, headline(result))}<h2>Per label</h2>"
            f"{_html_table(LABEL_COLUMNS, label_rows(result))}"
            f"<h2>Where they disagree ({result['n_disagree']} rows; the first {len(result['disagreements'])})</h2>"
            f"{_html_table(DIS_COLUMNS, disagreement_rows(result))}</body></html>")


def write_report(result: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``folder``; return both paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(render_html(result), encoding="utf-8")
    md_path.write_text(render_markdown(result), encoding="utf-8")
    return html_path, md_path
