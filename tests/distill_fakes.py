"""Scripted teacher/student fakes for the distillation tests (unit and Spark tiers only).

They implement the :class:`pld_spark.llm.base.LLMClient` protocol with deterministic,
keyword-based behaviour, so tests can assert exact outcomes:

- the teacher answers extract / consolidate / resolve requests (dispatch on the request's
  ``template_version``); rules quote the decisive keyword: ``If the input mentions 'nurse'
  (an occupation or job title), the label is profession.``
- the student classifies by those quoted keywords in its system prompt: an input containing a
  quoted word gets that rule's label, otherwise the first label. Better rules -> higher F1.

Calls are counted in a file (shared by Spark worker processes); ``crash_after`` makes the
teacher raise a plain RuntimeError (a crash, not a per-row model error) once that many
calls were made. The module is pickled by value so Spark workers need not import ``tests``.
"""
from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone

from pld_spark.llm.base import ChatResponse, ClassifyResult

try:  # ship this module's classes to Spark workers by value
    from pyspark import cloudpickle as _cp

    _cp.register_pickle_by_value(sys.modules[__name__])
except Exception:  # noqa: BLE001 - unit tier without pyspark
    pass

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
    from pld_spark.pipeline.ingest import dataset_hash
    from pld_spark.storage.catalog import EXAMPLES

    now = datetime.now(timezone.utc)
    h = dataset_hash(ctx.cfg)
    recs = []
    for r in rows:
        d = {"example_id": r["example_id"], "task": ctx.cfg.task.name, "split": r["split"], "text": r["text"],
             "pair": None, "input_text": r["input_text"], "label": r["label"], "doc_id": None, "source": "test",
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
    """A deterministic teacher. ``resolve_ops(user_text) -> list[op dict]`` scripts the loop."""

    backend = "fake"
    model_id = "fake-teacher"

    def __init__(self, calls_file: str | None = None, crash_after: int | None = None, fail_ids=(),
                 junk_ids=(), resolve_ops=None, consolidate_label=None):
        self.calls_file = calls_file
        self.crash_after = crash_after
        self.fail_ids = set(fail_ids)
        self.junk_ids = set(junk_ids)
        self.resolve_ops = resolve_ops
        self.consolidate_label = consolidate_label
        self.calls = 0
        self.requests = []

    # -- accounting shared across processes
    def _count(self, req) -> None:
        if self.calls_file:
            if self.crash_after is not None and calls_made(self.calls_file) >= self.crash_after:
                raise RuntimeError("simulated crash of the extraction worker")
            with open(self.calls_file, "a", encoding="utf-8") as f:
                f.write(f"{req.request_id}\n")
        self.calls += 1
        self.requests.append(req)

    def chat(self, requests):
        out = []
        for req in requests:
            self._count(req)
            out.append(self._answer(req))
        return out

    def chat_one(self, request):
        return self.chat([request])[0]

    def _answer(self, req) -> ChatResponse:
        tv = req.template_version
        base = dict(request_id=req.request_id, tokens_in=50, tokens_out=20, latency_s=0.01, model=self.model_id,
                    attempts=1)
        if tv.startswith("extract"):
            if req.request_id in self.fail_ids:
                return ChatResponse(**{**base, "tokens_out": 0}, error="HTTP 503 from teacher", error_type="ServerError")
            gold = re.search(r"Correct label: (\w+)", _user(req)).group(1)
            if req.request_id in self.junk_ids:
                return ChatResponse(**base, data={"reasoning": "?", "rule": "Be careful when reading it."})
            kw = keyword_of(_user(req).split("Input:", 1)[1].split("Correct label:", 1)[0]) or "thing"
            rule = f"If the input mentions '{kw}' ({CATEGORY[gold]}), the label is {gold}."
            return ChatResponse(**base, data={"reasoning": f"'{kw}' decides it.", "rule": rule})
        if tv.startswith("consolidate"):
            text = _user(req)
            labels = re.findall(r"^- \[(\w+)\]", text, re.M)
            label = self.consolidate_label or max(sorted(set(labels)), key=labels.count)
            words = sorted(set(quoted(text.split("Rules in this group", 1)[1].split("Write JSON", 1)[0])))
            instr = (f"If the input mentions {', '.join(repr(w) for w in words)} ({CATEGORY.get(label, 'x')}), "
                     f"the label is {label}.")
            return ChatResponse(**base, data={"topic": CATEGORY.get(label, label), "instruction": instr,
                                              "label": label})
        if tv.startswith("resolve"):
            ops = self.resolve_ops(_user(req)) if self.resolve_ops else []
            return ChatResponse(**base, data={"operations": ops})
        return ChatResponse(**base, error=f"unexpected template {tv}", error_type="BadRequestError")

    def classify(self, system, inputs, labels, calibration="none"):
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def stats(self):
        return {"calls": self.calls, "tokens_in": 50 * self.calls, "tokens_out": 20 * self.calls, "cost_usd": 0.0}


def calls_made(calls_file: str) -> int:
    if not os.path.exists(calls_file):
        return 0
    with open(calls_file, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def calls_list(calls_file: str) -> list[str]:
    if not os.path.exists(calls_file):
        return []
    with open(calls_file, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


class TeacherFactory:
    """Picklable zero-argument factory for Spark workers (``client_factory``)."""

    def __init__(self, calls_file: str, crash_after: int | None = None, fail_ids=(), junk_ids=()):
        self.kw = dict(calls_file=calls_file, crash_after=crash_after, fail_ids=tuple(fail_ids),
                       junk_ids=tuple(junk_ids))

    def __call__(self):
        return ScriptedTeacher(**self.kw)


class KeywordStudent:
    """A student that follows quoted-keyword rules in its system prompt (else the first label)."""

    backend = "fake"
    model_id = "fake-student"

    def __init__(self):
        self.classified = 0

    def classify(self, system, inputs, labels, calibration="none"):
        rules = []
        for line in system.splitlines():
            m = re.match(r"\s*\d+\. \[(\w+)\] (.*)", line)
            if m:
                rules.append((m.group(1), quoted(m.group(2))))
        out = []
        for text in inputs:
            low = text.lower()
            label = labels[0]
            for lab, words in rules:
                if any(re.search(rf"\b{w}\b", low) for w in words):
                    label = lab
                    break
            out.append(ClassifyResult(label=label, probabilities={x: float(x == label) for x in labels}))
        self.classified += len(inputs)
        return out

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def chat(self, requests):
        raise NotImplementedError

    def chat_one(self, request):
        raise NotImplementedError

    def stats(self):
        return {"calls": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0}


def ops_json(ops) -> str:
    return json.dumps(ops)


def seed_micro(ctx, examples: list[dict], invalid_ids=()) -> None:
    """Write the micro-instructions the scripted teacher would have extracted (skips the model map)."""
    from pld_spark.pipeline.extract import micro_id, teacher_model_id
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
