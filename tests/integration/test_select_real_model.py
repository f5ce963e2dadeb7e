"""`select` on the real embedded student and real StereoSet val rows: the rule that lowers this
student's validation macro-F1 is dropped, on a paired bootstrap, and alias ``selected`` points at a
prompt without it.

"Harmful" is what validation says for this student. SmolLM2-135M cannot use rules (BENCHMARKS.md:
even the 0.5B gains nothing from careful hand-written rules), so the clustered prompt here holds a
sound rule ("a nationality, ethnicity or country -> race") and a bad one (every sentence ->
religion, 1 in 25 StereoSet rows), and whichever of them costs SmolLM more on 80 val rows must go,
with the contribution stored per rule. The decision logic is unit-tested on scripted scores
(tests/unit/test_select.py); this runs it end to end on a real model and real rows.
"""
import contextlib
import io
from datetime import datetime, timezone

import pytest

from pld_spark.cli import main
from tests.conftest import CONF

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

GOOD = "If the sentence is about a nationality, an ethnic group or a country, the label is race."
HARMFUL = "Whatever the sentence says, the label is religion: answer religion for every sentence."
PROFESSION = "If the sentence is about a job, an occupation or a workplace, the label is profession."


def _rule(rid: str, label: str, text: str, cluster_id: int) -> dict:
    return {"rule_id": rid, "task": "stereoset", "cluster_run_id": "seed", "cluster_id": cluster_id, "topic": label,
            "instruction": text, "label": label, "support": 1, "origin": "consolidate", "parent_rule_id": None,
            "member_micro_ids": [], "source_example_ids": None, "valid": True, "run_id": "seed",
            "created_at": datetime.now(timezone.utc)}


def test_select_drops_the_rule_that_costs_the_embedded_student_on_val(spark, tmp_path):
    from pld_spark.config import load_config
    from pld_spark.context import RunContext
    from pld_spark.pipeline import select
    from pld_spark.prompts.versions import ALIAS_CLUSTERED, ALIAS_SELECTED, PromptVersion, PromptVersions
    from pld_spark.storage.catalog import RULES
    from pld_spark.storage.writers import frame

    sets = [f"lakehouse.path={tmp_path / 'lakehouse'}", "dataset.sample.train=4", "dataset.sample.val=80",
            "dataset.sample.test=4", "student.n_threads=1", "student.calibration=batch", "spark.master=local[2]",
            "select.mode=backward", "select.coverage=false", "select.min_gain=0.0", "evaluate.bootstrap=500",
            # 80 val rows: SmolLM's gain from dropping a rule was 92-93% in paired resamples on this machine; the
            # test checks the decision end to end, not the threshold (unit-tested), so it sits below that margin
            "select.accept_confidence=0.75"]
    args = ["--config", str(CONF / "stereoset.yaml")] + [x for s in sets for x in ("--set", s)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["ingest", *args]) == 0
    ctx = RunContext(load_config(CONF / "stereoset.yaml", sets), command="test").replace(spark=spark)
    ctx.store.merge("rules", frame(spark, RULES, [_rule("r-good", "race", GOOD, 0),
                                                  _rule("r-harm", "religion", HARMFUL, 2)]), update=False)
    versions = PromptVersions(ctx.store, "stereoset")
    start = PromptVersion("stereoset", "pld_cluster", "seed prompt", rule_ids=("r-good", "r-harm"))
    versions.write(start)
    versions.set_alias(ALIAS_CLUSTERED, start.prompt_version, by="test")

    out = select.run(ctx)

    evals = {r.rule_id: r for r in ctx.store.read("rule_evaluations").collect()}
    contrib = {k: r.contribution for k, r in evals.items()}
    print(contrib, out["note"])
    assert set(evals) == {"r-good", "r-harm"}
    worst = min(contrib, key=contrib.get)
    assert contrib[worst] < 0, (contrib, out["note"])  # removing it raised val macro-F1
    assert [k for k, r in evals.items() if not r.kept] == [worst], out["note"]
    assert out["kept"] == 1 and out["val_macro_f1_selected"] > out["val_macro_f1_full"], out
    chosen = versions.get(versions.resolve(ALIAS_SELECTED).version)
    assert chosen.prompt_version == out["selected_version"] and worst not in chosen.rule_ids
    assert (GOOD if worst == "r-good" else HARMFUL) not in chosen.text
