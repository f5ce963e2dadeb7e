"""Bulk scoring through the Ray actor pool with the real embedded student (SmolLM2-135M).

200 StereoSet test rows, 2 actors: every row is written exactly once, also when a run is
resumed after losing rows and when it is repeated. Parametrised by student backend:
``PLD_TEST_STUDENT_SET="student.type=vllm;student.model=/path/to/smollm2-hf"`` adds a run
with that backend config (used by ``make test-vllm``; ``student.type=openai;
student.base_url=...`` works the same way).
"""
import json
import os
import time
from datetime import datetime, timezone

import pytest

from pld_spark.storage import readers
from pld_spark.pipeline import ingest, score

pytestmark = [pytest.mark.spark, pytest.mark.integration, pytest.mark.slow]

N_ROWS = 200  # "a few hundred rows with 2 actors" (issue 5)
SHORT_PROMPT = ("Classify the social bias category of the sentence.\nLabels: gender, profession, race, religion.\n"
                "Answer with exactly one label.")


def _backends():
    params = [pytest.param([], id="llamacpp")]
    extra = os.environ.get("PLD_TEST_STUDENT_SET")
    if extra:
        sets = [s.strip() for s in extra.split(";") if s.strip()]
        kind = next((s.split("=", 1)[1] for s in sets if s.startswith("student.type=")), "custom")
        params.append(pytest.param(sets, id=kind))
    return params


def add_prompt(ctx, version: str, text: str, alias: str | None = None, kind: str = "test") -> None:
    """Write a prompts row (and an alias) the way consolidate/resolve do."""
    from pld_spark.storage.catalog import PROMPT_ALIASES, PROMPTS

    now = datetime.now(timezone.utc)
    rec = {"prompt_version": version, "task": ctx.cfg.task.name, "kind": kind, "text": text, "sha256": "x",
           "parent_version": None, "rule_ids": [], "dropped_rule_ids": [], "review_ids": [], "example_ids": [],
           "token_count": 0, "token_budget": None, "run_id": ctx.run_id, "created_at": now}
    ctx.store.merge("prompts", ctx.spark.createDataFrame([tuple(rec[c] for c in PROMPTS.columns)], PROMPTS.ddl))
    if alias:
        ctx.store.append("prompt_aliases", ctx.spark.createDataFrame(
            [(ctx.cfg.task.name, alias, version, "test", "", now)], PROMPT_ALIASES.ddl))


@pytest.mark.parametrize("backend_set", _backends())
def test_ray_scoring_writes_every_row_once_and_resumes(make_ctx, backend_set):
    ctx = make_ctx("stereoset.yaml", [f"dataset.sample.test={N_ROWS}", "score.engine=ray", "score.ray.num_actors=2",
                                      "score.ray.batch_size=16", *backend_set])
    ingest.run(ctx)
    n = readers.current_examples(ctx, "test").count()
    assert 0.9 * N_ROWS <= n <= 1.15 * N_ROWS
    # other backends (vLLM on CPU keeps KV blocks of hundreds of tokens) get a rule prompt longer
    # than one block, or the prefix cache has nothing to reuse
    prompt = SHORT_PROMPT if not backend_set else SHORT_PROMPT + "\nRules:\n" + "\n".join(
        f"- If the sentence mentions {w}, the label is {lab}." for w, lab in
        [("a job or a workplace", "profession"), ("men, women or parents", "gender"),
         ("a country or an ethnic group", "race"), ("a faith or a holy book", "religion")] * 8)
    add_prompt(ctx, "pv-short", prompt, alias="live")

    t0 = time.perf_counter()
    first = score.run(ctx)  # default: alias 'live', the current test split
    wall = time.perf_counter() - t0
    assert first["prompt_version"] == "pv-short" and first["alias"] == "live"
    assert first["engine"] == "ray" and first["ray_mode"] == "local"
    assert first["scored"] == n and first["already_scored"] == 0
    print(f"\nray scoring [{ctx.cfg.student.type}]: {n} rows, 2 actors: {first['rows_per_s']} rows/s in the actor "
          f"pool ({first['scoring_s']}s), stage wall {wall:.1f}s; pool: {json.dumps(first['ray'])}")

    preds = ctx.store.read("predictions").where("condition = 'score' AND prompt_version = 'pv-short'")
    rows = preds.collect()
    assert len(rows) == n
    assert len({r.doc_id for r in rows}) == n
    test_ids = {r.example_id for r in readers.current_examples(ctx, "test").select("example_id").collect()}
    assert {r.doc_id for r in rows} == test_ids
    labels = set(ctx.cfg.task.label_names)
    ok = [r for r in rows if r.error is None]
    assert len(ok) >= 0.95 * n
    for r in ok:
        assert r.label in labels
        assert set(r.probabilities) == labels
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        # auto: the calibration chosen on val for this prompt; none was for pv-short, so batch centring
        assert r.calibration == first["calibration"] == ctx.cfg.student.calibration.replace("auto", "batch")
        assert r.latency_s > 0 and r.tokens_in > 0
        assert r.backend == ctx.cfg.student.type and r.run_id == ctx.run_id
    assert all(r.label is None for r in rows if r.error is not None)
    # the shared system prompt is reused by most requests of each actor
    assert sum(1 for r in ok if r.prefix_reused_tokens > 0) >= 0.8 * len(ok)

    # Lose 30 rows (a crashed run), then resume: only those are scored again.
    lost = sorted(r.doc_id for r in rows)[:30]
    ctx.store.delete_where("predictions", "doc_id IN (" + ",".join(f"'{d}'" for d in lost) + ")")
    assert ctx.store.read("predictions").count() == n - 30
    resumed = score.run(ctx, prompt_version="pv-short")
    assert resumed["already_scored"] == n - 30 and resumed["scored"] == 30
    again = score.run(ctx, prompt_version="live")
    assert again["scored"] == 0 and again["already_scored"] == n
    final = ctx.store.read("predictions")
    assert final.count() == n
    assert final.select("doc_id").distinct().count() == n
