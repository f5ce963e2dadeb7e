"""Review helpers and the view SQL texts (no Spark)."""
from pld_spark.pipeline.review import ACTIONS, _who
from pld_spark.storage.views import VIEW_SQL, markdown, tables_of, view_sql


def test_reviewer_defaults_to_user(monkeypatch):
    monkeypatch.setenv("USER", "erin")
    assert _who(None) == "erin" and _who("frank") == "frank"
    assert ACTIONS == ("approve", "edit", "pin", "disable")


def test_view_sql_renders_bare_and_qualified_names():
    assert set(VIEW_SQL) == {"live_prompt_rules", "rule_lineage", "prompt_examples", "prompt_reviews", "prompt_metrics",
                             "predictions_per_label_day", "run_status", "prompt_diff",
                             "drift_status"}
    assert tables_of(VIEW_SQL["rule_lineage"]) == ["instruction_clusters", "micro_instructions", "prompts", "rules"]
    assert tables_of(VIEW_SQL["prompt_examples"]) == ["examples", "prompts"]
    q = view_sql("rule_lineage", lambda t: f"main.pld.{t}")
    assert "FROM main.pld.prompts p" in q and "{" not in q
    assert "FROM prompts p" in view_sql("rule_lineage")
    md = markdown()
    assert all(f"#### `{name}`" in md for name in VIEW_SQL) and md.count("```sql") == len(VIEW_SQL)
