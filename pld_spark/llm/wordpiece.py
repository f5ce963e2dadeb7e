"""WordPiece tokenisation for BERT sentence-embedding models, in pure Python (the HF
BertNormalizer's behaviour: lowercasing and accent stripping as configured, control characters
dropped, punctuation and CJK characters split), with the ``tokenizers`` package used instead
when it is installed. Used by :mod:`pld_spark.llm.minilm`.
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Sequence

from pld_spark.errors import ConfigError


def _is_control(c: str) -> bool:
    return c not in "\t\n\r" and unicodedata.category(c).startswith("C")


def _is_punctuation(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True  # ASCII symbols such as $ + < = > ^ ` | ~ count as punctuation for BERT
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """Uncased BERT tokenisation in pure Python, equal to the HuggingFace fast tokenizer built
    from this model's ``tokenizer.json`` (BertNormalizer + BertPreTokenizer + WordPiece)."""

    def __init__(self, vocab: dict[str, int], lowercase: bool = True, strip_accents: bool | None = None,
                 clean_text: bool = True, handle_chinese_chars: bool = True, unk_token: str = "[UNK]",
                 cls_token: str = "[CLS]", sep_token: str = "[SEP]", max_input_chars_per_word: int = 100,
                 prefix: str = "##"):
        self.vocab = vocab
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.clean_text = clean_text
        self.handle_chinese_chars = handle_chinese_chars
        self.unk_id = vocab[unk_token]
        self.cls_id = vocab[cls_token]
        self.sep_id = vocab[sep_token]
        self.max_chars = max_input_chars_per_word
        self.prefix = prefix
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_folder(cls, folder: str | Path) -> "WordPieceTokenizer":
        """From ``tokenizer.json`` (vocabulary and normaliser settings) or ``vocab.txt`` +
        ``tokenizer_config.json``."""
        folder = Path(folder)
        tj = folder / "tokenizer.json"
        if tj.is_file():
            spec = json.loads(tj.read_text(encoding="utf-8"))
            model, norm = spec.get("model") or {}, spec.get("normalizer") or {}
            if model.get("type") != "WordPiece" or norm.get("type") != "BertNormalizer":
                raise ConfigError(f"{tj}: not a BERT WordPiece tokenizer ({model.get('type')}, {norm.get('type')})")
            return cls(dict(model["vocab"]), lowercase=norm.get("lowercase", True),
                       strip_accents=norm.get("strip_accents"), clean_text=norm.get("clean_text", True),
                       handle_chinese_chars=norm.get("handle_chinese_chars", True),
                       unk_token=model.get("unk_token", "[UNK]"),
                       max_input_chars_per_word=model.get("max_input_chars_per_word", 100),
                       prefix=model.get("continuing_subword_prefix", "##"))
        vt = folder / "vocab.txt"
        if not vt.is_file():
            raise ConfigError(f"{folder}: neither tokenizer.json nor vocab.txt")
        vocab = {line.rstrip("\n"): i for i, line in enumerate(vt.read_text(encoding="utf-8").splitlines())}
        conf = folder / "tokenizer_config.json"
        tc = json.loads(conf.read_text(encoding="utf-8")) if conf.is_file() else {}
        return cls(vocab, lowercase=tc.get("do_lower_case", True), strip_accents=tc.get("strip_accents"),
                   handle_chinese_chars=tc.get("tokenize_chinese_chars", True))

    def normalize(self, text: str) -> str:
        if self.clean_text:
            text = "".join(" " if c.isspace() else c for c in text
                           if not (c == "\x00" or c == "\ufffd" or _is_control(c)))
        if self.handle_chinese_chars:
            text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in text)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        if self.lowercase:
            text = "".join(c.lower() for c in text)  # per character, as Rust: no final-sigma rule
        return text

    def pre_tokenize(self, text: str) -> list[str]:
        words: list[str] = []
        for chunk in text.split():
            cur = ""
            for c in chunk:
                if _is_punctuation(c):
                    if cur:
                        words.append(cur)
                        cur = ""
                    words.append(c)
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        if len(word) > self.max_chars:
            ids = [self.unk_id]
        else:
            ids = []
            start = 0
            while start < len(word):
                end = len(word)
                found = None
                while start < end:
                    piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                    found = self.vocab.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    ids = [self.unk_id]
                    break
                ids.append(found)
                start = end
        if len(self._cache) < 200_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str, max_length: int) -> list[int]:
        """``[CLS] wordpieces [SEP]``, wordpieces cut so the whole is at most ``max_length``."""
        ids: list[int] = []
        for w in self.pre_tokenize(self.normalize(text)):
            ids.extend(self._wordpiece(w))
        return [self.cls_id, *ids[: max(0, max_length - 2)], self.sep_id]


class _HFTokenizer:
    """The same tokenisation through the ``tokenizers`` package (Rust), when it is installed."""

    def __init__(self, path: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=max_length)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts))]


# ---------------------------------------------------------------------------------- math
