"""The keyword-trigger check of consolidated rules (``consolidate.keyword_check``): a rule that
hinges on a phrase only one member of its cluster contains ("caring mommy", "yemen") narrows the
cluster to one training example instead of stating the shared condition."""
from __future__ import annotations

import re
from typing import Sequence

_STOP = frozenset("""a an the and or but if then else of to in on at by for with from as is are was were be been being it
its this that these those there their they them he she his her him we you your i me my our not no any some all each
every one two label labels input inputs sentence sentences text context word words mention mentions mentioned
mentioning refers refer referring about describes describe described describing contains contain containing
includes include including talks talk like such other than more most less when which who whom whose what where
how case cases rule rules group groups type types kind kinds general specific named name names given people
person persons someone somebody man men woman women thing things member members often usually very also""".split())
_TOKEN = re.compile(r"[a-z0-9][a-z0-9'\-]*")


def _phrases(text: str) -> set[str]:
    """Content unigrams (3+ letters) and bigrams of ``text`` (lowercased), plus quoted spans."""
    low = text.lower()
    words = [w.strip("'-") for w in _TOKEN.findall(low)]
    content = [w for w in words if len(w) >= 3 and w not in _STOP]
    grams = set(content)
    grams |= {f"{a} {b}" for a, b in zip(words, words[1:]) if a not in _STOP and b not in _STOP and len(a) > 2
              and len(b) > 2}
    grams |= {q.strip().lower() for q in re.findall(r"['\"\u2018\u201c]([^'\"\u2019\u201d]{3,40})['\"\u2019\u201d]", text)}
    return {g for g in grams if g}


def keyword_triggers(instruction: str, members: Sequence[str], task, min_members: int = 3) -> list[str]:
    """Phrases of a consolidated ``instruction`` that only ONE member's text (its input; its rule
    when the input is not known) contains: a rule that hinges on such a phrase ("caring mommy",
    "yemen") is a keyword trigger for one training example, not the shared condition of the cluster. Words of the task
    header (description, label names and descriptions) are never triggers. Empty when the
    cluster has fewer than ``min_members`` members (nothing to generalise over)."""
    if len(members) < min_members:
        return []
    header = _phrases(" ".join([task.description, *task.label_names,
                                *(lab.description for lab in task.labels)]))
    lows = [" " + " ".join(_TOKEN.findall(m.lower())) + " " for m in members]
    out = []
    for p in sorted(_phrases(instruction) - header):
        if any(w in header for w in p.split()):
            continue
        hits = sum(1 for m in lows if f" {p} " in m)
        if hits == 1:
            out.append(p)
    # report the longest phrases only (a bigram covers its words)
    return [p for p in out if not any(p != q and p in q.split() for q in out)]
