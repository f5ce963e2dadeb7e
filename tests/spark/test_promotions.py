"""Champion/challenger on local Spark + Delta, without a model.

The val predictions of each prompt are stored rows (as evaluate or an earlier gate would have
written them); the student configured is a real client on a port nothing answers on, so a command
that called the model would fail. Checked through `pld prompt challenge` and `pld prompt promote`:

- the first challenger, with no ``live`` yet, becomes live (reason "no champion");
- a challenger worse than live on val is not promoted: ``live`` stays, the ``promotions`` row is a
  candidate whose reason names the CI bound and the label that drops, and its statistic is the
  paired CI of ``compare_stats`` on the stored predictions at ``promotion.confidence``;
- a better one is promoted: ``live`` moves, the row names the champion it replaced;
- a manual promotion is a row too (decision manual, decided_by).
"""
import json
from datetime import datetime, timezone

import pytest

from pld_spark.monitor.stats import compare_stats
from pld_spark.prompts.versions import PromptVersion, PromptVersions
from pld_spark.storage.catalog import PREDICTIONS
from pld_spark.storage.writers import frame
from tests.conftest import CONF
from tests.distill_fakes import seed_examples, synthetic_examples

pytestmark = pytest.mark.spark

NO_STUDENT = ["student.type=openai", "student.model=unused", "student.base_url=http://127.0.0.1:9/v1",
              "student.max_retries=0"]
LABELS = ["gender", "profession", "race", "religion"]


def _pld(capfd, ctx, *argv):
    from pld_spark import cli

    sets = [f"lakehouse.path={ctx.cfg.lakehouse.path}", "mlflow.enabled=false", *NO_STUDENT]
    capfd.readouterr()
    rc = cli.main([*argv, "--config", str(CONF / "stereoset.yaml"), *[x for s in sets for x in ("--set", s)]])
    out, err = capfd.readouterr()
    return rc, out, err


def _answers(val, right_per_label: dict[str, int]) -> dict[str, str]:
    """doc_id -> label: the first ``right_per_label[label]`` val rows of each label right, the rest wrong."""
    seen = dict.fromkeys(LABELS, 0)
    out = {}
    for r in sorted(val, key=lambda r: r["example_id"]):
        g = r["label"]
        out[r["example_id"]] = g if seen[g] < right_per_label[g] else LABELS[(LABELS.index(g) + 1) % 4]
        seen[g] += 1
    return out


def _store_preds(ctx, version: str, answers: dict[str, str]) -> None:
    now = datetime.now(timezone.utc)
    ctx.store.merge("predictions", frame(ctx.spark, PREDICTIONS, [
        {"doc_id": d, "prompt_version": version, "condition": "pld", "label": lab, "calibration": "batch",
         "backend": "test", "model": "test", "run_id": "seed", "scored_at": now} for d, lab in answers.items()]))


def test_worse_challenger_stays_candidate_and_better_one_is_promoted(make_ctx, capfd):
    ctx = make_ctx()
    val = synthetic_examples(6, "val")  # 24 rows, 6 per label
    seed_examples(ctx, val)
    pv = PromptVersions(ctx.store, "stereoset")
    champ, worse, better = pv.write([PromptVersion("stereoset", "pld_resolved", f"prompt {n}", parent_version=None)
                                     for n in ("champion", "worse", "better")])
    answers = {champ: _answers(val, dict.fromkeys(LABELS, 4)),
               worse: _answers(val, {"gender": 4, "profession": 4, "race": 4, "religion": 0}),
               better: _answers(val, dict.fromkeys(LABELS, 6))}
    for v, a in answers.items():
        _store_preds(ctx, v, a)

    def rows():
        return sorted(ctx.store.read("promotions").collect(), key=lambda r: r.decided_at)

    # 1. no live yet: the first challenger becomes live
    pv.set_alias("distilled", champ, by="test")
    rc, out, err = _pld(capfd, ctx, "prompt", "challenge")
    assert rc == 0, err[-3000:]
    assert pv.aliases()["live"] == champ and json.loads(out)["promotion"]["decision"] == "promoted"
    first, = rows()
    assert (first.decision, first.challenger_version, first.champion_version, first.alias) == (
        "promoted", champ, None, "live")
    assert first.reason.startswith("no champion") and first.statistic is None

    # 2. a worse challenger: live stays, the row says why
    pv.set_alias("distilled", worse, by="test")
    rc, out, err = _pld(capfd, ctx, "prompt", "challenge")
    assert rc == 0, err[-3000:]
    assert pv.aliases()["live"] == champ
    r = rows()[-1]
    assert (r.decision, r.challenger_version, r.champion_version, r.split, r.n) == ("candidate", worse, champ,
                                                                                  "val", 24)
    ids = sorted(answers[champ])
    gold = {x["example_id"]: x["label"] for x in val}
    want = compare_stats([gold[d] for d in ids], [answers[worse][d] for d in ids], [answers[champ][d] for d in ids],
                         LABELS, n_resamples=ctx.cfg.evaluate.bootstrap, seed=ctx.cfg.evaluate.seed, level=0.9)
    assert (r.statistic, r.ci_low, r.ci_high, r.p_better) == pytest.approx(
        (want["delta"], want["ci_low"], want["ci_high"], want["p_a_better"]))
    assert r.statistic < 0 and r.confidence == 0.9 and r.margin == 0.0 and r.max_label_drop == 0.05
    assert r.worst_label == "religion" and r.worst_label_drop == pytest.approx(-want["per_label"]["religion"]["delta"])
    assert "is not above promotion.margin 0.0" in r.reason and "label 'religion' F1 drops by" in r.reason
    assert json.loads(r.per_label) == want["per_label"]
    assert "stays a candidate" not in out and r.reason in out  # the command prints the reason

    # 3. a better challenger: live moves, the row names the champion it replaced
    pv.set_alias("distilled", better, by="test")
    rc, out, err = _pld(capfd, ctx, "prompt", "challenge")
    assert rc == 0, err[-3000:]
    assert pv.aliases()["live"] == better
    r = rows()[-1]
    assert (r.decision, r.challenger_version, r.champion_version) == ("promoted", better, champ)
    assert r.ci_low > 0 and r.reason.endswith("beats the champion")
    live_row = [a for a in ctx.store.read("prompt_aliases").where("alias = 'live'").collect()
                if a.prompt_version == better][0]
    assert live_row.promoted_by.startswith("pld prompt challenge") and "beats the champion" in live_row.note

    # 4. manual promotion back to the old champion: a row with who did it
    rc, out, err = _pld(capfd, ctx, "prompt", "promote", champ, "--by", "alice", "--note", "rollback")
    assert rc == 0, err[-3000:]
    assert pv.aliases()["live"] == champ
    r = rows()[-1]
    assert (r.decision, r.challenger_version, r.champion_version, r.decided_by, r.statistic) == (
        "manual", champ, better, "alice", None)
    assert r.reason == "manual promotion by alice: rollback"
    assert [x.decision for x in rows()] == ["promoted", "candidate", "promoted", "manual"]
    # nothing was scored: every prompt had stored predictions for every val row
    assert ctx.store.read("predictions").where("condition <> 'pld'").count() == 0


def test_auto_off_records_the_decision_without_moving_live(make_ctx):
    from pld_spark.monitor import promotion

    ctx = make_ctx(overrides=["promotion.auto=false", *NO_STUDENT])
    val = synthetic_examples(6, "val")
    seed_examples(ctx, val)
    pv = PromptVersions(ctx.store, "stereoset")
    champ, better = pv.write([PromptVersion("stereoset", "pld_resolved", f"prompt {n}") for n in ("a", "b")])
    _store_preds(ctx, champ, _answers(val, dict.fromkeys(LABELS, 3)))
    _store_preds(ctx, better, _answers(val, dict.fromkeys(LABELS, 6)))
    pv.set_alias("live", champ, by="test")
    got = promotion.run(ctx, better)
    assert got["decision"] == "candidate" and got["reason"].endswith("not moved: promotion.auto is false")
    assert got["ci_low"] > 0 and pv.aliases()["live"] == champ
    assert ctx.store.read("promotions").first().decision == "candidate"
    # the challenger already live: nothing to decide, no row
    assert promotion.run(ctx, "live")["decision"] is None and ctx.store.read("promotions").count() == 1
