"""Label examples: the train inputs a rule prompt shows in its Examples block.

With ``consolidate.label_examples: m`` the prompt built from the rules also shows, for every
label, up to ``m`` train examples chosen to cover the label's sub-cases: the label's train inputs
are embedded (the ``cluster.embedder`` model, applied to the inputs, not to the rules), split
into ``min(m, n)`` groups by k-means, and each group shows the input nearest its centre (largest
group first). Random few-shot examples may all come from one sub-case of a label (or miss a
rare one); cluster exemplars under the rules come from rule clusters, which the teacher's wording
shapes. On StereoSet the three religion groups are the Muslim, Brahmin and Bible rows, and the
rule clusters' exemplars had been three Brahmin rows.

consolidate chooses them (:func:`pld_spark.pipeline.consolidate.label_examples`); they are recorded
in the prompt's ``example_ids`` (table ``prompts``), so select and resolve re-assemble their
prompts with the same examples (:func:`pld_spark.storage.readers.prompt_shots`), and the view
``prompt_examples`` lists them per prompt version.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence


def label_medoids(rows: Sequence[dict], embed: Callable[[Sequence[str]], Any], labels: Sequence[str],
                  per_label: int, seed: int = 0) -> list[dict]:
    """Up to ``per_label`` rows per label (in ``labels`` order): the medoids of a k-means of the
    label's ``input_text`` embeddings, largest group first. Deterministic for the same rows (sorted
    by example_id first) and seed. Each returned dict is the row plus ``group_size`` and
    ``dist_to_center``. Pure apart from ``embed``; labels without rows are skipped."""
    import numpy as np
    from sklearn.cluster import KMeans

    if per_label <= 0:
        return []
    wanted = set(labels)
    pool = sorted((r for r in rows if r.get("input_text") and r.get("label") in wanted),
                  key=lambda r: r["example_id"])
    if not pool:
        return []
    x = np.asarray(embed([r["input_text"] for r in pool]), dtype=float)
    out: list[dict] = []
    for lab in labels:
        idx = np.array([i for i, r in enumerate(pool) if r["label"] == lab], dtype=int)
        if not len(idx):
            continue
        k = min(per_label, len(idx))
        if k == 1:
            groups = np.zeros(len(idx), dtype=int)
            centers = x[idx].mean(axis=0, keepdims=True)
        else:
            km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x[idx])
            groups, centers = km.labels_, km.cluster_centers_
        sizes = np.bincount(groups, minlength=len(centers))
        for g in sorted(range(len(centers)), key=lambda g: (-sizes[g], g)):
            members = idx[groups == g]
            if not len(members):
                continue
            d = np.linalg.norm(x[members] - centers[g], axis=1)
            best = int(np.lexsort(([pool[i]["example_id"] for i in members], d))[0])
            out.append({**pool[members[best]], "group_size": int(sizes[g]), "dist_to_center": float(d[best])})
    return out


SHOT_COLUMNS = ("example_id", "input_text", "label", "text", "pair")


def shot_input(row: Mapping[str, Any], max_chars: int, template: str | None = None) -> str:
    """The input an example in a prompt shows, in at most ``max_chars``: the rendered ``input_text``
    when it fits. Longer, an input with a ``pair`` (Contract-NLI's hypothesis) keeps the whole pair
    and shows the sentences of its ``text`` most similar to the pair in the characters left (TF-IDF,
    as the ``retrieve`` input policy, only sentences sharing a term with the pair), rendered with
    ``template``. Cutting the rendered input at ``max_chars`` would show a contract's preamble and
    drop the hypothesis, so the example would not say what it is an example of. Other inputs, and a
    pair none of whose sentences share a term, are cut at ``max_chars``."""
    from pld_spark.prompts.teacher import truncate

    rendered = row.get("input_text") or ""
    pair, text = row.get("pair"), row.get("text")
    if len(rendered) <= max_chars or not pair or not text or not template:
        return truncate(rendered, max_chars)
    from pld_spark.data.input_policy import regex_sentences, render_input, retrieve

    room = max_chars - len(render_input("", pair, template))
    if room < 80:  # the pair alone fills the budget: nothing of the text would fit
        return truncate(rendered, max_chars)
    body = retrieve(regex_sentences(text), pair, room, 1.0, relevant_only=True)
    return render_input(body, pair, template) if body else truncate(rendered, max_chars)


def as_shots(rows: Sequence[dict], max_chars: int, template: str | None = None) -> list:
    """Rows (:data:`SHOT_COLUMNS`; ``text`` and ``pair`` optional) ->
    :class:`~pld_spark.prompts.student.FewShot`, each input as :func:`shot_input` shows it."""
    from pld_spark.prompts.student import FewShot

    return [FewShot(shot_input(r, max_chars, template), r["label"], r["example_id"]) for r in rows]
