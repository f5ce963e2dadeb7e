"""score_batch logic around a client, with a scripted fake client (no Spark, no model)."""
import json

import pandas as pd
import pytest

from pld_spark.errors import ServerError
from pld_spark.llm.types import ClassifyResult
from pld_spark.scoring import RESULT_COLUMNS, StudentScorer, result_arrow, score_batch

LABELS = ["a", "b"]


class ScriptedClient:
    backend = "fake"
    model_id = "scripted"
    calibration = "batch"

    def __init__(self, answers=None, raises=None):
        self.answers = list(answers or [])
        self.raises = raises
        self.calls = []

    def classify(self, system, inputs, labels, calibration=None):
        self.calls.append((system, list(inputs), calibration))
        if self.raises:
            raise self.raises
        return [self.answers.pop(0) for _ in inputs]


def _batch(texts):
    return pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(texts))], "input_text": texts})


def test_rows_in_order_with_probabilities_and_per_row_errors():
    client = ScriptedClient([
        ClassifyResult("b", {"a": 0.2, "b": 0.8}, latency_s=0.5, tokens_in=40, prefix_reused_tokens=0, calibration="batch"),
        ClassifyResult("zzz", {"a": 0.5, "b": 0.5}, calibration="batch"),  # outside the set: must not be stored
        ClassifyResult(None, {}, error="context length", calibration="batch"),
        ClassifyResult("a", {"a": 0.9, "b": 0.1}, latency_s=0.1, tokens_in=42, prefix_reused_tokens=38,
                       calibration="batch"),
    ])
    out = score_batch(client, _batch(["x one", "x two", "", "x three", "x four"]), "SYS", LABELS, "batch")
    assert list(out.columns) == list(RESULT_COLUMNS)
    assert list(out.doc_id) == ["d0", "d1", "d2", "d3", "d4"]
    # the empty input never reaches the model
    assert client.calls == [("SYS", ["x one", "x two", "x three", "x four"], "batch")]
    assert list(out.label) == ["b", None, None, None, "a"]
    assert out.error[1].startswith("label outside the label set") and out.error[2] == "empty input_text"
    assert out.error[3] == "context length" and out.error[0] is None
    assert json.loads(out.probabilities_json[0]) == {"a": 0.2, "b": 0.8}
    assert out.prefix_reused_tokens[4] == 38 and out.tokens_in[0] == 40
    assert set(out.backend) == {"fake"}


def test_whole_batch_failure_is_data():
    client = ScriptedClient(raises=ServerError("503 from server"))
    out = score_batch(client, _batch(["p", "q"]), "SYS", LABELS)
    assert out.label.isna().all()
    assert all(e.startswith("ServerError: 503") for e in out.error)


def test_arrow_output_keeps_string_columns_when_all_null():
    client = ScriptedClient([ClassifyResult("a", {"a": 1.0, "b": 0.0})])
    table = StudentScorer(system="S", labels=LABELS, client=client, arrow_output=True)(_batch(["only"]))
    import pyarrow as pa

    assert table.schema.field("error").type == pa.string()
    assert table.schema.field("tokens_in").type == pa.int64()
    assert table.num_rows == 1


def test_unknown_result_count_is_a_stage_error():
    from pld_spark.errors import StageError

    class Short(ScriptedClient):
        def classify(self, system, inputs, labels, calibration=None):
            return []

    with pytest.raises(StageError, match="0 results for 2 inputs"):
        score_batch(Short(), _batch(["p", "q"]), "S", LABELS)
