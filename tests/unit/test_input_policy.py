from pld_spark.data.input_policy import apply_policy, regex_sentences, render_input, retrieve, truncate


def test_truncate_respects_budget():
    text = "word " * 1000
    out = truncate(text, 50, 4.0)
    assert len(out) <= 50 * 4 + 6 and out.endswith("[...]")
    assert truncate("short", 50, 4.0) == "short"


def test_retrieve_keeps_most_similar_in_document_order():
    sents = ["The parties agree to meet.", "Recipient shall not reverse engineer any product.",
             "This agreement is governed by Delaware law.", "Notices go by mail."]
    out = retrieve(sents, "Receiving party shall not reverse engineer objects", max_tokens=15, chars_per_token=4.0)
    assert "reverse engineer" in out
    assert "Notices" not in out
    out2 = retrieve(sents, "reverse engineer; governed by law", max_tokens=25, chars_per_token=4.0)
    assert out2.index("reverse") < out2.index("Delaware")  # document order


def test_regex_sentences_and_policy_full():
    s = regex_sentences("First clause. Second one! 1. Numbered\n\nNew para")
    assert len(s) >= 3
    assert apply_policy("abc", None, "full", 10, 4.0) == "abc"


def test_render_input_template():
    assert render_input("body", "ctx", "Context: {pair}\nSentence: {text}") == "Context: ctx\nSentence: body"


def test_retrieve_cuts_an_overlong_sentence_to_budget():
    out = retrieve(["x" * 5000, "reverse engineering is forbidden."], "reverse engineering", 50, 4.0)
    assert len(out) <= 200 + 10 and "reverse engineering" in out
