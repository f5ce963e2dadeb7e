"""Ingest on local Spark + Delta with the bundled dataset files."""
import json

import pytest

from pld_spark.pipeline import ingest

pytestmark = pytest.mark.spark


def test_stereoset_full_ingest_counts_and_rerun(make_ctx):
    ctx = make_ctx("stereoset.yaml", ["dataset.sample.train=null", "dataset.sample.val=null",
                                      "dataset.sample.test=null"])
    counts = ingest.run(ctx)
    assert counts["examples"] == 2106 and counts["rejects"] == 0
    rows = ctx.store.sql("SELECT bias_type, n FROM (SELECT label AS bias_type, count(*) AS n FROM examples "
                         "GROUP BY label) ORDER BY bias_type").collect()
    assert [(r.bias_type, r.n) for r in rows] == [("gender", 255), ("profession", 810), ("race", 962),
                                                  ("religion", 79)]
    splits = {r.split: r.n for r in ctx.store.sql("SELECT split, count(*) n FROM examples GROUP BY split").collect()}
    assert splits["train"] == pytest.approx(2106 * 0.6, abs=4)
    assert sum(splits.values()) == 2106
    # stratified: religion appears in every split
    rel = ctx.store.sql("SELECT count(DISTINCT split) n FROM examples WHERE label='religion'").collect()[0].n
    assert rel == 3
    first = {r.example_id: r.split for r in ctx.store.read("examples").collect()}
    # re-run: no duplicates, same deterministic split
    ingest.run(ctx)
    df = ctx.store.read("examples")
    assert df.count() == 2106
    assert {r.example_id: r.split for r in df.collect()} == first
    one = df.where("label = 'race'").first()
    assert one.input_text.startswith("Context: ") and "\nSentence: " in one.input_text


def test_demo_sample_is_stratified_and_seeded(make_ctx):
    ctx = make_ctx("stereoset.yaml")
    ingest.run(ctx)
    df = ctx.store.read("examples")
    per = {(r.split, r.label): r.n for r in df.groupBy("split", "label").count().withColumnRenamed("count", "n").collect()}
    for split, cap in (("train", 48), ("val", 24), ("test", 40)):
        total = sum(v for (s, _), v in per.items() if s == split)
        assert abs(total - cap) <= 4, (split, total)
        assert all((split, lab) in per for lab in ("gender", "profession", "race", "religion"))
    assert ingest.current_examples(ctx, "train").count() == sum(v for (s, _), v in per.items() if s == "train")


def test_contractnli_official_splits(make_ctx):
    ctx = make_ctx("contractnli.yaml", ["dataset.sample.train=null", "dataset.sample.val=null",
                                        "dataset.sample.test=null", "input_policy.mode=truncate"])
    counts = ingest.run(ctx)
    assert counts["examples"] == 850 + 1037 + 2091
    got = {r.split: r.n for r in ctx.store.sql("SELECT split, count(*) n FROM examples GROUP BY split").collect()}
    assert got == {"train": 850, "val": 1037, "test": 2091}
    row = ctx.store.read("examples").first()
    assert len(row.input_text) <= 512 * 4 + 200 and "\nHypothesis: " in row.input_text


def test_contractnli_retrieve_policy(make_ctx):
    ctx = make_ctx("contractnli.yaml", ["dataset.sample.train=17", "dataset.sample.val=3", "dataset.sample.test=3"])
    ingest.run(ctx)
    rows = ctx.store.read("examples").collect()
    assert rows
    for r in rows:
        body = r.input_text.split("\nHypothesis: ")[0]
        assert len(body) <= 384 * 4 + 400  # budget (chars) plus separators
        assert json.loads(r.input_policy)["splitter"] == "sentencex"
    # retrieval keeps text relevant to the hypothesis: word overlap beats a plain truncation's on average
    import re

    def overlap(a, b):
        wa = set(re.findall(r"[a-z]{4,}", a.lower()))
        wb = set(re.findall(r"[a-z]{4,}", b.lower()))
        return len(wa & wb) / max(1, len(wb))

    retrieved = sum(overlap(r.input_text.split("\nHypothesis: ")[0], r.pair) for r in rows) / len(rows)
    truncated = sum(overlap(r.text[: 384 * 4], r.pair) for r in rows) / len(rows)
    assert retrieved > truncated


def test_bad_rows_go_to_rejects_with_reasons(make_ctx, tmp_path):
    p = tmp_path / "bad.jsonl"
    good = [{"id": f"g{i}", "text": f"the engineer number {i} fixed it", "label": "profession"} for i in range(12)]
    lines = [json.dumps(r).encode() for r in good]
    lines += [
        json.dumps({"id": "e1", "text": "   ", "label": "race"}).encode(),
        json.dumps({"id": "e2", "text": "fine text", "label": "astrology"}).encode(),
        json.dumps({"id": "g0", "text": "duplicate of g0", "label": "race"}).encode(),
        b'{"id": "e3", "text": "bad \xff bytes", "label": "race"}',
        b"{not json",
        json.dumps({"id": "e4", "text": "x" * 5000, "label": "race"}).encode(),
    ]
    p.write_bytes(b"\n".join(lines) + b"\n")
    ctx = make_ctx("stereoset.yaml", [
        "dataset.loader=generic", f"dataset.path={p}", "dataset.options={}", "dataset.columns={id: id}",
        "dataset.max_text_chars=4000", "dataset.sample.train=null", "dataset.sample.val=null",
        "dataset.sample.test=null"])
    counts = ingest.run(ctx)
    assert counts["examples"] == 12
    reasons = {r.raw and json.loads(r.raw).get("example_id"): (r.field, r.reason) for r in ctx.store.read("rejects").collect()}
    assert reasons["e1"] == ("text", "empty text")
    assert reasons["e2"] == ("label", "label outside the label set: astrology")
    assert reasons["g0"] == ("id", "duplicate id")
    assert reasons["e4"][0] == "text" and "longer than 4000" in reasons["e4"][1]
    undecodable = [v for k, v in reasons.items() if "undecodable" in v[1]]
    not_json = [v for k, v in reasons.items() if "not valid JSON" in v[1]]
    assert len(undecodable) == 1 and len(not_json) == 1
    assert ctx.store.read("rejects").count() == 6
    ingest.run(ctx)  # re-run: rejects are not duplicated either
    assert ctx.store.read("rejects").count() == 6
