"""score's inputs on local Spark + Delta (no model): every input format and its contract errors.

Prompt lookup is tests/spark/test_prompt_versions.py; scoring with the real student is
tests/integration/test_score_real_model.py (local engine) and test_ray_score.py (Ray)."""
import json

import pytest

from pld_spark.errors import ContractError, DataError
from pld_spark.pipeline import score

pytestmark = pytest.mark.spark


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
