"""Incremental consolidation (no Spark): clusters are matched to stored rules by a fingerprint of
their members and settings, never by cluster id; only new or changed clusters reach the teacher."""
from datetime import datetime

from pld_spark.config import ConsolidateConfig, LLMConfig, load_config
from pld_spark.llm.types import ChatResponse
from pld_spark.pipeline.consolidate import (cluster_fingerprint, consolidate_clusters, fingerprint_settings,
                                            plan_reuse, reusable, transform)
from tests.conftest import CONF
from tests.distill_fakes import CATEGORY, KEYWORDS, ScriptedTeacher

TASK = load_config(CONF / "stereoset.yaml").task
CCFG = ConsolidateConfig(max_members=4, seed=1)
SETTINGS = fingerprint_settings(TASK, CCFG, LLMConfig())


def members(label: str, n: int = 4) -> list[dict]:
    return [{"micro_id": f"m-{label}-{i}", "label": label, "dist_to_centroid": 0.1 * (i + 1),
             "rule": f"If the input mentions '{w}' ({CATEGORY[label]}), the label is {label}."}
            for i, w in enumerate(KEYWORDS[label][:n])]


def stored(rules, when=datetime(2026, 11, 1)) -> list[dict]:
    """Rules as the rows a later run reads back from the ``rules`` table."""
    return [{**r.row(), "created_at": when} for r in rules]


def first_run():
    clusters = {c: members(lab) for c, lab in enumerate(KEYWORDS)} | {-1: members("race")[3:]}
    teacher = ScriptedTeacher()
    plan = plan_reuse(clusters, SETTINGS, [])
    done = consolidate_clusters(clusters, TASK, teacher, CCFG, plan)
    return clusters, teacher, done


def test_the_fingerprint_is_the_member_set_and_the_settings():
    fp = cluster_fingerprint(["b", "a", "a"], SETTINGS)
    assert fp == cluster_fingerprint(["a", "b"], SETTINGS) and fp.startswith("cf-")
    assert fp != cluster_fingerprint(["a", "b", "c"], SETTINGS)
    for other in (fingerprint_settings(TASK, ConsolidateConfig(max_members=4, seed=1, template_version="consolidate-v1"),
                                       LLMConfig()),
                  fingerprint_settings(TASK, CCFG, LLMConfig(model="other.gguf")),
                  fingerprint_settings(TASK, CCFG, LLMConfig(temperature=0.7))):
        assert cluster_fingerprint(["a", "b"], other) != fp
    # settings of prompt assembly only do not change what the teacher is asked
    assert fingerprint_settings(TASK, ConsolidateConfig(max_members=4, seed=1, prompt_token_budget=99, max_rules=2,
                                                        exemplars=False), LLMConfig()) == SETTINGS


def test_a_first_run_consolidates_every_cluster_and_stamps_the_fingerprints():
    clusters, teacher, done = first_run()
    assert teacher.calls == 4 and done.plan.todo == [0, 1, 2, 3] and not done.plan.reused
    assert [r.cluster_id for r in done.rules] == [0, 1, 2, 3]
    assert all(r.cluster_fingerprint == cluster_fingerprint([m["micro_id"] for m in clusters[r.cluster_id]], SETTINGS)
               for r in done.rules)
    assert done.counts() == {"clusters": 4, "clusters_reused": 0, "clusters_consolidated": 4, "teacher_calls": 4,
                             "teacher_retries": 0, "teacher_unanswered": 0, "teacher_calls_saved": 0}
    # the same rules (ids included) as the plain transform, which knows nothing of reuse
    assert [r.rule_id for r in done.rules] == [r.rule_id for r in transform(clusters, TASK, ScriptedTeacher(), CCFG)]


def test_after_new_rows_only_the_changed_cluster_is_sent_and_the_others_keep_their_rule_ids():
    _, _, done = first_run()
    before = {r.label: r for r in done.rules}
    # new rows: race gains a member; re-clustering renumbers every cluster
    again = {0: members("religion"), 1: members("race", 5), 2: members("gender"), 3: members("profession")}
    teacher = ScriptedTeacher()
    plan = plan_reuse(again, SETTINGS, stored(done.rules))
    assert plan.todo == [1] and sorted(plan.reused) == [0, 2, 3]
    got = consolidate_clusters(again, TASK, teacher, CCFG, plan)
    assert teacher.calls == 1 and teacher.requests[0].request_id == "cluster-1"
    assert got.counts() == {"clusters": 4, "clusters_reused": 3, "clusters_consolidated": 1, "teacher_calls": 1,
                            "teacher_retries": 0, "teacher_unanswered": 0, "teacher_calls_saved": 3}
    after = {r.label: r for r in got.rules}
    assert [r.cluster_id for r in got.rules] == [0, 1, 2, 3] and after["religion"].cluster_id == 0
    for lab in ("religion", "gender", "profession"):  # unchanged: the stored rule, same id, new cluster id
        assert after[lab].rule_id == before[lab].rule_id and after[lab].instruction == before[lab].instruction
        assert after[lab].cluster_fingerprint == before[lab].cluster_fingerprint
    assert after["race"].rule_id != before["race"].rule_id and len(after["race"].member_micro_ids) == 5
    assert after["race"].cluster_fingerprint != before["race"].cluster_fingerprint

    # a third run with nothing new needs no teacher at all
    none = plan_reuse(again, SETTINGS, stored(done.rules) + stored(got.rules, datetime(2026, 11, 8)))
    third = consolidate_clusters(again, TASK, None, CCFG, none)
    assert none.todo == [] and [r.rule_id for r in third.rules] == [r.rule_id for r in got.rules]
    assert third.counts()["teacher_calls_saved"] == 4 and third.counts()["teacher_calls"] == 0


def test_other_settings_reuse_nothing():
    clusters, _, done = first_run()
    v1 = fingerprint_settings(TASK, ConsolidateConfig(max_members=4, seed=1, template_version="consolidate-v1"),
                              LLMConfig())
    plan = plan_reuse(clusters, v1, stored(done.rules))
    assert plan.todo == [0, 1, 2, 3] and not plan.reused


def test_a_medoid_after_an_unanswered_call_is_sent_again_but_a_bad_answer_is_reused():
    clusters = {0: members("gender"), 1: members("race"), 2: members("religion")}
    answers = [ChatResponse(error="timeout", error_type="LLMTimeoutError"),
               ChatResponse(data={"topic": "t", "instruction": "be nice", "label": "race"}),
               ChatResponse(error="no JSON object", error_type="MalformedResponseError")]

    class Canned:
        def chat(self, reqs):
            return answers[:len(reqs)]

    done = consolidate_clusters(clusters, TASK, Canned(), CCFG, plan_reuse(clusters, SETTINGS))
    timeout, rejected, malformed = done.rules
    assert timeout.origin == rejected.origin == malformed.origin == "medoid"
    assert "teacher call failed: LLMTimeoutError" in timeout.error and "rejected: rule shorter" in rejected.error
    assert timeout.cluster_fingerprint is None and done.counts()["teacher_unanswered"] == 1
    assert not reusable(timeout.row()) and reusable(rejected.row()) and reusable(malformed.row())
    teacher = ScriptedTeacher()
    plan = plan_reuse(clusters, SETTINGS, stored(done.rules))
    got = consolidate_clusters(clusters, TASK, teacher, CCFG, plan)
    assert plan.todo == [0] and teacher.calls == 1 and got.rules[0].origin == "consolidate"
    assert [r.rule_id for r in got.rules[1:]] == [rejected.rule_id, malformed.rule_id]


def test_of_several_stored_rules_for_one_fingerprint_the_newest_wins():
    clusters, _, done = first_run()
    old = stored(done.rules, datetime(2026, 1, 1))
    newer = [{**row, "rule_id": row["rule_id"] + "-b", "instruction": row["instruction"] + " (edited)"}
             for row in stored(done.rules, datetime(2026, 2, 1))]
    no_fp = [{**row, "cluster_fingerprint": None, "rule_id": "x"} for row in old]  # e.g. before fingerprints
    plan = plan_reuse(clusters, SETTINGS, newer + no_fp + old)
    assert all(r.rule_id.endswith("-b") for r in plan.reused.values()) and len(plan.reused) == 4
