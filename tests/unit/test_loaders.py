import json

import pytest

from pld_spark.data.loaders import load_contractnli, load_generic, load_stereoset
from pld_spark.errors import DataError


def test_stereoset_intrasentence_bias_type():
    out = load_stereoset("data/stereoset/stereoset_dev_sentences_with_ids.json", {})
    assert len(out.rows) == 2106
    labels = {}
    for r in out.rows:
        labels[r["label"]] = labels.get(r["label"], 0) + 1
    assert labels == {"gender": 255, "profession": 810, "race": 962, "religion": 79}
    assert len({r["example_id"] for r in out.rows}) == 2106
    assert all("BLANK" in r["pair"] for r in out.rows)


def test_stereoset_sentence_label_option():
    out = load_stereoset("data/stereoset/stereoset_dev_sentences_with_ids.json",
                         {"label": "sentence_label", "part": "intersentence"})
    assert len(out.rows) == 3 * 2123
    assert {r["label"] for r in out.rows} == {"stereotype", "anti-stereotype", "unrelated"}


def test_stereoset_bad_option_and_missing_file():
    with pytest.raises(DataError, match="unknown option"):
        load_stereoset("data/stereoset/stereoset_dev_sentences_with_ids.json", {"labels": "x"})
    with pytest.raises(DataError) as e:
        load_stereoset("/nope/stereoset.json", {})
    assert "/nope/stereoset.json" in str(e.value) and "How to get it" in str(e.value)


def test_contractnli_official_splits():
    out = load_contractnli("data/contractnli", {})
    by_split = {}
    for r in out.rows:
        by_split[r["split"]] = by_split.get(r["split"], 0) + 1
    assert by_split == {"train": 850, "val": 1037, "test": 2091}
    assert {r["label"] for r in out.rows} == {"Entailment", "Contradiction", "NotMentioned"}
    r = out.rows[0]
    assert r["pair"] and len(r["text"]) > 1000


def test_generic_jsonl_keeps_bad_lines_as_rows(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"id": "a", "t": "hello", "y": "pos"}\n'
                  b'not json\n'
                  b'{"id": "b", "t": "caf\xe9", "y": "neg"}\n'
                  b'[1, 2]\n')
    out = load_generic(str(p), {}, {"id": "id", "text": "t", "label": "y"})
    assert len(out.rows) == 4
    errs = {r["row_number"]: r["decode_error"] for r in out.rows}
    assert errs[1] is None
    assert "not valid JSON" in errs[2]
    assert "undecodable" in errs[3]
    assert "expected a JSON object" in errs[4]


def test_generic_missing_column_and_wrong_type(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
    with pytest.raises(DataError) as e:
        load_generic(str(p), {}, {"label": "y"})
    assert "x.jsonl" in str(e.value) and "label -> 'y'" in str(e.value)
    q = tmp_path / "x.xlsx"
    q.write_bytes(b"PK")
    with pytest.raises(DataError, match="unsupported file type"):
        load_generic(str(q), {}, {})


def test_generic_csv_with_bad_bytes(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(b'id,text,label\n1,"hello, world",a\n2,\xff\xfe,b\n3,"multi\nline",a\n')
    out = load_generic(str(p), {}, {"id": "id"})
    assert [r["example_id"] for r in out.rows if r["decode_error"] is None] == ["1", "3"]
    bad = [r for r in out.rows if r["decode_error"]]
    assert len(bad) == 1 and bad[0]["row_number"] == 3
