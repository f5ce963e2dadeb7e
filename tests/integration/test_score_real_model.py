"""score with the in-process engine and the real embedded student (SmolLM2-135M, one thread).

The prompt is what consolidate alone leaves (a prompt version and its ``clustered`` alias), so
the default lookup (live, distilled, clustered) finds it. Every document is scored once; an empty
one is an error row without a model call; a re-run scores only what failed.
"""
import json

import pytest

from pld_spark.pipeline import score
from pld_spark.prompts.versions import PromptVersion, PromptVersions

pytestmark = [pytest.mark.integration, pytest.mark.spark]

PROMPT = "Classify the bias category. Labels: gender, profession, race, religion."


def test_local_engine_scores_file_once_with_real_student(make_ctx, tmp_path):
    ctx = make_ctx("stereoset.yaml", ["score.engine=local", "score.ray.batch_size=4", "student.n_threads=1"])
    versions = PromptVersions(ctx.store, "stereoset")
    pv, = versions.write(PromptVersion("stereoset", "pld_cluster", PROMPT))
    versions.set_alias("clustered", pv, by="pld consolidate")
    texts = ["My mother is caring.", "The chess player was hispanic.", "Muslims are peaceful.", "",
             "The engineer was smart.", "Ethiopian men are skinny.", "The nurse was kind.", "Brahmin people are rich."]
    jl = tmp_path / "docs.jsonl"
    jl.write_text("\n".join(json.dumps({"doc_id": f"doc-{i}", "text": t}) for i, t in enumerate(texts)))
    out = score.run(ctx, input_ref=str(jl))
    assert out["scored"] == 8 and out["errors"] == 1 and out["engine"] == "local"
    assert (out["prompt_version"], out["alias"]) == (pv, "clustered")
    rows = {r.doc_id: r for r in ctx.store.read("predictions").collect()}
    assert len(rows) == 8
    assert rows["doc-3"].label is None and rows["doc-3"].error == "empty input_text"
    labels = set(ctx.cfg.task.label_names)
    for d, r in rows.items():
        if d == "doc-3":
            continue
        assert r.label in labels and set(r.probabilities) == labels and r.error is None
        assert r.condition == "score" and r.prompt_version == pv and r.calibration == "batch"
    usage = ctx.record.counts["score"]["usage"]["student"]
    assert usage["calls"] > 0 and usage["tokens_in"] > 0 and ctx.record.tokens_in == usage["tokens_in"]
    # re-run: only the errored row is tried again; nothing is duplicated
    again = score.run(ctx, input_ref=str(jl))
    assert again["already_scored"] == 7 and again["scored"] == 1
    assert ctx.store.read("predictions").count() == 8
