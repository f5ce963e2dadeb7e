"""score on local Spark + Delta: prompt resolution, input formats, and the in-process engine
with the real embedded student."""
import json
from datetime import datetime, timedelta, timezone

import pytest

from pld_spark.errors import ConfigError, ContractError, DataError
from pld_spark.pipeline import score

pytestmark = pytest.mark.spark


def add_prompts(ctx, prompts=(), aliases=()):
    """Write prompts rows [(version, text)] in one MERGE and aliases [(alias, version, when)] in one append."""
    from pld_spark.storage.catalog import PROMPT_ALIASES, PROMPTS

    now = datetime.now(timezone.utc)
    if prompts:
        rows = [{"prompt_version": v, "task": ctx.cfg.task.name, "kind": "test", "text": t, "sha256": "x",
                 "parent_version": None, "rule_ids": [], "dropped_rule_ids": [], "review_ids": [], "token_count": 0,
                 "token_budget": None, "run_id": ctx.run_id, "created_at": now} for v, t in prompts]
        ctx.store.merge("prompts", ctx.spark.createDataFrame([tuple(r[c] for c in PROMPTS.columns) for r in rows],
                                                             PROMPTS.ddl))
    if aliases:
        ctx.store.append("prompt_aliases", ctx.spark.createDataFrame(
            [(ctx.cfg.task.name, a, v, "test", "", w or now) for a, v, w in aliases], PROMPT_ALIASES.ddl))


def test_prompt_resolution_by_version_alias_and_default_order(make_ctx):
    ctx = make_ctx()
    with pytest.raises(ConfigError, match="no 'live' or 'distilled' alias"):
        score.resolve_prompt(ctx)
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    add_prompts(ctx, [("pv-d1", "distilled one"), ("pv-d2", "distilled two"), ("pv-live", "live text")],
                [("distilled", "pv-d2", t + timedelta(hours=1)), ("distilled", "pv-d1", t),
                 ("other-task-alias", "pv-d1", t)])
    ref = score.resolve_prompt(ctx)
    assert (ref.version, ref.text, ref.alias) == ("pv-d2", "distilled two", "distilled")  # latest promotion wins
    assert score.resolve_prompt(ctx, "pv-d1").text == "distilled one"  # explicit version
    with pytest.raises(ConfigError, match="'nope' is neither a prompt_version .* nor an alias of task 'stereoset'"):
        score.resolve_prompt(ctx, "nope")
    add_prompts(ctx, aliases=[("live", "pv-live", t), ("broken", "pv-gone", t)])
    assert score.resolve_prompt(ctx).version == "pv-live"  # live before distilled
    assert score.resolve_prompt(ctx, "distilled").version == "pv-d2"  # alias by name
    with pytest.raises(ConfigError, match="points at prompt_version 'pv-gone'"):
        score.resolve_prompt(ctx, "broken")


def test_input_formats_and_contracts(make_ctx, tmp_path):
    ctx = make_ctx()
    docs = [{"doc_id": f"d{i}", "text": f"text {i}"} for i in range(5)]
    jl = tmp_path / "docs.jsonl"
    jl.write_text("\n".join(json.dumps(d) for d in docs))
    csv = tmp_path / "docs.csv"
    csv.write_text("doc_id,text\n" + "\n".join(f'{d["doc_id"]},"{d["text"]}, with comma"' for d in docs))
    got = {r.doc_id: r.input_text for r in score.load_input(ctx, str(jl)).collect()}
    assert got == {d["doc_id"]: d["text"] for d in docs}
    got, n = score.load_input(ctx, str(csv), with_count=True)
    assert n == 5 and got.where("doc_id = 'd1'").first().input_text == "text 1, with comma"
    frame = ctx.spark.createDataFrame([(d["doc_id"], d["text"]) for d in docs], "doc_id STRING, text STRING")
    frame.withColumnRenamed("text", "input_text").write.parquet(str(tmp_path / "pq"))
    frame.write.format("delta").save(str(tmp_path / "dl"))
    assert score.load_input(ctx, str(tmp_path / "pq"), with_count=True)[1] == 5
    assert score.load_input(ctx, str(tmp_path / "dl"), with_count=True)[1] == 5
    # the examples table by name: example_id is the doc id, input_text the text
    ex = frame.selectExpr("concat('ex-', doc_id) AS example_id", "text AS input_text", "'stereoset' AS task")
    ctx.store.merge("examples", ex)
    got = score.load_input(ctx, "examples")
    assert got.columns == ["doc_id", "input_text"] and {r.doc_id for r in got.collect()} == {f"ex-d{i}" for i in range(5)}
    # bad inputs name the file / column
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "body": "y"}\n')
    with pytest.raises(ContractError, match="bad.jsonl needs columns doc_id and text"):
        score.load_input(ctx, str(bad))
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"doc_id": "x", "text": "a"}\n{"doc_id": "x", "text": "b"}\n{"doc_id": "y", "text": "b"}\n')
    with pytest.raises(DataError, match=r"duplicate doc_id values, e.g. \['x'\]"):
        score.load_input(ctx, str(dup))
    with pytest.raises(DataError, match="no such file or folder"):
        score.load_input(ctx, str(tmp_path / "missing.jsonl"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        score.load_input(ctx, str(tmp_path / "a.txt"))


@pytest.mark.integration
def test_local_engine_scores_file_once_with_real_student(make_ctx, tmp_path):
    ctx = make_ctx("stereoset.yaml", ["score.engine=local", "score.ray.batch_size=4"])
    add_prompts(ctx, [("pv-s", "Classify the bias category. Labels: gender, profession, race, religion.")],
                [("live", "pv-s", None)])
    texts = ["My mother is caring.", "The chess player was hispanic.", "Muslims are peaceful.", "",
             "The engineer was smart.", "Ethiopian men are skinny.", "The nurse was kind.", "Brahmin people are rich."]
    jl = tmp_path / "docs.jsonl"
    jl.write_text("\n".join(json.dumps({"doc_id": f"doc-{i}", "text": t}) for i, t in enumerate(texts)))
    out = score.run(ctx, input_ref=str(jl))
    assert out["scored"] == 8 and out["errors"] == 1 and out["engine"] == "local"
    rows = {r.doc_id: r for r in ctx.store.read("predictions").collect()}
    assert len(rows) == 8
    assert rows["doc-3"].label is None and rows["doc-3"].error == "empty input_text"
    labels = set(ctx.cfg.task.label_names)
    for d, r in rows.items():
        if d == "doc-3":
            continue
        assert r.label in labels and set(r.probabilities) == labels and r.error is None
        assert r.condition == "score" and r.prompt_version == "pv-s" and r.calibration == "batch"
    assert ctx.record.tokens_in > 0
    # re-run: only the errored row is tried again; nothing is duplicated
    again = score.run(ctx, input_ref=str(jl))
    assert again["already_scored"] == 7 and again["scored"] == 1
    assert ctx.store.read("predictions").count() == 8
