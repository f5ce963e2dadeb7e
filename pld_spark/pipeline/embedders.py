"""Rule embedders, chosen by ``cluster.embedder.type`` through a registry.

Every embedder maps a list of texts to an L2-normalised float matrix (rows = texts), so
cosine distance is ``1 - dot`` and Euclidean k-means on the rows approximates cosine.

- ``tfidf_svd`` (default): TF-IDF (word 1-2 grams) + truncated SVD to ``dims``; no model,
  deterministic, seconds for thousands of rules.
- ``llamacpp``: the local model's embeddings through a client that has ``embed(texts)``
  (the teacher client unless ``model`` names another GGUF/registry model).
- ``sentence_transformers``: ``SentenceTransformer(model).encode`` (optional package).
- ``openai``: an OpenAI-compatible ``/embeddings`` endpoint (``base_url``, ``model``,
  ``api_key_env``).
Heavy imports happen inside the embedder, never at import time.
"""
from __future__ import annotations

import logging
import os
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


class SentenceTransformersEmbedder:
    name = "sentence_transformers"

    def __init__(self, model: str | None):
        self.model = model or "all-MiniLM-L6-v2"

    def __call__(self, texts: Sequence[str]):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("cluster.embedder.type=sentence_transformers needs the 'sentence-transformers' "
                              "package (pip install sentence-transformers)") from None
        import numpy as np

        if not texts:
            return np.zeros((0, 1))
        model = SentenceTransformer(self.model)
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


@register("sentence_transformers")
def _st(cfg, client=None, seed: int = 0):
    return SentenceTransformersEmbedder(cfg.model)


@register("openai")
def _openai(cfg, client=None, seed: int = 0):
    return OpenAIEmbedder(cfg.base_url, cfg.model, cfg.api_key_env)


def build_embedder(cfg, client=None, seed: int = 0) -> Embedder:
    """The embedder for ``cluster.embedder`` (``client``: the teacher, for ``llamacpp``)."""
    try:
        factory = EMBEDDERS[cfg.type]
    except KeyError:
        raise ConfigError(f"unknown cluster.embedder.type {cfg.type!r}; known: {sorted(EMBEDDERS)}") from None
    return factory(cfg, client=client, seed=seed)


def describe(cfg) -> str:
    """Short embedder description stored with every cluster row."""
    return f"{cfg.type}(dims={cfg.dims})" if cfg.type == "tfidf_svd" else f"{cfg.type}({cfg.model or 'default'})"
