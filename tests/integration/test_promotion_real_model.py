"""Champion/challenger as resolve runs it, with the real embedded student (SmolLM2-135M, one thread,
in-process): :func:`pld_spark.monitor.promotion.after_resolve` scores both prompts on val through
resolve's :class:`pld_spark.validation.PromptJudge` (each with its calibration chosen on val), stores
those predictions (condition 'promotion'), and the ``promotions`` row is the decision the pure
:func:`decide` takes on exactly those stored predictions; ``live`` moves iff it says promoted."""
import pytest

from pld_spark.monitor import promotion
from pld_spark.prompts.versions import PromptVersion, PromptVersions
from pld_spark.validation import PromptJudge
from tests.distill_fakes import seed_examples, synthetic_examples

pytestmark = [pytest.mark.integration, pytest.mark.spark]

CHAMPION = "Classify the bias category. Labels: gender, profession, race, religion."
CHALLENGER = ("Classify the social bias category of the sentence: gender, profession, race or religion. A job or a "
              "workplace is profession; a country or a people is race; a faith is religion; a man or a woman is "
              "gender.")


def test_after_resolve_scores_both_on_val_stores_them_and_records_the_decision(make_ctx):
    ctx = make_ctx("stereoset.yaml", ["student.n_threads=1", "student.calibration=auto", "evaluate.bootstrap=300"])
    train, val = synthetic_examples(2, "train"), synthetic_examples(2, "val")  # 8 + 8 rows
    seed_examples(ctx, train + val)
    versions = PromptVersions(ctx.store, "stereoset")
    champ, chall = versions.write([PromptVersion("stereoset", "pld_resolved", t) for t in (CHAMPION, CHALLENGER)])
    judge = PromptJudge.from_ctx(ctx, train)
    val_rows = [{k: r[k] for k in ("example_id", "input_text", "label")} for r in sorted(val, key=lambda r:
                                                                                       r["example_id"])]

    first = promotion.after_resolve(ctx, versions, judge, val_rows, champ)  # no live yet
    assert first["decision"] == "promoted" and first["reason"].startswith("no champion")
    assert versions.aliases()["live"] == champ

    got = promotion.after_resolve(ctx, versions, judge, val_rows, chall)
    assert got["decision"] in ("promoted", "candidate") and got["champion_version"] == champ and got["n"] == 8
    stored = {(r.prompt_version, r.doc_id): r.label for r in
              ctx.store.read("predictions").where("condition = 'promotion'").collect()}
    assert len(stored) == 16 and {v for v, _ in stored} == {champ, chall}
    ids = [r["example_id"] for r in val_rows]
    want = promotion.decide([r["label"] for r in val_rows], [stored[(chall, d)] for d in ids],
                            [stored[(champ, d)] for d in ids], ctx.cfg.task.label_names, ctx.cfg.promotion,
                            n_resamples=300, seed=ctx.cfg.evaluate.seed)
    row = [r for r in ctx.store.read("promotions").collect() if r.challenger_version == chall][0]
    assert (row.decision, row.reason, row.decided_by) == (want.decision, want.reason, "pld resolve")
    assert (row.statistic, row.ci_low, row.ci_high) == pytest.approx((want.statistic, want.ci_low, want.ci_high))
    assert versions.aliases()["live"] == (chall if want.decision == "promoted" else champ)
    assert ctx.store.read("promotions").count() == 2
