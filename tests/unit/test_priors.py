"""Group prior rules (pld_spark/prompts/priors.py): train label counts per group as rules. Pure."""
from pld_spark.prompts.priors import ORIGIN, group_name, prior_rules
from pld_spark.prompts.rules import rule_id

LABELS = ["Entailment", "Contradiction", "NotMentioned"]
TEMPLATE = "Contract: {text}\nHypothesis: {pair}"


def _rows(spec):
    return [{"example_id": f"e{i}", "pair": pair, "label": lab} for i, (pair, lab) in enumerate(spec)]


def test_the_group_is_named_as_the_input_template_names_it():
    assert group_name(TEMPLATE, "pair") == "hypothesis"
    assert group_name("Premise: {text}\nClaim under test:{pair}", "pair") == "claim under test"
    assert group_name("{text}", "pair") == "pair"
    assert group_name(None, "topic") == "topic"


def test_one_rule_per_group_with_its_majority_label_and_counts():
    rows = _rows([("Only technical information.", "Contradiction"), ("Only  technical information.", "Contradiction"),
                  ("Only technical information.", "NotMentioned"), ("Only technical information.", "Entailment"),
                  ("No solicitation.", "NotMentioned"), ("No solicitation.", "NotMentioned")])
    rules = prior_rules(rows, "pair", LABELS, 2, TEMPLATE)
    assert [r.topic for r in rules] == ["No solicitation.", "Only technical information."]  # whitespace normalised
    tech = rules[1]
    assert tech.instruction == ('If the hypothesis is "Only technical information.", the label is usually '
                                'Contradiction (2 of 4 training examples; Entailment 1, NotMentioned 1).')
    assert (tech.label, tech.support, tech.origin, tech.cluster_id) == ("Contradiction", 4, ORIGIN, -1)
    assert tech.source_example_ids == ["e0", "e1", "e2", "e3"] and tech.member_micro_ids == []
    assert tech.rule_id == rule_id(ORIGIN, "Contradiction", tech.instruction)  # same counts, same id
    assert rules[0].instruction.endswith("usually NotMentioned (2 of 2 training examples).")


def test_small_tied_unlabelled_and_empty_groups_get_no_rule():
    rows = _rows([("Tied.", "Entailment"), ("Tied.", "Contradiction"), ("Alone.", "Entailment"),
                  ("Odd label.", "Maybe"), ("Odd label.", "Maybe"), ("", "Entailment"), (None, "Entailment"),
                  ("Kept.", "Entailment"), ("Kept.", "Entailment"), ("Kept.", "Maybe")])
    rules = prior_rules(rows, "pair", LABELS, 2, TEMPLATE)
    assert [(r.topic, r.support) for r in rules] == [("Kept.", 2)]  # the unknown label is not counted
    assert [r.topic for r in prior_rules(rows, "pair", LABELS, 1, TEMPLATE)] == ["Alone.", "Kept."]
    assert prior_rules(rows, "pair", LABELS, 3, TEMPLATE) == []
