"""Print validation results: as text for people, JSON for tools, annotations for GitHub Actions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml

from engine.errors import Diagnostic, Severity
from engine.spec.model import SpecDocument
from engine.spec.overlay import MergedSpec
from engine.spec.validate import SpecReport

__all__ = ["Format", "render_effective_spec", "render_reports"]

Format = Literal["text", "json", "github"]


def render_reports(reports: Sequence[SpecReport], fmt: Format, elapsed: float) -> str:
    if fmt == "json":
        return _json(reports, elapsed)
    if fmt == "github":
        return _github(reports)
    return _text(reports, elapsed)


def _summary(reports: Sequence[SpecReport]) -> dict[str, int]:
    totals = {"specs": len(reports), "invalid": sum(not r.ok for r in reports)}
    for severity in Severity:
        totals[f"{severity.value}s"] = sum(r.counts()[severity.value] for r in reports)
    return totals


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _text(reports: Sequence[SpecReport], elapsed: float) -> str:
    lines: list[str] = []
    for report in reports:
        lines.extend(d.render() for d in report.diagnostics)
    totals = _summary(reports)
    status = "invalid" if totals["invalid"] else "valid"
    lines.append(
        f"{status}: {_plural(totals['specs'], 'spec')} checked, {_plural(totals['errors'], 'error')}, "
        f"{_plural(totals['warnings'], 'warning')}, {_plural(totals['notes'], 'note')} "
        f"({elapsed * 1000:.0f} ms)"
    )
    return "\n".join(lines)


def _diagnostic_json(d: Diagnostic) -> dict[str, Any]:
    return {
        "severity": d.severity.value,
        "file": d.file,
        "line": d.line,
        "column": d.column,
        "path": d.path,
        "code": d.code,
        "message": d.message,
        "hint": d.hint,
    }


def _json(reports: Sequence[SpecReport], elapsed: float) -> str:
    payload = {
        "valid": all(r.ok for r in reports),
        "summary": {**_summary(reports), "elapsed_ms": round(elapsed * 1000, 1)},
        "specs": [
            {"file": r.file, "valid": r.ok, "diagnostics": [_diagnostic_json(d) for d in r.diagnostics]}
            for r in reports
        ],
    }
    return json.dumps(payload, indent=2)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _github(reports: Sequence[SpecReport]) -> str:
    level = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.NOTE: "notice"}
    lines = []
    for report in reports:
        for d in report.diagnostics:
            props = [f"file={_escape_property(d.file)}"]
            if d.line:
                props += [f"line={d.line}", f"col={d.column}"]
            props.append(f"title={_escape_property('seamline ' + (d.code or 'validate'))}")
            message = d.message + (f" [{d.path}]" if d.path else "") + (f"\nhint: {d.hint}" if d.hint else "")
            lines.append(f"::{level[d.severity]} {','.join(props)}::{_escape_data(message)}")
    totals = _summary(reports)
    lines.append(
        f"seamline validate: {totals['specs']} spec(s), {totals['errors']} error(s), {totals['warnings']} warning(s)"
    )
    return "\n".join(lines)


def render_effective_spec(
    merged: MergedSpec,
    fmt: Literal["yaml", "json"] = "yaml",
    ids: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """The merged spec, with the file each system, lookup and flow was written in.

    ``ids``: per flow, its record model's ids in words (business key, dedupe id, version, group).
    """
    data = merged.data if isinstance(merged.data, dict) else {}
    ids = ids or {}
    if fmt == "json":
        origins = {
            section: {name: _origin_text(merged, (section, name)) for name in data.get(section) or {}}
            for section in ("systems", "lookups", "flows")
        }
        body = {"spec": data, "origins": origins, "chain": merged.chain, "ids": ids}
        return json.dumps(body, indent=2, default=str)
    out = [f"# effective spec of {merged.file}", "# built from: " + " <- ".join(merged.chain)]
    order = list(SpecDocument.model_fields)
    for key, value in sorted(data.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if key in ("systems", "lookups", "flows") and isinstance(value, dict):
            out.append(f"{key}:")
            for name, body in value.items():
                block = yaml.safe_dump({name: body}, sort_keys=False, allow_unicode=True, width=100)
                first, _, rest = block.partition("\n")
                out.append(f"  {first}  # from {_origin_text(merged, (key, name))}")
                if key == "flows" and name in ids:
                    out.extend(f"    # {what}: {text}" for what, text in ids[name].items())
                out.extend("  " + line for line in rest.splitlines())
        else:
            block = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True, width=100).rstrip()
            last = merged.key_mark((key,))
            out.append(block + (f"  # from {last.file}:{last.line}" if "\n" not in block else ""))
    return "\n".join(out)


def _origin_text(merged: MergedSpec, path: tuple[str, ...]) -> str:
    first, *overlays = merged.declarations(path)
    text = f"{first.file}:{first.line}"
    if overlays:
        text += ", overlaid by " + ", ".join(f"{m.file}:{m.line}" for m in overlays)
    return text
