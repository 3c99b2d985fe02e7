"""Resolve ``extends:``: a client spec overlays a shared base spec.

Rules, in the order a reader needs them: maps merge key by key, lists replace, ``null`` removes.
Each value keeps the position it was written at, so an error in a merged spec points at the
file that wrote the bad value, and ``seamline show`` can say where each flow came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import Diagnostic, Severity
from engine.spec.yamlsource import JsonPath, LoadedYaml, Mark, ScalarInfo, load_yaml

__all__ = ["MergedSpec", "resolve_spec"]

MAX_DEPTH = 10


@dataclass(slots=True)
class MergedSpec:
    """A client spec with its bases folded in, and where every value came from."""

    file: str
    data: Any = None
    marks: dict[JsonPath, Mark] = field(default_factory=dict)
    key_marks: dict[JsonPath, Mark] = field(default_factory=dict)
    # every file that wrote a map entry, base first: where a flow was declared, then overlaid
    declared_in: dict[JsonPath, list[Mark]] = field(default_factory=dict)
    scalars: dict[JsonPath, ScalarInfo] = field(default_factory=dict)
    chain: list[str] = field(default_factory=list)  # the client file first, then its bases
    texts: dict[str, str] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # False when a file could not be read as YAML, or extends: failed: checking the rest would only
    # report what is missing because of that. YAML traps (a duplicate key) leave it True.
    complete: bool = True

    @property
    def ok(self) -> bool:
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)

    def mark(self, path: JsonPath) -> Mark:
        """The position of ``path``, or of its nearest ancestor that has one."""
        probe = path
        while probe:
            if probe in self.marks:
                return self.marks[probe]
            probe = probe[:-1]
        return self.marks.get((), Mark(self.file, 0, 0))

    def key_mark(self, path: JsonPath) -> Mark:
        return self.key_marks.get(path) or self.mark(path)

    def origin(self, path: JsonPath) -> str:
        return self.mark(path).file

    def declarations(self, path: JsonPath) -> list[Mark]:
        """Where the entry at ``path`` was written: the declaring file first, then each overlay."""
        return self.declared_in.get(path) or [self.key_mark(path)]


def resolve_spec(path: Path, display: str | None = None) -> MergedSpec:
    """Load ``path`` and every base it extends; positions stay with the file that wrote each value."""
    return _resolve(path, display or str(path), seen=[])


def _resolve(path: Path, display: str, seen: list[Path]) -> MergedSpec:
    loaded = load_yaml(path, display)
    merged = _from_loaded(loaded)
    if loaded.data is None:
        merged.complete = False
        return merged
    if not isinstance(loaded.data, dict):
        merged.complete = False
        start = loaded.marks.get((), Mark(display, 1, 1))
        merged.diagnostics.append(
            Diagnostic(
                Severity.ERROR,
                f"a spec is a map of keys (seamline:, client:, flows: ...), not {_kind_of(loaded.data)}",
                display,
                start.line,
                start.column,
                code="shape",
            )
        )
        return merged
    base_ref = loaded.data.get("extends")
    if base_ref is None:
        return merged
    where = loaded.marks.get(("extends",), Mark(display, 1, 1))
    if not isinstance(base_ref, str) or not base_ref.strip():
        merged.diagnostics.append(_at(where, "extends: must be the path of a base spec file, relative to this file"))
        merged.complete = False
        return merged
    base_path = (path.parent / base_ref).resolve()
    base_display = _display_path(base_path, display, base_ref)
    chain = [*seen, path.resolve()]
    if base_path in chain:
        cycle = " -> ".join(p.name for p in [*chain, base_path])
        merged.diagnostics.append(_at(where, f"extends: forms a cycle ({cycle})"))
        merged.complete = False
        return merged
    if len(chain) > MAX_DEPTH:
        merged.diagnostics.append(_at(where, f"extends: chain is deeper than {MAX_DEPTH} files"))
        merged.complete = False
        return merged
    if not base_path.is_file():
        merged.diagnostics.append(
            _at(
                where,
                f"extends: base spec '{base_ref}' not found (looked for {base_display})",
                hint="paths in extends: are relative to the file that contains them",
            )
        )
        merged.complete = False
        return merged
    base = _resolve(base_path, base_display, chain)
    if not base.complete or not isinstance(base.data, dict):
        base.diagnostics.extend(merged.diagnostics)
        base.file, base.chain = merged.file, [display, *base.chain]
        base.complete = False
        return base
    return _overlay(base, merged)


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    text = str(value)
    return f"the text {text[:37] + '...' if len(text) > 40 else text!r}"


def _display_path(target: Path, display: str, ref: str) -> str:
    """Show a base's path the way the user wrote the client's (relative stays relative)."""
    if Path(display).is_absolute():
        return str(target)
    joined = Path(display).parent / ref
    parts: list[str] = []
    for part in joined.parts:
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return str(Path(*parts)) if parts else str(target)


def _at(mark: Mark, message: str, hint: str = "") -> Diagnostic:
    return Diagnostic(
        Severity.ERROR, message, mark.file, mark.line, mark.column, path="extends", code="extends", hint=hint
    )


def _from_loaded(loaded: LoadedYaml) -> MergedSpec:
    return MergedSpec(
        file=loaded.file,
        data=loaded.data,
        marks=dict(loaded.marks),
        key_marks=dict(loaded.key_marks),
        scalars=dict(loaded.scalars),
        chain=[loaded.file],
        texts={loaded.file: loaded.text},
        diagnostics=list(loaded.diagnostics),
    )


def _overlay(base: MergedSpec, over: MergedSpec) -> MergedSpec:
    result = MergedSpec(
        file=over.file,
        chain=[*over.chain, *base.chain],
        texts={**base.texts, **over.texts},
        diagnostics=[*base.diagnostics, *over.diagnostics],
    )
    result.data = _merge_into(result, base, over, base.data, over.data, ())
    return result


def _copy_positions(dst: MergedSpec, src: MergedSpec, prefix: JsonPath) -> None:
    n = len(prefix)
    for table_name in ("marks", "key_marks", "scalars"):
        src_table = getattr(src, table_name)
        dst_table = getattr(dst, table_name)
        for path, value in src_table.items():
            if path[:n] == prefix:
                dst_table[path] = value


def _merge_into(dst: MergedSpec, base: MergedSpec, over: MergedSpec, b: Any, o: Any, path: JsonPath) -> Any:
    if not (isinstance(b, dict) and isinstance(o, dict)):
        _copy_positions(dst, over, path)
        return o
    dst.marks[path] = over.marks.get(path) or base.marks.get(path) or Mark(over.file, 0, 0)
    if path in over.key_marks:
        dst.key_marks[path] = over.key_marks[path]
    merged: dict[str, Any] = {}
    for key, value in b.items():
        if key in o:
            continue
        merged[key] = value
        _copy_positions(dst, base, (*path, key))
        if (*path, key) in base.declared_in:
            dst.declared_in[(*path, key)] = base.declared_in[(*path, key)]
    for key, value in o.items():
        child = (*path, key)
        if value is None:
            continue  # null removes what the base declared
        if key in b:
            merged[key] = _merge_into(dst, base, over, b[key], value, child)
            dst.declared_in[child] = [*base.declarations(child), over.key_mark(child)]
        else:
            merged[key] = value
            _copy_positions(dst, over, child)
    # keep the base's key order, then the overlay's new keys: the merged spec reads like the base
    ordered = {k: merged[k] for k in b if k in merged}
    ordered.update({k: v for k, v in merged.items() if k not in ordered})
    return ordered
