"""In-process llama.cpp backend (``llama-cpp-python``), the embedded default.

- The model is loaded once per process (module-level cache keyed by file and load
  parameters) and only when first needed, so a client whose requests are all cache hits
  never loads it. Teacher and student built from the same file share one ``Llama``.
- Chat uses ``create_chat_completion``; a JSON schema becomes
  ``response_format={"type": "json_object", "schema": ...}`` (llama.cpp compiles it to a
  grammar, so the answer is constrained to the schema).
- Label scoring renders the chat prompt (system = rule prompt, user = input) with the
  model's own chat template, evaluates it, and sums the log-probabilities of each label's
  tokens right after the assistant header. The KV state of the longest common token prefix
  with the previous evaluation is kept (``n_tokens`` is rewound to it, only the rest is
  evaluated), so the shared rule prompt is prefilled once per process, not once per input.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pld_spark.errors import ContextLengthError, FatalLLMError
from pld_spark.llm.base import BaseLLM, ChatRequest, ChatResponse, LabelScores

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One ``Llama`` per process and load key; ``lock`` serialises use (llama.cpp is not re-entrant)."""

    llama: Any
    path: Path
    load_s: float
    n_ctx: int
    lock: threading.RLock = field(default_factory=threading.RLock)
    formatter: Any = None
    loads: int = 1
    budget: Any = None  # pld_spark.llm.threads.ThreadBudget

    @contextlib.contextmanager
    def using(self):
        """Hold ``lock`` for one model call, count this process as a model process meanwhile
        (:func:`pld_spark.llm.threads.model_call`) and follow its share of the host's cores."""
        from pld_spark.llm.threads import model_call

        with self.lock, model_call():
            self.refresh_threads()
            yield

    def refresh_threads(self) -> None:
        """Follow this process's share of the host (only for a host-share budget): call with
        ``lock`` held, before using the model."""
        from pld_spark.llm.threads import host_share

        if self.budget is None or self.budget.source != "host-share":
            return
        now = host_share()
        if now.n != self.budget.n:
            self.llama._ctx.set_n_threads(now.n, now.n)
            self.llama.n_threads = self.llama.n_threads_batch = now.n
            log.info("%s: threads %d -> %s", self.path.name, self.budget.n, now.describe())
        self.budget = now


_MODELS: dict[tuple, LoadedModel] = {}
_MODELS_LOCK = threading.Lock()
LOAD_COUNT = 0  # models loaded by this process (tests assert "loaded once")


def _llama_kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``cfg.extra`` that ``Llama.__init__`` accepts (other keys are ours)."""
    from llama_cpp import Llama

    accepted = set(inspect.signature(Llama.__init__).parameters) - {"self", "model_path"}
    return {k: v for k, v in (extra or {}).items() if k in accepted}


def load_model(path: Path, n_ctx: int, n_threads: int | None, seed: int = 0,
               extra: dict[str, Any] | None = None) -> LoadedModel:
    """The process-wide ``Llama`` for these parameters, loading it on first use.

    Threads: ``n_threads`` if set, else this process's share of the host's cores
    (:mod:`pld_spark.llm.threads`), re-read before each call (:meth:`LoadedModel.refresh_threads`).
    Before the first load the CPU is checked for the instructions the portable build uses
    (:mod:`pld_spark.llm.cpu`), so an unsupported CPU is an error, not a SIGILL."""
    global LOAD_COUNT
    extra = extra or {}
    kw = _llama_kwargs(extra)
    key = (str(path), n_ctx, n_threads, seed, tuple(sorted((k, repr(v)) for k, v in kw.items())))
    with _MODELS_LOCK:
        m = _MODELS.get(key)
        if m is not None:
            return m
        from pld_spark import supervisor
        from pld_spark.llm.cpu import require_supported_cpu
        from pld_spark.llm.threads import register_model_process, thread_budget

        require_supported_cpu()
        from llama_cpp import Llama

        register_model_process()
        budget = thread_budget(n_threads, str(extra.get("threads_source", "config")))
        supervisor.note_model(str(path), budget.describe())
        t0 = time.perf_counter()
        llama = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=budget.n, n_threads_batch=budget.n, seed=seed,
                      logits_all=False, verbose=False, **kw)
        load_s = time.perf_counter() - t0
        LOAD_COUNT += 1
        m = LoadedModel(llama=llama, path=Path(path), load_s=load_s, n_ctx=n_ctx, formatter=_formatter(llama),
                        budget=budget)
        _MODELS[key] = m
        log.info("loaded %s in %.2fs (n_ctx=%d, %s)", path.name, load_s, n_ctx, budget.describe())
        return m


def _formatter(llama):
    """A Jinja formatter for the model's own chat template (None: fall back to ChatML)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    tmpl = (llama.metadata or {}).get("tokenizer.chat_template")
    if not tmpl:
        return None

    def tok_text(tid: int) -> str:
        return llama.detokenize([tid], special=True).decode("utf-8", errors="ignore") if tid >= 0 else ""

    return Jinja2ChatFormatter(template=tmpl, eos_token=tok_text(llama.token_eos()),
                               bos_token=tok_text(llama.token_bos()))


class LlamaCppLLM(BaseLLM):
    """In-process llama.cpp client. See the module docstring."""

    backend = "llamacpp"
    can_embed = True

    def __init__(self, cfg, role: str = "student", cache=None, **kw):
        from pld_spark.llm.models import resolve_model_path

        super().__init__(cfg, role, cache, **kw)
        self.model_path = resolve_model_path(cfg.model)
        self.prefix_reuse: bool = bool(cfg.extra.get("prefix_reuse", True))
        self._loaded: LoadedModel | None = None
        self._label_token_cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ model
    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def model(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.model_path, self.cfg.n_ctx, self.cfg.n_threads, self.cfg.seed,
                                      self.cfg.extra)
        return self._loaded

    def count_tokens(self, text: str) -> int:
        """Exact count with the model's tokenizer (loads the model if needed)."""
        return len(self.model.llama.tokenize((text or "").encode("utf-8"), add_bos=False, special=False))

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text the chat template makes of ``messages`` (generation prompt included)."""
        fmt = self.model.formatter
        if fmt is not None:
            return fmt(messages=messages).prompt
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        return "".join(parts) + "<|im_start|>assistant\n"

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the rendered prompt. The template's own text is parsed for control
        tokens; message contents are not: a document holding ``<|im_start|>system`` is text,
        not a new turn (prompt injection). Other prompts tokenize as the whole rendered text
        did (only whitespace at a content's edge may merge differently)."""
        llama = self.model.llama
        rendered = self.render(messages)
        parts = self._split_contents(messages, rendered)
        if parts is None:  # the template rewrote the contents: cannot tell them apart
            log.warning("chat template alters message contents; control tokens in inputs are not neutralised")
            return llama.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        # The rendered template already holds any BOS text: do not add another.
        return [t for text, special in parts if text
                for t in llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)]

    def _split_contents(self, messages: list[dict[str, str]], rendered: str) -> list[tuple[str, bool]] | None:
        """[(text, is_template)] covering ``rendered``: template pieces and message contents."""
        marks = [f"\x00pld-content-{i}\x00" for i in range(len(messages))]
        skeleton = self.render([{**m, "content": mk} for m, mk in zip(messages, marks)])
        parts: list[tuple[str, bool]] = []
        rest = skeleton
        for m, mk in zip(messages, marks):
            head, sep, rest = rest.partition(mk)
            if not sep:
                return None
            parts += [(head, True), (str(m.get("content") or ""), False)]
        parts.append((rest, True))
        return parts if "".join(t for t, _ in parts) == rendered else None

    # ------------------------------------------------------------------ chat
    def _chat_once(self, req: ChatRequest) -> ChatResponse:
        m = self.model
        kwargs: dict[str, Any] = {"messages": req.messages, "max_tokens": req.max_tokens,
                                  "temperature": req.temperature, "seed": self.cfg.seed}
        if req.json_schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": req.json_schema}
        with m.using():
            n_prompt = len(self.prompt_tokens(req.messages))
            if n_prompt >= m.n_ctx:
                raise ContextLengthError(f"prompt has {n_prompt} tokens; the context window is {m.n_ctx} (n_ctx)")
            t0 = time.perf_counter()
            try:
                out = m.llama.create_chat_completion(**kwargs)
            except (RuntimeError, ValueError) as e:
                raise FatalLLMError(f"llama.cpp failed: {type(e).__name__}: {e}") from e
            dt = time.perf_counter() - t0
        choice = (out.get("choices") or [{}])[0]
        usage = out.get("usage") or {}
        return ChatResponse(text=(choice.get("message") or {}).get("content") or "",
                            tokens_in=int(usage.get("prompt_tokens", n_prompt)),
                            tokens_out=int(usage.get("completion_tokens", 0)), latency_s=dt, model=self.model_id)

    # ------------------------------------------------------------------ label scoring
    def _label_tokens(self, label: str) -> list[int]:
        toks = self._label_token_cache.get(label)
        if toks is None:
            toks = self.model.llama.tokenize(label.encode("utf-8"), add_bos=False, special=False)
            if not toks:
                raise FatalLLMError(f"label {label!r} tokenizes to nothing")
            self._label_token_cache[label] = toks
        return toks

    def _eval_with_reuse(self, toks: list[int]) -> int:
        """Evaluate ``toks`` keeping the KV state of the common prefix; returns tokens reused."""
        import numpy as np

        llama = self.model.llama
        common = 0
        if self.prefix_reuse and llama.n_tokens > 0:
            n = min(int(llama.n_tokens), len(toks))
            prev = llama.input_ids[:n]
            diff = np.nonzero(prev != np.asarray(toks[:n], dtype=prev.dtype))[0]
            common = int(diff[0]) if len(diff) else n
        common = min(common, len(toks) - 1)  # evaluate at least one token for fresh logits
        llama.n_tokens = common  # eval() drops the KV cells from here on
        llama.eval(toks[common:])
        return common

    def _last_logprobs(self):
        import numpy as np
        from llama_cpp import llama_cpp as lc

        llama = self.model.llama
        ptr = lc.llama_get_logits_ith(llama.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(llama.n_vocab(),)).astype(np.float64)
        mx = logits.max()
        return logits - (mx + math.log(float(np.exp(logits - mx).sum())))

    def _label_logprobs(self, system: str, inputs: list[str], labels: list[str]) -> list[LabelScores]:
        m = self.model
        label_toks = {lab: self._label_tokens(lab) for lab in labels}
        longest = max(len(t) for t in label_toks.values())
        out: list[LabelScores] = []
        with m.using():
            for i, x in enumerate(inputs):
                if i:  # a long batch follows a model process that starts meanwhile, row by row
                    m.refresh_threads()
                t0 = time.perf_counter()
                toks = self.prompt_tokens([{"role": "system", "content": system}, {"role": "user", "content": x}])
                if len(toks) + longest > m.n_ctx:
                    msg = f"prompt has {len(toks)} tokens; the context window is {m.n_ctx} (n_ctx)"
                    out.append(LabelScores(None, len(toks), 0, 0, 0.0, msg, ContextLengthError.__name__))
                    self._bump(calls=1, errors=1)
                    continue
                try:
                    reused = self._eval_with_reuse(toks)
                    first = self._last_logprobs()
                    scores: dict[str, float] = {}
                    n_label_evals = 0
                    for lab, lt in label_toks.items():
                        s = float(first[lt[0]])
                        if len(lt) > 1:
                            m.llama.n_tokens = len(toks)  # rewind to the assistant header
                            for j in range(len(lt) - 1):
                                m.llama.eval([lt[j]])
                                n_label_evals += 1
                                s += float(self._last_logprobs()[lt[j + 1]])
                        scores[lab] = s
                except (RuntimeError, ValueError) as e:
                    m.llama.reset()
                    out.append(LabelScores(None, len(toks), 0, 0, time.perf_counter() - t0,
                                           f"llama.cpp scoring failed: {e}", FatalLLMError.__name__))
                    self._bump(calls=1, errors=1)
                    continue
                dt = time.perf_counter() - t0
                n_in = len(toks)
                out.append(LabelScores(scores, n_in, 0, reused, dt))
                self._bump(calls=1, tokens_in=n_in, prefix_tokens=n_in, prefix_reused_tokens=reused, latency_s=dt,
                           cost_usd=self.cost(n_in, 0))
        return out

    # ------------------------------------------------------------------ embeddings
    def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled, L2-normalised embeddings (a second ``Llama`` in embedding mode, loaded
        once per process; ``cfg.extra["embed_n_ctx"]`` caps its context, default 512)."""
        import llama_cpp

        extra = {k: v for k, v in self.cfg.extra.items() if k not in ("embedding", "pooling_type")}
        extra.update(embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        n_ctx = int(self.cfg.extra.get("embed_n_ctx", min(512, self.cfg.n_ctx)))
        m = load_model(self.model_path, n_ctx, self.cfg.n_threads, self.cfg.seed, extra)
        if not texts:
            return []
        t0 = time.perf_counter()
        with m.using():
            vecs = m.llama.embed([t if t.strip() else " " for t in texts], normalize=True, truncate=True)
        self._bump(calls=1, latency_s=time.perf_counter() - t0)
        return [list(map(float, v)) for v in vecs]

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["model_loaded"] = self.loaded
        s["model_load_s"] = round(self._loaded.load_s, 3) if self._loaded else None
        s["model_path"] = str(self.model_path)
        if self._loaded is not None and self._loaded.budget is not None:
            s["threads"] = self._loaded.budget.n
            s["threads_source"] = self._loaded.budget.describe()
        return s
