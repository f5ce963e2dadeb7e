"""The base of every configuration model (:mod:`pld_spark.config_sections`)."""
from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator

#: YAML 1.1 (PyYAML) reads these words as booleans, in files and in ``--set`` values alike
_YAML_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}


class _Model(BaseModel):
    """Frozen; unknown keys are an error. A field whose values are string literals gets back the
    word YAML turned into a boolean: ``select.mode: off`` arrives as ``False`` and means ``"off"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _yaml_bool_words(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = None
        for name, f in cls.model_fields.items():
            v = data.get(name)
            if not isinstance(v, bool) or get_origin(f.annotation) is not Literal:
                continue
            word = next((a for a in get_args(f.annotation) if isinstance(a, str) and a in _YAML_BOOL_WORDS[v]), None)
            if word is not None:
                out = out if out is not None else dict(data)
                out[name] = word
        return data if out is None else out
