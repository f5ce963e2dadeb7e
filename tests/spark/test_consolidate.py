"""consolidate on local Spark + Delta without a model: the no-cluster fallback and human reviews.

When the clustering has no cluster, consolidate takes one medoid rule per label from the stored
micro-instructions and never calls (or even builds) the teacher; prompt assembly then applies the
latest reviews within the token budget (counted with the approximate tokenizer, so no student is
loaded either). Consolidation of real clusters by the teacher is in
tests/integration/test_distill_real_model.py; the budget arithmetic in tests/unit/test_consolidate.py.
"""
import pytest
from pyspark.sql import functions as F

from pld_spark.pipeline import cluster, consolidate, review
from pld_spark.prompts.rules import build_prompt
from pld_spark.prompts.student import approx_tokens
from pld_spark.prompts.versions import PromptVersions
from tests.distill_fakes import seed_examples, seed_micro, synthetic_examples

pytestmark = pytest.mark.spark

NO_CLUSTERS = ["cluster.clusterer.min_samples=50", "cluster.central_fallback=false"]


def _seeded(make_ctx, *over):
    ctx = make_ctx("stereoset.yaml", [*NO_CLUSTERS, *over])
    rows = synthetic_examples(4, "train")
    seed_examples(ctx, rows + synthetic_examples(1, "val"))
    seed_micro(ctx, rows)
    return ctx


def _models_built(ctx) -> set[str]:
    """The lazily built model members of a run context that something used."""
    return {m for m in ("teacher", "student") if m in ctx.__dict__}


def test_no_clusters_falls_back_to_one_rule_per_label_without_any_model(make_ctx):
    ctx = _seeded(make_ctx)
    assert cluster.run(ctx)["clusters"] == 0
    counts = consolidate.run(ctx, count_tokens=approx_tokens)
    assert counts["clusters"] == 0 and counts["teacher_calls"] == 0 and counts["by_origin"] == {"medoid_label": 4}
    assert _models_built(ctx) == set()  # neither the teacher nor the student was built
    rules = ctx.store.read("rules").collect()
    assert sorted(r.label for r in rules) == ["gender", "profession", "race", "religion"]
    assert all(r.origin == "medoid_label" and r.cluster_id == -1 and len(r.member_micro_ids) == 1 and r.support == 4
               for r in rules)
    p = ctx.store.read("prompts").where(F.col("prompt_version") == counts["prompt_version"]).first()
    assert p.kind == "pld_cluster" and sorted(p.rule_ids) == sorted(r.rule_id for r in rules)
    assert p.token_count == approx_tokens(p.text) <= p.token_budget
    # the clustered alias now names it, so every command's default lookup finds it
    assert PromptVersions(ctx.store, "stereoset").resolve().version == counts["prompt_version"]


def test_reviews_are_honoured_within_the_budget(make_ctx):
    ctx = _seeded(make_ctx)
    first = consolidate.run(ctx, count_tokens=approx_tokens)
    rules = {r.label: r.rule_id for r in ctx.store.read("rules").collect()}
    review.add_review(ctx, rules["religion"], "pin", reviewer="ann")
    review.add_review(ctx, rules["gender"], "disable", reviewer="bob", note="too broad")
    review.add_review(ctx, rules["race"], "edit", "If a nationality such as 'somali' is named, the label is race.")
    bare = build_prompt(ctx.cfg.task, [], {}, count_tokens=approx_tokens, token_budget=9999)
    budget = bare.assembled.token_count + 40  # room for about one rule

    tight = make_ctx("stereoset.yaml", [*NO_CLUSTERS, f"consolidate.prompt_token_budget={budget}"])
    second = consolidate.run(tight, count_tokens=approx_tokens)
    assert second["prompt_version"] != first["prompt_version"] and second["reviews_applied"] == 3
    p = tight.store.read("prompts").where(F.col("prompt_version") == second["prompt_version"]).first()
    assert p.token_count <= budget and approx_tokens(p.text) == p.token_count
    assert rules["religion"] in p.rule_ids  # pinned: kept under the tight budget
    assert rules["gender"] not in p.rule_ids and rules["gender"] not in p.dropped_rule_ids  # disabled
    assert set(p.rule_ids) | set(p.dropped_rule_ids) == set(rules.values()) - {rules["gender"]}
    assert len(p.review_ids) == 3

    roomy = make_ctx("stereoset.yaml", NO_CLUSTERS)
    third = consolidate.run(roomy, count_tokens=approx_tokens)
    text = review.show_prompt(roomy, third["prompt_version"])
    assert "such as 'somali'" in text and "'mother'" not in text  # the edit is what the student sees
    assert review.show_prompt(roomy, "clustered") == text  # the alias moved to the newest prompt
    assert _models_built(ctx) | _models_built(tight) | _models_built(roomy) == set()


def test_label_examples_are_chosen_from_train_stored_with_the_prompt_and_queryable(make_ctx):
    from pld_spark.storage.readers import prompt_shots
    from pld_spark.storage.views import create_views

    ctx = _seeded(make_ctx, "consolidate.label_examples=2", "cluster.embedder.type=tfidf_svd",
                  "consolidate.exemplars=false")
    counts = consolidate.run(ctx, count_tokens=approx_tokens)
    assert counts["label_examples"] == 8 and _models_built(ctx) == set()
    versions = PromptVersions(ctx.store, "stereoset")
    v = versions.get(counts["prompt_version"])
    train = {r["example_id"]: r for r in synthetic_examples(4, "train")}
    assert len(v.example_ids) == 8 and set(v.example_ids) <= set(train)  # train rows only, never val
    assert [train[i]["label"] for i in v.example_ids] == [lab for lab in ctx.cfg.task.label_names for _ in (0, 1)]
    for i in v.example_ids:  # each is shown with its gold label after the rules
        assert f"{train[i]['input_text']}\nLabel: {train[i]['label']}" in v.text
    assert v.text.index("Rules:") < v.text.index("Examples:")
    # select and resolve re-assemble with the stored examples, in the same order
    assert [s.example_id for s in prompt_shots(ctx, v)] == list(v.example_ids)
    # SQL: which examples does the clustered prompt show?
    create_views(ctx.store)
    got = ctx.store.sql(f"SELECT position, example_id, label FROM prompt_examples "
                        f"WHERE prompt_version = '{v.prompt_version}' ORDER BY position").collect()
    assert [(r.position, r.example_id) for r in got] == list(enumerate(v.example_ids, start=1))
    # off: no Examples block, no example ids
    off = consolidate.run(make_ctx("stereoset.yaml", [*NO_CLUSTERS, "consolidate.label_examples=0"]),
                          count_tokens=approx_tokens)
    assert "Examples:" not in versions.get(off["prompt_version"]).text
    assert versions.get(off["prompt_version"]).example_ids == ()


def test_examples_of_a_pair_task_show_the_hypothesis_and_the_sentences_about_it(make_ctx):
    """Contract-NLI: a label example is a long contract and a hypothesis. The prompt shows the whole
    hypothesis and the contract sentences about it, not the contract's first characters."""
    from pld_spark.data.input_policy import render_input
    from pld_spark.storage.readers import prompt_shots

    ctx = make_ctx("contractnli.yaml", [*NO_CLUSTERS, "consolidate.label_examples=1", "consolidate.exemplars=false",
                                        "cluster.embedder.type=tfidf_svd", "consolidate.exemplar_max_chars=320"])
    template = ctx.cfg.task.input_template
    filler = " ".join(f"Clause {i}. The office opens on weekday {i} at noon." for i in range(40))
    cases = {"Entailment": ("Receiving Party may share some Confidential Information with some employees.",
                            "The Recipient may share Confidential Information with employees who need to know it."),
             "Contradiction": ("Receiving Party shall destroy or return Confidential Information upon termination.",
                               "Upon termination the Recipient may keep Confidential Information and need not "
                               "destroy or return it."),
             "NotMentioned": ("Agreement shall not grant Receiving Party any right to Confidential Information.",
                              "Either party may end this Agreement on notice and Confidential Information "
                              "stays secret.")}
    rows = []
    for lab, (hyp, key) in cases.items():
        for i in range(2):
            text = f"{filler} {key} {filler}"
            rows.append({"example_id": f"train-{lab}-{i}", "label": lab, "split": "train", "text": text, "pair": hyp,
                         "input_text": render_input(text[:1500], hyp, template)})
    seed_examples(ctx, rows)
    v = PromptVersions(ctx.store, "contractnli").get(consolidate.run(ctx, count_tokens=approx_tokens)["prompt_version"])
    assert [i.split("-")[1] for i in v.example_ids] == ["Entailment", "Contradiction", "NotMentioned"]
    shots = prompt_shots(ctx, v)
    for shot in shots:
        hyp, key = cases[shot.label]
        assert shot.input_text == f"Contract: {key}\nHypothesis: {hyp}"  # only the sentence about it, whole pair
        assert f"{shot.input_text}\nLabel: {shot.label}" in v.text
    assert "Clause 0." not in v.text and "weekday" not in v.text


def test_group_priors_add_one_stored_rule_per_hypothesis_to_the_prompt(make_ctx):
    """consolidate.group_priors with cluster.group_by=pair: each hypothesis with enough train rows
    and a single majority label gets a rule with its counts, stored in ``rules`` with the rows it
    counted, and shown in the prompt; off (0), or grouped by label, there are none."""
    ctx = make_ctx("contractnli.yaml", [*NO_CLUSTERS, "cluster.group_by=pair", "consolidate.group_priors=2"])
    spec = {"Only technical information.": ["Contradiction", "Contradiction", "Entailment"],
            "No solicitation.": ["NotMentioned", "NotMentioned"],
            "Tied hypothesis.": ["Entailment", "Contradiction"], "Single row.": ["Entailment"]}
    rows = [{"example_id": f"train-{h[:4]}-{i}", "label": lab, "split": "train", "text": "The clause.", "pair": h,
             "input_text": f"Contract: The clause.\nHypothesis: {h}"}
            for h, labels in spec.items() for i, lab in enumerate(labels)]
    seed_examples(ctx, rows + [{**rows[0], "example_id": "val-0", "split": "val", "label": "NotMentioned"}])
    counts = consolidate.run(ctx, count_tokens=approx_tokens)
    assert counts["by_origin"] == {"group_prior": 2}
    stored = {r.topic: r for r in ctx.store.read("rules").collect()}
    assert sorted(stored) == ["No solicitation.", "Only technical information."]
    tech = stored["Only technical information."]
    assert tech.label == "Contradiction" and tech.support == 3 and tech.origin == "group_prior"
    assert sorted(tech.source_example_ids) == ["train-Only-0", "train-Only-1", "train-Only-2"]  # not val-0
    text = PromptVersions(ctx.store, "contractnli").get(counts["prompt_version"]).text
    assert ('[Contradiction] If the hypothesis is "Only technical information.", the label is usually Contradiction '
            '(2 of 3 training examples; Entailment 1).') in text
    for off in ("consolidate.group_priors=0", "cluster.group_by=label"):
        again = consolidate.run(make_ctx("contractnli.yaml", [*NO_CLUSTERS, "cluster.group_by=pair",
                                                              "consolidate.group_priors=2", off]),
                                count_tokens=approx_tokens)
        assert "group_prior" not in again["by_origin"], off
