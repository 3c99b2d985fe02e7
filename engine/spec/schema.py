"""The spec's JSON Schema (draft 2020-12), generated from the models and the registered connectors.

Editors validate each file on its own, so the schema has two faces: a client file that
``extends:`` a base holds only its overlay — nothing in it is required — while a file without
``extends:`` must be a whole spec.
"""

from __future__ import annotations

import copy
from typing import Any

from engine.connector import Registry
from engine.spec.model import SpecDocument

__all__ = ["spec_json_schema"]

_DEFS = "#/$defs/"
_PARTIAL = "partial-"


def spec_json_schema(registry: Registry) -> dict[str, Any]:
    full = SpecDocument.model_json_schema(ref_template=_DEFS + "{model}")
    defs: dict[str, Any] = full.pop("$defs", {})
    branches = []
    for kind in registry:
        options = kind.options.model_json_schema(ref_template=_DEFS + "{model}")
        for name, sub in options.pop("$defs", {}).items():
            defs.setdefault(name, sub)
        options["properties"]["connector"] = {"const": kind.name, "description": kind.description}
        def_name = f"connector-{kind.name}"
        defs[def_name] = options
        when = {"required": ["connector"], "properties": {"connector": {"const": kind.name}}}
        branches.append({"if": when, "then": {"$ref": _DEFS + def_name}})
    full["properties"]["systems"]["additionalProperties"] = {
        "type": "object",
        "required": ["connector"],
        "properties": {"connector": {"enum": registry.names(), "description": "The connector kind."}},
        "allOf": branches,
    }
    title = full.pop("title", "seamline spec")
    comment = full.pop("$comment", "")
    defs["spec"] = full
    partial_defs = {_PARTIAL + name: _partial(body) for name, body in defs.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://seamline.dev/schemas/spec.schema.json",
        "title": title,
        "$comment": comment,
        "description": "A seamline integration spec. A file with 'extends:' is an overlay: every key is optional.",
        "type": "object",
        "if": {"required": ["extends"]},
        "then": {"$ref": _DEFS + _PARTIAL + "spec"},
        "else": {"$ref": _DEFS + "spec"},
        "$defs": {**defs, **partial_defs},
    }


def _partial(schema: Any) -> Any:
    """The same schema with nothing required: an overlay may set any part, or remove it with null."""
    if isinstance(schema, list):
        return [_partial(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "if":
            out[key] = copy.deepcopy(value)  # a condition, not a constraint: keep it exact
            continue
        if key in ("required", "minProperties", "maxProperties", "minItems"):
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith(_DEFS):
            out[key] = _DEFS + _PARTIAL + value[len(_DEFS) :]
        elif key == "properties" and isinstance(value, dict):
            # null removes a key in an overlay, so every property also accepts null
            out[key] = {name: {"anyOf": [_partial(sub), {"type": "null"}]} for name, sub in value.items()}
        else:
            out[key] = copy.deepcopy(_partial(value))
    return out
