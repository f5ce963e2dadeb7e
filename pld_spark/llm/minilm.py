"""BERT sentence embeddings (all-MiniLM-L6-v2) with numpy only: no torch, no transformers.

A sentence-transformers model folder (``config.json``, ``model.safetensors``,
``tokenizer.json`` and/or ``vocab.txt``, ``modules.json``, ``sentence_bert_config.json``,
``1_Pooling/config.json``) is run exactly as ``SentenceTransformer(folder).encode(texts,
normalize_embeddings=True)`` runs it:

1. **Tokenise** (uncased BERT WordPiece): with the HuggingFace ``tokenizers`` package when it
   is installed (it reads the shipped ``tokenizer.json``), otherwise with the pure-Python
   :class:`WordPieceTokenizer` here, which reproduces it (BertNormalizer: clean text, space
   around CJK characters, strip accents, lowercase; BertPreTokenizer: split on whitespace and
   punctuation; greedy longest-match WordPiece, ``[UNK]`` for words over 100 characters).
   ``[CLS] ... [SEP]``, truncated to ``max_seq_length`` (256 for this model) tokens.
2. **Encode**: embeddings (word + position + token type 0) -> LayerNorm, then each layer:
   self-attention over the real tokens (padding masked out), output projection, residual +
   LayerNorm, FFN with exact (erf) GELU, residual + LayerNorm. float32 throughout.
3. **Pool and normalise**: mean over the attention mask (``1_Pooling``: mean tokens), then L2
   (``2_Normalize``).

Weights are read from ``model.safetensors`` directly (an 8-byte little-endian header length,
a JSON header of name -> dtype, shape, byte offsets, then the raw little-endian arrays),
memory-mapped, so no ``safetensors`` package is needed. Checked against sentence-transformers
6.2 + torch 2.15 on 51 varied sentences (same token ids; max |difference| 2e-7): see
``bench/embedder_check.py``.

numpy is imported inside functions, so importing this module costs nothing. :func:`load`
keeps one model per folder per process (Spark and Ray workers reuse it across tasks).
"""
from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path
from typing import Any, Sequence

from pld_spark.errors import ConfigError
from pld_spark.llm.wordpiece import WordPieceTokenizer, _HFTokenizer

log = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str], "MiniLM"] = {}
_LOCK = threading.Lock()


def load(folder: str | Path, tokenizer: str = "auto") -> "MiniLM":
    """The model in ``folder``, loaded once per process (``tokenizer``: auto | hf | python)."""
    key = (str(Path(folder).resolve()), tokenizer)
    with _LOCK:
        m = _MODELS.get(key)
        if m is None:
            m = _MODELS[key] = MiniLM(folder, tokenizer=tokenizer)
        return m


# ---------------------------------------------------------------------------------- safetensors
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """name -> numpy array (read-only views of a memory map; BF16 is widened to float32)."""
    import numpy as np

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ConfigError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > 100_000_000 or n + 8 > path.stat().st_size:
            raise ConfigError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out: dict[str, Any] = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        shape = tuple(t["shape"])
        raw = data[start:end]
        if t["dtype"] == "BF16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] in _DTYPES:
            arr = raw.view(_DTYPES[t["dtype"]])
        else:
            raise ConfigError(f"{path}: tensor {name} has unsupported dtype {t['dtype']}")
        out[name] = arr.reshape(shape)
    return out


# ---------------------------------------------------------------------------------- tokenizer
def erf(x):
    """Elementwise erf: scipy's when available (a scikit-learn dependency), else :func:`erf_numpy`."""
    try:
        from scipy.special import erf as _erf
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return erf_numpy(x)
    return _erf(x)


def erf_numpy(x):
    """erf without scipy: Numerical Recipes' erfc Chebyshev fit (fractional error < 1.2e-7)."""
    import numpy as np

    x = np.asarray(x)
    z = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    y = 1.0 - t * np.exp(poly)
    return np.where(x >= 0, y, -y).astype(x.dtype if x.dtype.kind == "f" else np.float64)


def gelu(x):
    """Exact GELU, x * Phi(x) (BERT's ``gelu``, not the tanh approximation)."""
    return x * (0.5 * (1.0 + erf(x * (1.0 / math.sqrt(2.0)))))


def _layer_norm(x, w, b, eps: float):
    import numpy as np

    mu = x.mean(-1, keepdims=True)
    d = x - mu
    var = np.mean(d * d, axis=-1, keepdims=True)
    return d / np.sqrt(var + eps) * w + b


# ---------------------------------------------------------------------------------- model
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


class MiniLM:
    """A sentence-transformers BERT model (Transformer -> mean/CLS Pooling -> Normalize) in numpy.

    ``encode(texts)`` returns float32 (n, hidden) rows, L2-normalised when the model folder has
    a Normalize module (all-MiniLM-L6-v2 does). Use :func:`load` to share one per process.
    """

    def __init__(self, folder: str | Path, tokenizer: str = "auto"):
        import numpy as np

        self.folder = Path(folder)
        cfg = _read_json(self.folder / "config.json")
        if cfg.get("model_type") != "bert":
            raise ConfigError(f"{self.folder}/config.json: model_type {cfg.get('model_type')!r}; "
                              "only BERT encoders (e.g. all-MiniLM-L6-v2) are supported")
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{self.folder}/config.json: unsupported hidden_act/position_embedding_type")
        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.n_layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        st_cfg = _read_json(self.folder / "sentence_bert_config.json")
        self.max_seq_length = int(st_cfg.get("max_seq_length") or cfg.get("max_position_embeddings", 512))
        self.pooling, self.normalize = self._modules()

        w = read_safetensors(self.folder / "model.safetensors")
        pre = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""

        def g(name):
            try:
                return w[pre + name]
            except KeyError:
                raise ConfigError(f"{self.folder}/model.safetensors has no tensor {pre + name}") from None

        f32 = np.float32
        self.word = g("embeddings.word_embeddings.weight")  # memory-mapped; rows gathered per batch
        self.pos = np.array(g("embeddings.position_embeddings.weight"), dtype=f32)
        self.type0 = np.array(g("embeddings.token_type_embeddings.weight")[0], dtype=f32)
        self.emb_ln = (np.array(g("embeddings.LayerNorm.weight"), f32), np.array(g("embeddings.LayerNorm.bias"), f32))
        self.layers = []
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."
            # Linear weights are stored (out, in); keep them transposed and Q, K, V fused for x @ W
            wqkv = np.concatenate([g(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")], 0)
            bqkv = np.concatenate([g(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")], 0)
            self.layers.append(dict(
                wqkv=np.ascontiguousarray(wqkv.T, dtype=f32), bqkv=np.array(bqkv, f32),
                wo=np.ascontiguousarray(g(p + "attention.output.dense.weight").T, dtype=f32),
                bo=np.array(g(p + "attention.output.dense.bias"), f32),
                ln1=(np.array(g(p + "attention.output.LayerNorm.weight"), f32),
                     np.array(g(p + "attention.output.LayerNorm.bias"), f32)),
                w1=np.ascontiguousarray(g(p + "intermediate.dense.weight").T, dtype=f32),
                b1=np.array(g(p + "intermediate.dense.bias"), f32),
                w2=np.ascontiguousarray(g(p + "output.dense.weight").T, dtype=f32),
                b2=np.array(g(p + "output.dense.bias"), f32),
                ln2=(np.array(g(p + "output.LayerNorm.weight"), f32), np.array(g(p + "output.LayerNorm.bias"), f32)),
            ))
        self.max_seq_length = min(self.max_seq_length, self.pos.shape[0])
        self.tokenizer_kind, self._tok = self._make_tokenizer(tokenizer)
        log.info("loaded %s (%d layers, hidden %d, %s pooling, tokenizer %s)", self.folder, self.n_layers,
                 self.hidden, self.pooling, self.tokenizer_kind)

    @property
    def dim(self) -> int:
        return self.hidden

    def _modules(self) -> tuple[str, bool]:
        mods = _read_json(self.folder / "modules.json") or []
        types = [m.get("type", "").rsplit(".", 1)[-1] for m in mods] if isinstance(mods, list) else []
        normalize = "Normalize" in types
        pool_path = next((m.get("path", "") for m in mods if m.get("type", "").endswith("Pooling")), "1_Pooling")
        pc = _read_json(self.folder / pool_path / "config.json")
        modes = [k[len("pooling_mode_"):] for k, v in pc.items() if k.startswith("pooling_mode_") and v]
        if not pc:
            modes = ["mean_tokens"]
        if modes not in (["mean_tokens"], ["cls_token"]):
            raise ConfigError(f"{self.folder}: pooling {modes} not supported (mean_tokens or cls_token)")
        extra = [t for t in types if t not in ("Transformer", "Pooling", "Normalize")]
        if extra:
            raise ConfigError(f"{self.folder}/modules.json: modules {extra} are not supported")
        return modes[0].split("_")[0], normalize

    def _make_tokenizer(self, kind: str):
        if kind not in ("auto", "hf", "python"):
            raise ConfigError(f"tokenizer must be auto, hf or python, not {kind!r}")
        tj = self.folder / "tokenizer.json"
        if kind in ("auto", "hf") and tj.is_file():
            try:
                return "hf", _HFTokenizer(tj, self.max_seq_length)
            except ImportError:
                if kind == "hf":
                    raise ConfigError("tokenizer=hf needs the 'tokenizers' package") from None
        elif kind == "hf":
            raise ConfigError(f"tokenizer=hf needs {tj}")
        return "python", WordPieceTokenizer.from_folder(self.folder)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, ``[CLS] ... [SEP]``, at most ``max_seq_length`` each."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if self.tokenizer_kind == "hf":
            return self._tok.encode_batch(texts)
        return [self._tok.encode(t, self.max_seq_length) for t in texts]

    def forward(self, ids, mask):
        """Token states (B, T, hidden) for ``ids`` (B, T) int and ``mask`` (B, T) bool."""
        import numpy as np

        b, t = ids.shape
        n, hid, heads = b * t, self.hidden, self.heads
        hd = hid // heads
        x = np.asarray(self.word[ids.reshape(-1)], dtype=np.float32).reshape(b, t, hid) + self.pos[:t] + self.type0
        # activations stay 2-D (B*T, hidden): numpy sends 2-D matmuls to BLAS, while a 3-D @ 2-D
        # matmul ran ~30x slower here (numpy 2.4)
        x = _layer_norm(x.reshape(n, hid), *self.emb_ln, self.eps)
        scale = np.float32(1.0 / math.sqrt(hd))
        # padded keys get the most negative float32, as transformers does: exp() makes them 0
        add_mask = np.where(mask, np.float32(0), np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
        for L in self.layers:
            qkv = x @ L["wqkv"] + L["bqkv"]  # (B*T, 3H)
            qkv = qkv.reshape(b, t, 3, heads, hd).transpose(2, 0, 3, 1, 4)  # (3, B, heads, T, hd)
            q, k, v = (np.ascontiguousarray(qkv[i]) for i in range(3))
            s = (q @ k.transpose(0, 1, 3, 2)) * scale + add_mask  # (B, heads, T, T)
            s -= s.max(-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(n, hid)
            x = _layer_norm(x + (ctx @ L["wo"] + L["bo"]), *L["ln1"], self.eps)
            h = gelu(x @ L["w1"] + L["b1"])
            x = _layer_norm(x + (h @ L["w2"] + L["b2"]), *L["ln2"], self.eps)
        return x.reshape(b, t, hid)

    def encode(self, texts: Sequence[str], batch_size: int = 32):
        """float32 (len(texts), hidden) sentence embeddings (pooled, L2-normalised if the model
        normalises). Texts are batched by length, as sentence-transformers does, so padding is small."""
        import numpy as np

        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        if not len(texts):
            return out
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            t = max(len(ids[i]) for i in idx)
            arr = np.zeros((len(idx), t), dtype=np.int64)  # pad id 0
            mask = np.zeros((len(idx), t), dtype=bool)
            for r, i in enumerate(idx):
                arr[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = True
            h = self.forward(arr, mask)
            if self.pooling == "cls":
                pooled = h[:, 0]
            else:
                m = mask[:, :, None].astype(np.float32)
                pooled = (h * m).sum(1) / np.maximum(m.sum(1), np.float32(1e-9))
            out[idx] = pooled
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return out
