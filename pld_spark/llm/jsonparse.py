"""JSON answers from model text: parse, extract from prose, validate against a schema.

Models (and servers without constrained decoding) wrap JSON in code fences or sentences.
:func:`parse_json_answer` tries the whole text, then a fenced block, then the first
balanced ``{...}`` object, and validates it with :func:`validate` (required keys, simple
property types, enums). Failures raise :class:`JSONAnswerError` with a message fit to show
the model in a repair request.
"""
from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}


class JSONAnswerError(ValueError):
    """The text holds no valid JSON object for the schema (the message says why)."""


def first_json_object(text: str) -> str | None:
    """The first balanced ``{...}`` substring (string-aware), or ``None``."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
                continue
            if ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    candidate = text[start:i + 1]
                    try:
                        json.loads(candidate)
                        return candidate
                    except ValueError:
                        break
        start = text.find("{", start + 1)
    return None


def extract_json(text: str) -> dict[str, Any]:
    """Parse a JSON object out of ``text`` (whole text, fenced block, or first ``{...}``)."""
    if text is None or not text.strip():
        raise JSONAnswerError("the answer is empty; expected a JSON object")
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    found = first_json_object(text)
    if found is not None:
        obj = json.loads(found)
        if isinstance(obj, dict):
            return obj
    raise JSONAnswerError("the answer contains no JSON object")


def _type_ok(value: Any, expected: str | list[str]) -> bool:
    names = expected if isinstance(expected, list) else [expected]
    for n in names:
        types = _TYPES.get(n)
        if types is None:
            return True  # unknown type keyword: do not reject
        if isinstance(value, bool) and n in ("number", "integer"):
            continue
        if isinstance(value, types):
            return True
    return False


def validate(obj: dict[str, Any], schema: dict[str, Any] | None) -> None:
    """Check required keys, property types and enums (a pragmatic subset of JSON Schema)."""
    if not schema:
        return
    required = list(schema.get("required") or [])
    missing = [k for k in required if k not in obj]
    if missing:
        raise JSONAnswerError(f"missing required keys {missing}; the object must have keys {required}")
    props = schema.get("properties") or {}
    for k, sub in props.items():
        if k not in obj or not isinstance(sub, dict):
            continue
        v = obj[k]
        if "type" in sub and not _type_ok(v, sub["type"]):
            raise JSONAnswerError(f"key '{k}' must be of type {sub['type']}, got {type(v).__name__}")
        if "enum" in sub and v not in sub["enum"]:
            raise JSONAnswerError(f"key '{k}' must be one of {sub['enum']}, got {v!r}")
        if sub.get("type") == "string" and sub.get("minLength") and isinstance(v, str) \
                and len(v.strip()) < int(sub["minLength"]):
            raise JSONAnswerError(f"key '{k}' must be a non-empty string")


def parse_json_answer(text: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    """Extract and validate; raises :class:`JSONAnswerError`."""
    obj = extract_json(text)
    validate(obj, schema)
    return obj


def repair_message(error: str, schema: dict[str, Any] | None) -> str:
    """The user turn of the one repair attempt."""
    keys = list((schema or {}).get("required") or (schema or {}).get("properties", {}).keys())
    shape = ", ".join(f'"{k}": ...' for k in keys) if keys else ""
    return (f"Your previous answer could not be used: {error}. Reply with only one JSON object"
            + (f" of the form {{{shape}}}" if shape else "") + ", and nothing else.")
