"""Label examples: k-means medoids of each label's train inputs, and how many examples a prompt
shows (no Spark, no model)."""
import numpy as np

from pld_spark.prompts.examples import as_shots, label_medoids
from pld_spark.prompts.conditions import shown_examples
from pld_spark.prompts.rules import build_prompt
from pld_spark.prompts.student import approx_tokens
from pld_spark.prompts.versions import PromptVersion
from tests.unit.test_consolidate_generalise import TASK

# Three religion sub-cases (StereoSet's train split has 7 Muslim, 8 Brahmin and 3 Bible rows; odd
# sizes here, so each group's middle member is its one nearest the centre) and one gender case.
# The embedding puts each sub-case on its own axis, with a little spread.
SUBCASES = {"muslim": 7, "brahmin": 9, "bible": 3}
AXES = {"muslim": 0, "brahmin": 1, "bible": 2, "mother": 3}


def _rows():
    rows = []
    for word, n in SUBCASES.items():
        rows += [{"example_id": f"rel-{word}-{i}", "label": "religion", "input_text": f"The {word} {i}"}
                 for i in range(n)]
    rows += [{"example_id": f"gen-{i}", "label": "gender", "input_text": f"The mother {i}"} for i in range(4)]
    return rows


def _embed(texts):
    x = np.zeros((len(texts), 4))
    for j, t in enumerate(texts):
        word, i = t.split()[1], int(t.split()[2])
        x[j, AXES[word]] = 1.0
        x[j, (AXES[word] + 1) % 4] = 0.02 * i  # member i sits 0.02*i off its sub-case's axis
    return x


def test_medoids_cover_every_sub_case_of_a_label_largest_group_first():
    got = label_medoids(_rows(), _embed, ["gender", "profession", "religion"], per_label=3)
    rel = [r for r in got if r["label"] == "religion"]
    assert [r["example_id"].split("-")[1] for r in rel] == ["brahmin", "muslim", "bible"]
    assert [r["group_size"] for r in rel] == [9, 7, 3]
    # each is the member nearest its group's centre (the middle of the spread), not the first row
    assert [r["example_id"] for r in rel] == ["rel-brahmin-4", "rel-muslim-3", "rel-bible-1"]
    # a label with fewer rows than groups, and one with none (profession), are fine
    assert [r["example_id"] for r in got if r["label"] == "gender"] != []
    assert not [r for r in got if r["label"] == "profession"]
    assert [r["label"] for r in got] == ["gender"] * 3 + ["religion"] * 3  # labels in task order


def test_one_example_per_label_is_the_label_medoid_and_zero_means_none():
    got = label_medoids(_rows(), _embed, ["religion"], per_label=1)
    assert len(got) == 1 and got[0]["group_size"] == 19
    assert label_medoids(_rows(), _embed, ["religion"], per_label=0) == []


def test_the_choice_does_not_depend_on_row_order():
    rows = _rows()
    a = label_medoids(rows, _embed, ["gender", "religion"], per_label=2, seed=5)
    b = label_medoids(list(reversed(rows)), _embed, ["gender", "religion"], per_label=2, seed=5)
    assert [r["example_id"] for r in a] == [r["example_id"] for r in b]


def test_label_examples_follow_the_rules_and_are_recorded_as_example_ids():
    chosen = label_medoids(_rows(), _embed, ["religion"], per_label=3)
    rule = {"rule_id": "r1", "label": "religion", "instruction": "If a faith is named, the label is religion.",
            "support": 5, "example_text": "The quran 1", "example_label": "religion"}
    b = build_prompt(TASK, [rule], {}, count_tokens=approx_tokens, token_budget=4000,
                     shots=as_shots(chosen, max_chars=300))
    text = b.assembled.text
    assert text.index("Rules:") < text.index("Examples:") < text.index("Answer with")
    assert "The bible 1\nLabel: religion" in text and "Example: The quran 1" not in text  # exemplars off
    v = PromptVersion.from_assembled("stereoset", "pld_cluster", b.assembled)
    assert v.example_ids == ("rel-brahmin-4", "rel-muslim-3", "rel-bible-1") and v.row()["example_ids"] == list(
        v.example_ids)
    # few_shot_rules compares at the same number of examples the prompt shows
    assert shown_examples(v, exemplars=False) == 3 and shown_examples(v, exemplars=True) == 4
    bare = PromptVersion("stereoset", "pld_cluster", "x", rule_ids=("r1", "r2"))
    assert shown_examples(bare, exemplars=False) == 2 and shown_examples(None, exemplars=True) == 0


def test_under_a_tight_budget_rules_come_first_then_each_labels_first_example():
    from pld_spark.prompts.student import FewShot, PromptRule, assemble

    rule = PromptRule("r1", "religion", "If a faith is named, the label is religion.")
    shots = [FewShot(f"A {lab} example number {i} with some words.", lab, f"{lab}-{i}")
             for lab in ("gender", "religion") for i in range(3)]
    rules_only = assemble(TASK, [rule], count_tokens=approx_tokens, token_budget=4000).token_count
    one_shot = approx_tokens(shots[0].input_text) + 5
    tight = assemble(TASK, [rule], shots, count_tokens=approx_tokens, token_budget=rules_only + 2 * one_shot + 8)
    assert tight.rule_ids == ["r1"] and tight.token_count <= tight.token_budget
    assert tight.example_ids == ["gender-0", "religion-0"]  # not gender-0, gender-1: every label keeps one
    roomy = assemble(TASK, [rule], shots, count_tokens=approx_tokens, token_budget=4000)
    assert roomy.example_ids == [s.example_id for s in shots]  # all fit: shown in the given order
    no_room = assemble(TASK, [rule], shots, count_tokens=approx_tokens, token_budget=rules_only)
    assert no_room.rule_ids == ["r1"] and no_room.example_ids == []


def test_a_pair_example_keeps_its_pair_and_shows_the_sentences_about_it():
    from pld_spark.data.input_policy import render_input
    from pld_spark.prompts.examples import shot_input

    template = "Contract: {text}\nHypothesis: {pair}"
    text = ("THIS AGREEMENT is made between Acme Ltd and Beta plc on the date below. WHEREAS the parties wish to "
            "discuss a venture. 2. Definitions in the schedule apply. 3. The Receiving Party may share Confidential "
            "Information with its employees who need to know it. 4. This Agreement is governed by English law.")
    pair = "Receiving Party may share some Confidential Information with some of its employees."
    row = {"example_id": "c-1", "label": "Entailment", "input_text": render_input(text, pair, template),
           "text": text, "pair": pair}
    shown = shot_input(row, 260, template)
    assert shown.endswith("\nHypothesis: " + pair)  # the whole hypothesis, which a head cut drops
    assert "may share Confidential Information with its employees" in shown
    assert "THIS AGREEMENT" not in shown and len(shown) <= 260
    head = shot_input(row, 260)  # without the template: the old cut, hypothesis lost
    assert "Hypothesis" not in head and head.startswith("Contract: THIS AGREEMENT")
    # an input that fits, or one without a pair, is shown as rendered (cut at the budget)
    assert shot_input(row, 10_000, template) == row["input_text"]
    assert shot_input({**row, "pair": None}, 260, template) == head
    assert as_shots([row], 260, template)[0].input_text == shown
    # a text with no sentence about the pair falls back to the cut
    unrelated = {**row, "pair": "Quantum zebras xylophone."}
    assert shot_input(unrelated, 200, template) == shot_input({**unrelated, "pair": None}, 200, template)
