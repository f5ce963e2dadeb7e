"""Synthetic StereoSet-like data for the tests, and the scripted teacher of consolidate's unit tests.

- :func:`synthetic_examples`: rows with one decisive keyword each (``KEYWORDS``), stable ids;
  :func:`seed_examples` / :func:`seed_micro` write them into ``examples`` / ``micro_instructions``
  the way ingest / extract would, so Spark-tier tests start from stored stage outputs without a
  model (they are data, not fakes; integration tests and bench/reliability.py use them too).
- :class:`ScriptedTeacher`: a deterministic stand-in for the teacher in unit tests of logic
  around a client only (consolidate's transform); it answers consolidation requests by quoting
  the members' keywords. The Spark and integration tiers never use it: they run the real
  embedded model or a real local server.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from pld_spark.llm.types import ChatResponse

KEYWORDS = {
    "gender": ["mother", "sister", "girlfriend", "grandfather", "schoolboy", "bride"],
    "profession": ["nurse", "engineer", "plumber", "chemist", "butcher", "tailor"],
    "race": ["ethiopian", "japanese", "norwegian", "peruvian", "somali", "vietnamese"],
    "religion": ["muslim", "christian", "bible", "hindu", "quran", "brahmin"],
}
CATEGORY = {
    "gender": "a family role or gendered person",
    "profession": "an occupation or job title",
    "race": "a nationality or ethnic group",
    "religion": "a faith or religious group",
}


def synthetic_examples(n_per_label: int, split: str, offset: int = 0) -> list[dict]:
    """Rows with one decisive keyword each; ids are stable."""
    rows = []
    for label, words in KEYWORDS.items():
        for i in range(n_per_label):
            kw = words[(i + offset) % len(words)]
            eid = f"{split}-{label}-{i + offset}"
            rows.append({"example_id": eid, "label": label, "split": split,
                         "text": f"The {kw} sat near the window on day {i + offset}.",
                         "input_text": f"Context: Someone met the {kw} at noon.\nSentence: The {kw} sat near the "
                                       f"window on day {i + offset}."})
    return rows


def seed_examples(ctx, rows: list[dict]) -> None:
    """Write rows into ``examples`` as ingest would (same dataset_hash), skipping the loader."""
    from pld_spark.storage.readers import dataset_hash
    from pld_spark.storage.catalog import EXAMPLES

    now = datetime.now(timezone.utc)
    h = dataset_hash(ctx.cfg)
    recs = []
    for r in rows:
        d = {"example_id": r["example_id"], "task": ctx.cfg.task.name, "split": r["split"], "text": r["text"],
             "pair": r.get("pair"), "input_text": r["input_text"], "label": r["label"], "doc_id": None, "source": "test",
             "meta": None, "input_policy": "{}", "dataset_hash": h, "run_id": "seed", "ingested_at": now}
        recs.append(tuple(d[c] for c in EXAMPLES.columns))
    ctx.store.append("examples", ctx.spark.createDataFrame(recs, EXAMPLES.ddl))  # fresh table: no merge needed


def _user(req) -> str:
    return next((m["content"] for m in req.messages if m["role"] == "user"), "")


def quoted(text: str) -> list[str]:
    return re.findall(r"'([a-z]+)'", text.lower())


def keyword_of(text: str) -> str | None:
    low = text.lower()
    for words in KEYWORDS.values():
        for w in words:
            if re.search(rf"\b{w}\b", low):
                return w
    return None


class ScriptedTeacher:
    """A deterministic teacher for consolidate's unit tests: each consolidation request is answered
    with the majority label of the shown members (or ``consolidate_label``) and an instruction
    quoting their keywords. Requests are kept in ``requests``."""

    backend = "fake"
    model_id = "fake-teacher"
    role = "teacher"
    calibration = "none"
    max_concurrency = 1
    can_embed = False

    def __init__(self, consolidate_label: str | None = None):
        self.consolidate_label = consolidate_label
        self.calls = 0
        self.requests = []

    def chat(self, requests):
        self.calls += len(requests)
        self.requests.extend(requests)
        return [self._answer(req) for req in requests]

    def _answer(self, req) -> ChatResponse:
        base = dict(request_id=req.request_id, tokens_in=50, tokens_out=20, latency_s=0.01, model=self.model_id,
                    attempts=1)
        if not req.template_version.startswith("consolidate"):
            return ChatResponse(**base, error=f"unexpected template {req.template_version}",
                                error_type="BadRequestError")
        text = _user(req)
        labels = re.findall(r"^- \[(\w+)\]", text, re.M)
        label = self.consolidate_label or max(sorted(set(labels)), key=labels.count)
        words = sorted(set(quoted(text.split("Rules in this group", 1)[1].split("Write JSON", 1)[0])))
        instr = (f"If the input mentions {', '.join(repr(w) for w in words)} ({CATEGORY.get(label, 'x')}), "
                 f"the label is {label}.")
        return ChatResponse(**base, data={"topic": CATEGORY.get(label, label), "instruction": instr, "label": label})

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def stats(self):
        return {"calls": self.calls, "tokens_in": 50 * self.calls, "tokens_out": 20 * self.calls, "cost_usd": 0.0}


def seed_micro(ctx, examples: list[dict], invalid_ids=()) -> None:
    """Write keyword rules into ``micro_instructions`` as extract stores them (valid, or invalid for
    ``invalid_ids``), keyed by the configured teacher and template: extract's output without a model."""
    from pld_spark.pipeline.extract import micro_id
    from pld_spark.storage.readers import teacher_model_id
    from pld_spark.storage.catalog import MICRO_INSTRUCTIONS

    tm, tv = teacher_model_id(ctx.cfg.teacher), ctx.cfg.extract.template_version
    now = datetime.now(timezone.utc)
    recs = []
    for r in examples:
        kw = keyword_of(r["input_text"])
        bad = r["example_id"] in set(invalid_ids)
        d = {"micro_id": micro_id(r["example_id"], tm, tv), "example_id": r["example_id"], "teacher_model": tm,
             "template_version": tv, "label": r["label"],
             "rule": "Be careful when reading it." if bad else
             f"If the input mentions '{kw}' ({CATEGORY[r['label']]}), the label is {r['label']}.",
             "reasoning": "seeded", "valid": not bad, "invalid_reason": "rule names no label" if bad else None,
             "injection_flag": False, "tokens_in": 50, "tokens_out": 20, "latency_s": 0.01, "attempts": 1,
             "cached": False, "error": None, "run_id": "seed", "created_at": now}
        recs.append(tuple(d[c] for c in MICRO_INSTRUCTIONS.columns))
    ctx.store.append("micro_instructions", ctx.spark.createDataFrame(recs, MICRO_INSTRUCTIONS.ddl))
