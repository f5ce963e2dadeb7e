"""Input policy for long documents: ``full``, ``truncate`` or ``retrieve``.

Pure functions (no Spark): ingest applies them per row on executors. Budgets are in tokens,
estimated as ``chars / chars_per_token`` because the student's tokenizer is not loaded on
Spark executors; the prompt assembler later measures exact counts with the real tokenizer.
"""
from __future__ import annotations

import re

_SENT_RE = re.compile(r"(?<=[.!?;:])\s+(?=[A-Z0-9(\"'])|\n{2,}|\n(?=\s*(?:\d+[.)]|\([a-z0-9]+\)|[A-Z][A-Z ]{3,}))")


def regex_sentences(text: str) -> list[str]:
    """A plain fallback splitter (sentence ends, blank lines, numbered clauses)."""
    parts = [p.strip() for p in _SENT_RE.split(text or "")]
    return [p for p in parts if p]


def sentencex_sentences(text: str, language: str = "en") -> list[str]:
    """Sentences from sentencex (Wikimedia's maintained rule-based segmenter)."""
    from sentencex import segment

    return [s.strip() for s in segment(language, text or "") if s.strip()]


SPLITTERS = {"sentencex": sentencex_sentences, "regex": regex_sentences}


def budget_chars(max_tokens: int, chars_per_token: float) -> int:
    return int(max_tokens * chars_per_token)


def truncate(text: str, max_tokens: int, chars_per_token: float) -> str:
    """Cut to the budget at a word boundary, marking the cut."""
    limit = budget_chars(max_tokens, chars_per_token)
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit * 0.8:
        cut = cut[:space]
    return cut.rstrip() + " [...]"


def _fixed_pieces(s: str, limit: int) -> list[str]:
    return [s[i:i + limit] for i in range(0, len(s), limit)]


def _word_pieces(s: str, limit: int) -> list[str]:
    """``s`` in pieces of at most ``limit`` characters, each cut at the last space before the limit
    (a word longer than half the limit is cut where the limit falls)."""
    out = []
    s = s.strip()
    while len(s) > limit:
        cut = s.rfind(" ", 0, limit + 1)
        if cut < limit // 2:
            cut = limit
        out.append(s[:cut].rstrip())
        s = s[cut:].lstrip()
    return [*out, s] if s else out


def retrieve(sentences: list[str], query: str, max_tokens: int, chars_per_token: float, *,
             relevant_only: bool = False) -> str:
    """Keep the sentences most similar to ``query`` (TF-IDF cosine), in document order, up to the budget.
    ``relevant_only`` (an example shown in a prompt) keeps only sentences that share a term with the
    query and counts the ``" [...] "`` between them in the budget; without it the budget counts one
    character per gap, as ingest has always cut student inputs (stored inputs stay the same)."""
    if not sentences:
        return ""
    limit = budget_chars(max_tokens, chars_per_token)
    # A "sentence" longer than the whole budget (tables, form fields) is cut into budget-sized
    # pieces: at word boundaries for an example shown in a prompt (a piece "he other party."
    # reached a rule's exemplar), at fixed offsets for ingest (stored inputs stay the same).
    cut = _word_pieces if relevant_only else _fixed_pieces
    sentences = [p for s in sentences for p in cut(s, limit)]
    if sum(len(s) + 1 for s in sentences) <= limit or not (query or "").strip():
        return truncate(" ".join(sentences), max_tokens, chars_per_token)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    vec = TfidfVectorizer(stop_words="english", sublinear_tf=True)
    try:
        m = vec.fit_transform(sentences + [query])
    except ValueError:  # empty vocabulary (e.g. only stop words)
        return truncate(" ".join(sentences), max_tokens, chars_per_token)
    sims = cosine_similarity(m[-1], m[:-1]).ravel()
    order = sorted(range(len(sentences)), key=lambda i: (-sims[i], i))
    keep, used = [], 0
    gap = len(" [...] ") if relevant_only else 1
    for i in order:
        if relevant_only and sims[i] <= 0:
            break
        n = len(sentences[i]) + gap
        if used + n > limit + (gap if relevant_only else 0):
            continue
        keep.append(i)
        used += n
    return " [...] ".join(sentences[i] for i in sorted(keep))


def apply_policy(text: str, pair: str | None, mode: str, max_tokens: int, chars_per_token: float,
                 sentences: list[str] | None = None, splitter: str = "sentencex") -> str:
    """The text the student sees for one example (before prompt headings)."""
    text = text or ""
    if mode == "full":
        return text
    if mode == "truncate":
        return truncate(text, max_tokens, chars_per_token)
    if mode == "retrieve":
        if sentences is None:
            sentences = SPLITTERS[splitter](text)
        return retrieve(sentences, pair or "", max_tokens, chars_per_token)
    raise ValueError(f"unknown input policy mode {mode!r}")


def render_input(body: str, pair: str | None, template: str) -> str:
    """The rendered student input: ``task.input_template`` filled with ``{text}`` and ``{pair}``."""
    return template.format(text=body, pair=pair or "").strip()
