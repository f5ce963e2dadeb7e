"""Label scoring shared by every backend: ``classify`` (calibrated, cached), and the helpers that
turn a backend's raw answer into per-label log-probabilities.

:class:`LabelScorer` is a mixin of :class:`pld_spark.llm.base.BaseLLM`: it calls the backend's
``_label_logprobs`` (constrained per-label scoring where the backend can; the text fallback
:meth:`LabelScorer._label_logprobs_by_text` otherwise) behind a content-addressed cache, and
applies a calibration (:mod:`pld_spark.llm.calibrate`).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import replace
from typing import Any, Sequence

from pld_spark.errors import BadRequestError, LLMError
from pld_spark.llm.types import ChatRequest, ChatResponse, ClassifyResult, LabelScores

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\w\s-]+", re.UNICODE)


def map_to_label(text: str, labels: Sequence[str]) -> str | None:
    """Map free text to one label: exact, then JSON ``label`` field, then the label named first,
    then the closest spelling (difflib ratio >= 0.6). ``None`` if nothing fits."""
    import difflib

    from pld_spark.llm.jsonparse import JSONAnswerError, extract_json

    if not text:
        return None
    low = {lab.lower(): lab for lab in labels}
    t = text.strip().strip("\"'`.:;!* \n").lower()
    if t in low:
        return low[t]
    try:
        obj = extract_json(text)
        v = str(obj.get("label", "")).strip().lower()
        if v in low:
            return low[v]
    except JSONAnswerError:
        pass
    clean = _WORD.sub(" ", text.lower())
    best, pos = None, None
    for key, lab in low.items():
        m = re.search(r"(?<![\w-])" + re.escape(key) + r"(?![\w-])", clean)
        if m and (pos is None or m.start() < pos):
            best, pos = lab, m.start()
    if best is not None:
        return best
    first = clean.split()[0] if clean.split() else ""
    close = difflib.get_close_matches(first, list(low), n=1, cutoff=0.6)
    return low[close[0]] if close else None


def label_logprobs_from_top(top: list[dict[str, Any]], labels: list[str]) -> dict[str, float] | None:
    """Per-label log-probability from one position's top tokens (logsumexp of the tokens
    that begin the label). ``None`` if no top token begins any label. Labels not seen get
    a floor below the least likely seen token."""
    acc: dict[str, list[float]] = {lab: [] for lab in labels}
    seen = []
    for t in top:
        tok = str(t.get("token", "")).strip().lower()
        lp = t.get("logprob")
        if not tok or lp is None or (isinstance(lp, float) and math.isnan(lp)):
            continue
        seen.append(float(lp))
        for lab in labels:
            if lab.lower().startswith(tok):
                acc[lab].append(float(lp))
    if not any(acc.values()):
        return None
    floor = (min(seen) if seen else 0.0) - 1.0
    out = {}
    for lab, vals in acc.items():
        if vals:
            m = max(vals)
            out[lab] = m + math.log(sum(math.exp(v - m) for v in vals))
        else:
            out[lab] = floor
    return out



class LabelScorer:
    """``classify`` for a backend; needs ``cfg``, ``backend``, ``model_id``, ``memory_cache``,
    ``persistent_cache``, ``_bump``, ``chat`` and ``_label_logprobs`` (see BaseLLM)."""

    label_answer_tokens: int = 12

    def classify(self, system: str, inputs: list[str], labels: list[str],
                 calibration=None) -> list[ClassifyResult]:
        """A label from ``labels`` for every input, with calibrated per-label probabilities.

        ``calibration``: a method name (``none`` | ``content_free`` | ``batch``: per call), a
        :class:`pld_spark.llm.calibrate.Calibration` (fixed per-label offsets chosen on validation,
        applied row by row), or None for the client's config (``auto`` without a chosen
        calibration means ``batch``). ``content_free`` scores one extra content-free input per
        call; if that fails the batch falls back to ``batch``. A row whose scoring failed gets
        ``label=None`` and ``error`` (per-row failures are data). Raw label scores are cached by
        content (:meth:`_cached_label_scores`); a cached row has no latency (``latency_s`` None).
        """
        from pld_spark.llm.calibrate import CALIBRATIONS, CONTENT_FREE_INPUT, Calibration, argmax_label, calibrate

        fixed = calibration if isinstance(calibration, Calibration) else None
        method = "none" if fixed is not None else (calibration or self.cfg.calibration)
        if method == "auto":
            method = "batch"
        if method not in CALIBRATIONS:
            raise BadRequestError(f"unknown calibration {method!r}; expected one of {CALIBRATIONS}, or a Calibration")
        labels = list(labels)
        if len(labels) < 2 or len(set(labels)) != len(labels) or any(not str(x).strip() for x in labels):
            raise BadRequestError(f"classify needs at least two distinct non-empty labels, got {labels}")
        inputs = list(inputs)
        if not inputs:
            return []
        extra = [CONTENT_FREE_INPUT] if method == "content_free" else []
        scores = self._cached_label_scores(system, inputs + extra, labels)
        if len(scores) != len(inputs) + len(extra):
            raise LLMError(f"{self.backend}: label scoring returned {len(scores)} rows for {len(inputs) + len(extra)}")
        cf = None
        if extra:
            cf_score = scores.pop()
            cf = cf_score.logprobs
            if cf is None:
                log.warning("content-free calibration input failed (%s); using batch calibration", cf_score.error)
                method = "batch"
        raws = [s.logprobs if s.error is None and s.logprobs is not None else None for s in scores]
        probs = fixed.apply(raws, labels) if fixed is not None else calibrate(raws, labels, method, cf)
        used = fixed.method if fixed is not None else method
        results = []
        for s, raw, p in zip(scores, raws, probs):
            lat = None if s.cached else s.latency_s
            if p is None:
                results.append(ClassifyResult(label=None, latency_s=lat, tokens_in=s.tokens_in,
                                              tokens_out=s.tokens_out, prefix_reused_tokens=s.prefix_reused_tokens,
                                              calibration=used, error=s.error or "label scoring failed"))
                continue
            results.append(ClassifyResult(
                label=argmax_label(p, labels), probabilities=p,
                raw_logprobs={k: float(v) for k, v in raw.items()}, latency_s=lat, tokens_in=s.tokens_in,
                tokens_out=s.tokens_out, prefix_reused_tokens=s.prefix_reused_tokens, calibration=used,
                cached=s.cached))
        n_err = sum(1 for r in results if r.error)
        self._bump(classify_inputs=len(inputs), classify_errors=n_err)
        return results

    #: template version of cached label scores (part of the cache key)
    CLASSIFY_CACHE_VERSION = "classify-v1"

    def _classify_key(self, system: str, text: str, labels: list[str]) -> str:
        from pld_spark.llm.cache import cache_key

        return cache_key(self.backend, self.model_id, [{"role": "system", "content": system},
                                                        {"role": "user", "content": text}],
                         None, {"labels": labels}, self.CLASSIFY_CACHE_VERSION)

    def _cached_label_scores(self, system: str, inputs: list[str], labels: list[str]) -> list[LabelScores]:
        """:meth:`_label_logprobs` behind the content-addressed cache (memory, then the persistent
        layer): the same prompt, input and label set are scored once, across stages and runs."""
        from pld_spark.llm.cache import CacheEntry

        if not self.cfg.cache:
            return self._label_logprobs(system, inputs, labels)
        keys = [self._classify_key(system, x, labels) for x in inputs]
        found = {k: e for k in dict.fromkeys(keys) if (e := self.memory_cache.get(k)) is not None}
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing and self.persistent_cache is not None:
            found.update(self._persistent_get(missing))
        todo = list(dict.fromkeys(i for i, k in enumerate(keys) if k not in found))
        first_of = {}
        for i in todo:
            first_of.setdefault(keys[i], i)
        fresh = self._label_logprobs(system, [inputs[i] for i in first_of.values()], labels) if first_of else []
        new_entries, out_fresh = [], {}
        for (k, i), sc in zip(first_of.items(), fresh):
            out_fresh[k] = sc
            if sc.error is None and sc.logprobs is not None:
                e = CacheEntry(key=k, response={"logprobs": sc.logprobs, "prefix_reused_tokens": sc.prefix_reused_tokens},
                               tokens_in=sc.tokens_in, tokens_out=sc.tokens_out, backend=self.backend,
                               model=self.model_id, template_version=self.CLASSIFY_CACHE_VERSION)
                self.memory_cache.put(e)
                new_entries.append(e)
        if new_entries and self.persistent_cache is not None:
            try:
                self.persistent_cache.put_many(new_entries)
            except Exception:  # noqa: BLE001 - a cache write failure must not lose the scores
                log.exception("could not store %d label scores in the persistent cache", len(new_entries))
        out = []
        for i, k in enumerate(keys):
            if k in out_fresh and first_of.get(k) == i:
                out.append(out_fresh[k])
            elif k in found:
                e = found[k]
                self._bump(cache_hits=1)
                out.append(LabelScores({lab: float(v) for lab, v in e.response["logprobs"].items()}, e.tokens_in,
                                       e.tokens_out, int(e.response.get("prefix_reused_tokens") or 0), 0.0,
                                       cached=True))
            else:  # a duplicate of an input scored in this call
                sc = out_fresh[k]
                out.append(replace(sc, cached=sc.error is None, latency_s=0.0))
        return out

    def _label_logprobs_by_text(self, system: str, inputs: list[str], labels: list[str]) -> list[LabelScores]:
        """Fallback scorer: ask for the label as text (cached like any chat), map it to the set.

        The chosen label gets probability 0.98 and the others share the rest; an answer that
        maps to no label gives a uniform distribution (counted in ``label_unmapped``).
        """
        instr = f"\n\nAnswer with exactly one of: {', '.join(labels)}. Output only the label."
        sys_text = system if "Output only the label" in system else system + instr
        reqs = [ChatRequest(messages=[{"role": "system", "content": sys_text}, {"role": "user", "content": x}],
                            max_tokens=self.label_answer_tokens, temperature=0.0, template_version="classify-text")
                for x in inputs]
        return [self._scores_from_text(r, labels) for r in self.chat(reqs)]

    def _scores_from_text(self, resp: ChatResponse, labels: list[str], chosen: str | None = None) -> LabelScores:
        if not resp.ok:
            return LabelScores(None, resp.tokens_in, resp.tokens_out, 0, resp.latency_s, resp.error, resp.error_type)
        lab = chosen or map_to_label(resp.text, labels)
        if lab is None:
            self._bump(label_unmapped=1)
            lp = {x: 0.0 for x in labels}
        else:
            rest = math.log(0.02 / (len(labels) - 1))
            lp = {x: (math.log(0.98) if x == lab else rest) for x in labels}
        return LabelScores(lp, resp.tokens_in, resp.tokens_out, 0, resp.latency_s)


