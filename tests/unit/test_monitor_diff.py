"""The rule-level diff of two prompt versions (pure) and the comparison report's rendering (no Spark)."""
from pld_spark.monitor.compare_report import render_html, render_markdown, summary_text, write_report
from pld_spark.monitor.diff import format_table, inline_diff, rule_diff, summary
from pld_spark.monitor.stats import compare_stats


def _rule(rid, text, parent=None, **kw):
    return {"rule_id": rid, "instruction": text, "label": kw.pop("label", "race"), "parent_rule_id": parent, **kw}


def test_one_edited_rule_is_edited_and_the_rest_kept():
    a = [_rule("r1", "If the sentence names a country, the label is race."),
         _rule("r2", "If the sentence names a job, the label is profession.", label="profession")]
    b = [a[0], _rule("r2x", "If the sentence names a job or a workplace, the label is profession.", "r2",
                     label="profession", origin="resolve", cluster_id=4, member_micro_ids=["m1", "m2"],
                     source_example_ids=["train-9"])]
    rows = rule_diff(a, b, micro_examples={"m1": "train-1", "m2": "train-2"})
    assert [(r["rule_id"], r["change"], r["from_rule_id"], r["position_before"], r["position_after"])
            for r in rows] == [("r1", "kept", "r1", 1, 1), ("r2x", "edited", "r2", 2, 2)]
    edited = rows[1]
    assert edited["before"] == a[1]["instruction"]
    assert edited["text_diff"] == "If the sentence names a [-job,-] {+job or a workplace,+} the label is profession."
    assert edited["lineage"] == {"origin": "resolve", "cluster_id": 4, "n_members": 2,
                                 "member_example_ids": ["train-1", "train-2"], "source_example_ids": ["train-9"]}
    assert "lineage" not in rows[0]
    assert summary(rows) == {"kept": 1, "reordered": 0, "edited": 1, "added": 0, "removed": 0}


def test_added_removed_and_reordered():
    a = [_rule(f"r{i}", f"rule {i}") for i in range(1, 5)]  # r1 r2 r3 r4
    b = [_rule("r3", "rule 3"), _rule("r2e", "rule two", "r2"), _rule("r1", "rule 1"),
         _rule("r5", "rule 5", origin="resolve", member_micro_ids=[])]
    rows = {r["rule_id"]: r for r in rule_diff(a, b)}
    assert {k: r["change"] for k, r in rows.items()} == {
        "r3": "reordered", "r2e": "edited", "r1": "reordered", "r5": "added", "r4": "removed"}
    assert (rows["r4"]["position_before"], rows["r4"]["position_after"]) == (4, None)
    assert (rows["r5"]["position_before"], rows["r5"]["position_after"], rows["r5"]["from_rule_id"]) == (None, 4, None)
    assert rows["r5"]["lineage"]["n_members"] == 0 and rows["r5"]["lineage"]["origin"] == "resolve"
    # inserting or dropping rules around the shared ones reorders nothing
    ins = {r["rule_id"]: r["change"] for r in rule_diff(a, [_rule("r0", "new")] + a[:2] + a[3:])}
    assert ins == {"r0": "added", "r1": "kept", "r2": "kept", "r4": "kept", "r3": "removed"}
    # a child whose parent is still in B is a new rule, not an edit
    both = {r["rule_id"]: r["change"] for r in rule_diff(a[:1], [a[0], _rule("r1b", "x", "r1")])}
    assert both == {"r1": "kept", "r1b": "added"}
    # parent_of (longer chains, resolved through the rules table) overrides the rules' own parent
    chain = rule_diff(a[:1], [_rule("r1cc", "y", "r1c")], parent_of={"r1cc": "r1"})
    assert [(r["rule_id"], r["change"], r["from_rule_id"]) for r in chain] == [("r1cc", "edited", "r1")]


def test_inline_diff_and_table():
    assert inline_diff("a b c", "a c d") == "a [-b-] c {+d+}"
    assert inline_diff("", "new words") == "{+new words+}"
    a = [_rule("r1", "old text")]
    rows = rule_diff(a, [_rule("r2", "new text", "r1", origin="resolve", cluster_id=1, member_micro_ids=["m"])],
                     micro_examples={"m": "train-3"})
    out = format_table(rows)
    assert "edited" in out and "r1 -> r2:" in out and "[-old-] {+new+} text" in out
    assert "resolve c1 1m [train-3]" in out and out.strip().endswith("1 edited")
    assert format_table([]).strip().endswith("no rules in either version")


def test_compare_report_renders_every_part(tmp_path):
    gold = ["race", "gender", "race", "religion"]
    st = compare_stats(gold, ["race", "gender", "gender", "religion"], ["race", "race", "race", None],
                       ["gender", "profession", "race", "religion"], doc_ids=["a", "b", "c", "d"],
                       texts=["t a", "t <b>", "t c", "t d"], n_resamples=50)
    result = {"comparison_id": "cmp-1", "run_id": "r", "task": "stereoset", "version_a": "pv-a", "version_b": "pv-b",
              "alias_a": "live", "alias_b": None, "source": "split 'test'", "scored": {"a": 0, "b": 4},
              "bootstrap": 50, **st}
    text = summary_text(result)
    assert "pv-a (live)" in text and "only A right: 2, only B right: 1" in text and "A - B" in text
    assert "3 rows where A and B disagree" in text and "scored now: A 0, B 4" in text
    md = render_markdown(result)
    assert md.startswith("# Prompt comparison: pv-a (live) vs pv-b")
    assert "| religion | 1 | 1.000 | 0.000 | +1.000 |" in md
    assert "<error>" in md  # B failed on row d
    page = render_html(result)
    assert "t &lt;b&gt;" in page and "t <b>" not in page  # inputs are escaped
    assert "&lt;error&gt;" in page and "Where they disagree (3 rows" in page
    h, m = write_report(result, tmp_path / "compare-cmp-1")
    assert h.read_text(encoding="utf-8") == page and m.read_text(encoding="utf-8") == md
