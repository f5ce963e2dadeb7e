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


def test_an_example_in_a_prompt_cuts_an_overlong_sentence_at_word_boundaries():
    """A Contract-NLI exemplar once showed "[...] he other party." (a budget-sized piece of a long
    sentence); pieces shown in a prompt start and end on whole words, ingest's stay as stored."""
    words = " ".join(f"clause{i} binds the other party" for i in range(40))
    out = retrieve([words, "Nothing else."], "other party", 30, 4.0, relevant_only=True)
    assert out and len(out) <= 120 + len(" [...] ")
    vocab = set(words.split())
    for piece in out.split(" [...] "):
        assert set(piece.split()) <= vocab, piece  # no word cut in two
    from pld_spark.data.input_policy import _fixed_pieces

    assert retrieve([words], "other party", 30, 4.0) in _fixed_pieces(words, 120)  # ingest: as stored


def test_word_pieces_cover_the_text_and_respect_the_limit():
    from pld_spark.data.input_policy import _word_pieces

    text = "alpha beta gamma delta " * 20 + "x" * 90
    pieces = _word_pieces(text, 40)
    assert all(0 < len(p) <= 40 for p in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")  # nothing lost
    assert _word_pieces("short", 40) == ["short"] and _word_pieces("", 40) == []
