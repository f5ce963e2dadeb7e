"""Ingest on local Spark + Delta with the bundled dataset files."""
import json

import pytest

from pld_spark.storage import readers
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
        assert total == cap, (split, total)  # a cap is a cap: it bounds teacher and student calls
        assert all((split, lab) in per for lab in ("gender", "profession", "race", "religion"))
    assert readers.current_examples(ctx, "train").count() == sum(v for (s, _), v in per.items() if s == "train")


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
        "dataset.sample.test=null", "dataset.allow_missing_labels=true"])  # only 'profession' rows are good
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


def _per_split_label(ctx):
    df = readers.current_examples(ctx)
    return {(r.split, r.label): r.n for r in df.groupBy("split", "label").count().withColumnRenamed("count", "n").collect()}


def test_sample_caps_are_exact_even_when_shares_round_up(make_ctx, tmp_path):
    """train 80 over 1,263 skewed train rows rounded per label to 81 before; test 1 < 4 labels."""
    ctx = make_ctx("stereoset.yaml", ["dataset.sample.train=80", "dataset.sample.val=8", "dataset.sample.test=1"])
    counts = ingest.run(ctx)
    per = _per_split_label(ctx)
    totals = {s: sum(n for (sp, _), n in per.items() if sp == s) for s in ("train", "val", "test")}
    assert totals == {"train": 80, "val": 8, "test": 1} and counts["examples"] == 89
    labels = ("gender", "profession", "race", "religion")
    assert all(per.get(("train", lab), 0) >= 1 and per.get(("val", lab), 0) >= 1 for lab in labels)
    assert per[("train", "race")] > per[("train", "gender")] > per[("train", "religion")]  # shares kept
    # deterministic: the same seed picks the same rows in a fresh lakehouse
    again = make_ctx("stereoset.yaml", ["dataset.sample.train=80", "dataset.sample.val=8", "dataset.sample.test=1",
                                        f"lakehouse.path={tmp_path / 'again'}"])
    ingest.run(again)
    assert {r.example_id for r in readers.current_examples(again).collect()} == {
        r.example_id for r in readers.current_examples(ctx).collect()}
    # re-ingesting the unchanged file into the same lakehouse keeps the same capped sample: the
    # stored rows keep their split and the rows the caps left out are ranked as before
    rerun = ingest.run(make_ctx("stereoset.yaml", ["dataset.sample.train=80", "dataset.sample.val=8",
                                                   "dataset.sample.test=1"]))
    assert rerun["new_examples"] == 0 and _per_split_label(ctx) == per


LABELS_MISSPELT = ("task.labels=[{name: gender}, {name: profession}, {name: race}, {name: religon}]")


def test_misspelt_label_fails_naming_it_after_storing_the_rejects(make_ctx):
    from pld_spark.errors import DataError

    ctx = make_ctx("stereoset.yaml", [LABELS_MISSPELT])
    with pytest.raises(DataError) as e:
        ingest.run(ctx)
    msg = str(e.value)
    assert "'religon'" in msg and "got no rows" in msg and "'religion'=79" in msg
    assert "religon=0" in msg and "dataset.allow_missing_labels: true" in msg
    rejects = ctx.store.read("rejects").collect()
    assert len(rejects) == 79 and {r.reason for r in rejects} == {"label outside the label set: religion"}
    assert ctx.store.read("examples").count() == 0  # a failed ingest publishes no examples
    assert ctx.record.counts["ingest"]["rejects"] == 79


def test_missing_label_passes_with_a_warning_when_allowed(make_ctx, caplog):
    ctx = make_ctx("stereoset.yaml", [LABELS_MISSPELT, "dataset.allow_missing_labels=true"])
    with caplog.at_level("WARNING", logger="pld_spark.pipeline.ingest"):
        counts = ingest.run(ctx)
    assert counts["examples"] == 48 + 24 + 40
    assert len(counts["warnings"]) == 1 and "'religon'" in counts["warnings"][0]
    assert any("'religon'" in r.getMessage() and "allowed by dataset.allow_missing_labels" in r.getMessage()
               for r in caplog.records)
    assert {lab for _, lab in _per_split_label(ctx)} == {"gender", "profession", "race"}


def test_a_third_of_rows_rejected_for_one_reason_fails_unless_allowed(make_ctx, tmp_path):
    from pld_spark.errors import DataError

    p = tmp_path / "rows.jsonl"
    labels = ["gender", "profession", "race", "religion"]
    rows = [{"id": f"r{i}", "text": f"sentence number {i}", "lbl": labels[i % 4]} for i in range(20)]
    rows += [{"id": f"x{i}", "text": f"other sentence {i}", "lbl": "Race"} for i in range(10)]  # wrong case
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = ["dataset.loader=generic", f"dataset.path={p}", "dataset.options={}", "dataset.columns={id: id, label: lbl}",
            "dataset.sample.train=null", "dataset.sample.val=null", "dataset.sample.test=null"]
    with pytest.raises(DataError) as e:
        ingest.run(make_ctx("stereoset.yaml", sets))
    assert "'label outside the label set': 10 of 30 rows (33%)" in str(e.value)
    assert "dataset.max_reject_share=0.2" in str(e.value)
    counts = ingest.run(make_ctx("stereoset.yaml", [*sets, "dataset.max_reject_share=0.5"]))
    assert counts["examples"] == 20 and counts["rejects"] == 10


def test_the_readme_example_ingests(make_ctx):
    ctx = make_ctx("examples/my_task.yaml")
    counts = ingest.run(ctx)
    assert counts["rows_read"] == 30 and counts["examples"] == 30 and counts["rejects"] == 0
    per = _per_split_label(ctx)
    assert {s: sum(n for (sp, _), n in per.items() if sp == s) for s in ("train", "val", "test")} == {
        "train": 18, "val": 6, "test": 6}
    row = readers.current_examples(ctx, "train").first()
    assert row.input_text.startswith("Ticket: ") and row.example_id.startswith("t")


def test_pld_ingest_of_a_missing_dataset_file_names_it(make_ctx, capfd, tmp_path):
    """`pld ingest` with a dataset.path that does not exist: exit 2 and one line naming the path
    and how to get the data; nothing is written."""
    from pld_spark import cli
    from tests.conftest import CONF

    missing = tmp_path / "nope" / "stereoset_dev.json"
    lake = tmp_path / "lake"
    capfd.readouterr()
    rc = cli.main(["ingest", "--config", str(CONF / "stereoset.yaml"), "--set", f"lakehouse.path={lake}",
                   "--set", f"dataset.path={missing}"])
    err = capfd.readouterr().err
    assert rc == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: dataset file not found: {missing} ")
    assert "How to get it:" in lines[0] and "data/stereoset/README.md" in lines[0] and "Traceback" not in err
    assert not (lake / "examples").exists()
