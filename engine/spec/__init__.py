"""Specs: load YAML with positions, resolve extends/overlays, validate, report."""

from engine.spec.model import SpecDocument
from engine.spec.overlay import MergedSpec, resolve_spec
from engine.spec.schema import spec_json_schema
from engine.spec.validate import SPEC_FILENAME, SpecReport, discover_specs, validate_spec

__all__ = [
    "SPEC_FILENAME",
    "MergedSpec",
    "SpecDocument",
    "SpecReport",
    "discover_specs",
    "resolve_spec",
    "spec_json_schema",
    "validate_spec",
]
