"""Typed, frozen configuration loaded once from YAML.

A run's config is the packaged base (``pld_spark/conf/base.yaml``; ``conf/base.yaml`` in the
repository links to it) deep-merged with a task file (``conf/stereoset.yaml``, or any file
anywhere) and then with ``--set a.b=c`` overrides. A task file may name what it is merged over
with ``extends:`` (a path relative to it, or a packaged name such as ``base``); without
``extends:`` it is merged over the packaged base. Every model rejects unknown keys
(``extra="forbid"``) and the error names the key path and the file it came from.

Costs are stated per field: ``description`` says what the knob spends (teacher calls,
tokens, wall time, money). Secrets are *references*: ``api_key_env`` names an environment
variable; the value itself is never read into the config.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from pld_spark.config_sections import (  # noqa: F401 - the sections are part of this module's API
    _Model, LabelSpec, TaskConfig, SplitConfig, SampleConfig, DatasetConfig,
    InputPolicyConfig, LakehouseConfig, SparkConfig, LLMConfig, ExtractConfig, EmbedderConfig,
    ClustererConfig, ClusterConfig, ConsolidateConfig, ResolveConfig, RayConfig, ScoreConfig, SelectConfig,
    EvaluateConfig, DriftConfig, MlflowConfig, PromotionConfig)
from pld_spark.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: configs shipped inside the package (so an installed wheel has them): ``base.yaml``
PACKAGED_CONF_DIR = Path(__file__).resolve().parent / "conf"


class PLDConfig(_Model):
    task: TaskConfig
    dataset: DatasetConfig
    input_policy: InputPolicyConfig = InputPolicyConfig()
    lakehouse: LakehouseConfig = LakehouseConfig()
    spark: SparkConfig = SparkConfig()
    teacher: LLMConfig = LLMConfig()
    student: LLMConfig = LLMConfig()
    extract: ExtractConfig = ExtractConfig()
    cluster: ClusterConfig = ClusterConfig()
    consolidate: ConsolidateConfig = ConsolidateConfig()
    select: SelectConfig = SelectConfig()
    resolve: ResolveConfig = ResolveConfig()
    score: ScoreConfig = ScoreConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    drift: DriftConfig = DriftConfig()
    mlflow: MlflowConfig = MlflowConfig()
    promotion: PromotionConfig = PromotionConfig()

    # Set by load_config, excluded from hashing so the hash depends on content only.
    source: str = Field("", exclude=True)
    text: str = Field("", exclude=True)
    merged_from: tuple[str, ...] = Field(
        (), exclude=True, description="What was merged, lowest precedence first: the config files, then the --set overrides.")

    @property
    def hash(self) -> str:
        return config_hash(self)


def config_hash(cfg: PLDConfig) -> str:
    blob = json.dumps(cfg.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], parsed value). Values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key: {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _locate(sources: dict[str, str], loc: tuple) -> str:
    """Which file set this key path (deepest matching prefix)."""
    for n in range(len(loc), 0, -1):
        prefix = ".".join(str(p) for p in loc[:n])
        if prefix in sources:
            return sources[prefix]
    return sources.get("", "defaults")


def _record_sources(data: Any, origin: str, sources: dict[str, str], prefix: str = "") -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            sources[p] = origin
            _record_sources(v, origin, sources, p)


def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package (``pld_spark/conf/<name>.yaml``)."""
    return sorted(p.stem for p in PACKAGED_CONF_DIR.glob("*.yaml"))


def _resolve_extends(value: Any, owner: Path) -> Path:
    """The file an ``extends:`` value names: a path (it has a ``/`` or a ``.yaml``/``.yml``
    suffix; relative to the file that names it) or the name of a packaged config (``base``)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{owner}: 'extends' must be a file path (relative to this file) or the name of a packaged "
                          f"config ({', '.join(packaged_configs())}), got {value!r}")
    v = value.strip()
    if "/" in v or "\\" in v or v.endswith((".yaml", ".yml")):
        p = Path(v).expanduser()
        target = p if p.is_absolute() else Path(os.path.normpath(owner.parent / p))
        if not target.is_file():
            raise ConfigError(f"{owner}: extends '{v}': file not found: {target} (a relative path is resolved from "
                              f"the folder of the file that names it)")
        return target
    target = PACKAGED_CONF_DIR / f"{v}.yaml"
    if not target.is_file():
        raise ConfigError(f"{owner}: extends '{v}': no packaged config of that name (packaged: "
                          f"{', '.join(packaged_configs()) or 'none'}); a file path needs a '/' or a .yaml suffix")
    return target


def config_chain(path: str | Path, base: str | Path | None = None) -> list[tuple[Path, dict]]:
    """The files a config is merged from, lowest precedence first, each with its YAML mapping
    (``extends`` removed).

    A file's ``extends:`` names the file it is merged over; a file without ``extends:`` is
    merged over the packaged ``base`` config (``pld_spark/conf/base.yaml``, or ``base`` if
    given), except that base itself. So a task file anywhere on disk gets the same defaults.
    """
    default_base = Path(base) if base else PACKAGED_CONF_DIR / "base.yaml"
    if base and not default_base.is_file():
        raise ConfigError(f"base config not found: {default_base}")
    chain: list[tuple[Path, dict]] = []
    seen: list[Path] = []
    current: Path | None = Path(path)
    while current is not None:
        key = current.resolve()
        if key in seen:
            cycle = " -> ".join(str(p) for p in [*seen, key])
            raise ConfigError(f"config files extend each other in a cycle: {cycle}")
        seen.append(key)
        data = _read_yaml(current)
        has_extends = "extends" in data
        ext = data.pop("extends", None)
        chain.append((current, data))
        if has_extends:
            current = _resolve_extends(ext, current)
        elif default_base.is_file() and key != default_base.resolve():
            current = default_base
        else:
            if key != default_base.resolve():
                raise ConfigError(f"the packaged base config is missing: {default_base} (reinstall pld_spark)")
            current = None
    return list(reversed(chain))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), base: str | Path | None = None) -> PLDConfig:
    """Load base + task YAML + overrides into a validated, frozen :class:`PLDConfig`.

    The files come from :func:`config_chain` (``extends:``, else the packaged base); the
    merged files and overrides, in order, are in ``cfg.merged_from``. Raises
    :class:`ConfigError` naming the key and file for unknown keys or wrong types, and naming
    the file for a bad ``extends:``.
    """
    path = Path(path)
    sources: dict[str, str] = {}
    merged: dict = {}
    files: list[str] = []
    for file, data in config_chain(path, base):
        _record_sources(data, str(file), sources)
        merged = deep_merge(merged, data)
        files.append(str(file))
    for item in overrides:
        keys, value = parse_override(item)
        node = merged
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
        sources[".".join(keys)] = f"--set {item}"
    text = yaml.safe_dump(merged, sort_keys=True)
    try:
        cfg = PLDConfig.model_validate({**merged, "source": str(path), "text": text,
                                        "merged_from": (*files, *(f"--set {o}" for o in overrides))})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            origin = _locate(sources, loc)
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown key '{key}' in {origin}")
            elif err["type"] == "missing":
                lines.append(f"missing key '{key}' (not set in {' or '.join(files)})")
            else:
                lines.append(f"bad value for '{key}' in {origin}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
    return cfg


def with_overrides(cfg: PLDConfig, overrides: dict[str, Any]) -> PLDConfig:
    """A copy of ``cfg`` with dotted-key overrides, validated again (used by tests and benches)."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for k in parts[:-1]:
            node = node.setdefault(k, {})
        node[parts[-1]] = value
    try:
        return PLDConfig.model_validate({**data, "source": cfg.source, "text": yaml.safe_dump(data, sort_keys=True),
                                         "merged_from": cfg.merged_from})
    except ValidationError as e:
        raise ConfigError(f"invalid override {overrides}: {e}") from None
