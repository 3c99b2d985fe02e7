"""Load YAML while remembering where every value came from.

PyYAML's node tree knows line and column of every value, but the usual ``safe_load`` throws
that away, and silently accepts duplicate keys. We compose the node tree ourselves, build plain
Python values from it, and keep a map from each value's path to its position, so every later
check (schema, references, JSONata, templates) can point at ``file:line:col``.

The YAML traps a spec author falls into are reported here, in words about the spec rather
than about YAML's grammar: tabs, duplicate keys, an unquoted ``{{ ... }}`` that YAML read as a
map, undefined aliases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import Diagnostic, Severity

__all__ = ["JsonPath", "LoadedYaml", "Mark", "ScalarInfo", "format_path", "load_yaml", "load_yaml_text"]

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    """A 1-based position in a file."""

    file: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class ScalarInfo:
    """How a scalar was written, so positions inside it (a JSONata error) map back to the file.

    ``style`` is PyYAML's: None for plain, ``'`` or ``"`` quoted, ``|`` literal, ``>`` folded.
    ``tag_resolved`` tells what YAML turned an unquoted scalar into (``int``, ``bool``...).
    """

    style: str | None
    start: Mark
    raw: str
    resolved: str


@dataclass(slots=True)
class LoadedYaml:
    file: str
    text: str
    data: Any = None
    marks: dict[JsonPath, Mark] = field(default_factory=dict)
    key_marks: dict[JsonPath, Mark] = field(default_factory=dict)  # where the key of each map entry is
    scalars: dict[JsonPath, ScalarInfo] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)


def format_path(path: JsonPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def load_yaml(path: Path, display: str | None = None) -> LoadedYaml:
    name = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        loaded = LoadedYaml(file=name, text="")
        loaded.diagnostics.append(_error(name, 0, 0, f"cannot read file: {exc.strerror or exc}"))
        return loaded
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        loaded = LoadedYaml(file=name, text="")
        loaded.diagnostics.append(_not_utf8(name, exc))
        return loaded
    return load_yaml_text(text, name)


def _not_utf8(file: str, exc: UnicodeDecodeError) -> Diagnostic:
    """Where the first byte that is not UTF-8 is, as an editor counts lines and columns."""
    data: bytes = exc.object  # without the BOM, as ``start`` counts
    line_start = data.rfind(b"\n", 0, exc.start) + 1
    line = data.count(b"\n", 0, exc.start) + 1
    column = len(data[line_start : exc.start].decode("utf-8", errors="replace")) + 1
    return _error(
        file,
        line,
        column,
        f"byte 0x{data[exc.start]:02x} is not UTF-8 text; save the file as UTF-8",
        hint="an editor's 'Save with Encoding' (or iconv -f latin1 -t utf-8) converts it",
    )


def load_yaml_text(text: str, file: str) -> LoadedYaml:
    loaded = LoadedYaml(file=file, text=text)
    try:
        loader = yaml.SafeLoader(text)  # checks every character first: a ReaderError comes from here
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        loaded.diagnostics.append(_translate_yaml_error(exc, file, text))
        return loaded
    except yaml.reader.ReaderError as exc:
        line, column = _position(text, exc.position)
        message = f"character U+{exc.character:04X} is not allowed in YAML; remove it"
        loaded.diagnostics.append(_error(file, line, column, message))
        return loaded
    except yaml.YAMLError as exc:  # unmarked: rare, but never a traceback
        loaded.diagnostics.append(_error(file, 1, 1, f"YAML error: {' '.join(str(exc).split())}"))
        return loaded
    if node is None:
        what = "has only comments" if text.strip() else "is empty"
        loaded.diagnostics.append(_error(file, 0, 0, f"file {what}; a spec starts with 'seamline: 1'"))
        return loaded
    builder = _Builder(loaded, yaml.SafeLoader(""))
    loaded.data = builder.build(node, ())
    return loaded


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a 0-based character index."""
    index = max(0, min(index, len(text)))
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def _error(file: str, line: int, column: int, message: str, path: str = "", hint: str = "") -> Diagnostic:
    return Diagnostic(Severity.ERROR, message, file, line, column, path=path, code="yaml", hint=hint)


def _translate_yaml_error(exc: yaml.MarkedYAMLError, file: str, text: str) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 0
    column = mark.column + 1 if mark else 0
    problem = (exc.problem or "").strip()
    context = (exc.context or "").strip()
    hint = ""
    line_text = text.splitlines()[line - 1] if mark and 0 < line <= len(text.splitlines()) else ""
    if "'\\t'" in problem or ("\t" in line_text and "cannot start any token" in problem):
        message = "tab character in indentation; YAML indents with spaces only"
        hint = "replace the tab with spaces (configure your editor to insert spaces in YAML files)"
        tab_at = line_text.find("\t")
        if tab_at >= 0:
            column = tab_at + 1
    elif "undefined alias" in problem:
        alias = problem.split("alias", 1)[1].strip() if "alias" in problem else ""
        message = f"alias *{alias} refers to an anchor that is not defined above it"
        hint = f"define '&{alias}' on a value earlier in this file, or remove the '*'"
    elif "expected a single document" in context or "but found another document" in problem:
        message = "more than one YAML document ('---') in this file; a spec file holds exactly one"
    elif "mapping values are not allowed" in problem:
        message = "a ':' here starts a map where a value was expected; quote the value if it contains ': '"
        hint = 'for example  description: "Note: see ERP"'
    elif "found character '%'" in problem or "found character '@'" in problem or "found character '`'" in problem:
        message = f"YAML cannot start a plain value with this character ({problem}); quote the value"
    else:
        message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return _error(file, line, column, message, hint=hint)


class _Builder:
    """Turn a composed node tree into plain values, recording positions and YAML traps."""

    def __init__(self, loaded: LoadedYaml, constructor: yaml.SafeLoader) -> None:
        self.loaded = loaded
        self.constructor = constructor

    def mark(self, node: Node) -> Mark:
        return Mark(self.loaded.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: Node, path: JsonPath) -> Any:
        self.loaded.marks[path] = self.mark(node)
        if isinstance(node, MappingNode):
            return self.build_mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        return self.build_scalar(node, path)

    def build_scalar(self, node: ScalarNode, path: JsonPath) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            m = self.mark(node)
            self.loaded.diagnostics.append(
                _error(m.file, m.line, m.column, f"cannot read value {node.value!r}: {exc}", format_path(path))
            )
            return node.value
        resolved = type(value).__name__ if value is not None else "null"
        self.loaded.scalars[path] = ScalarInfo(node.style, self.mark(node), node.value, resolved)
        return value

    def build_mapping(self, node: MappingNode, path: JsonPath) -> dict[str, Any]:
        try:
            self.constructor.flatten_mapping(node)  # resolves '<<' merge keys
        except yaml.MarkedYAMLError as exc:
            self.loaded.diagnostics.append(_translate_yaml_error(exc, self.loaded.file, self.loaded.text))
        if node.flow_style and self._is_unquoted_template(node):
            template = self._source_of(node)
            m = self.mark(node)
            self.loaded.diagnostics.append(
                _error(
                    m.file,
                    m.line,
                    m.column,
                    f"YAML read the unquoted template {template} as a map; quote it",
                    format_path(path),
                    hint=f"write  '{template}'  (a value that starts with '{{' must be quoted)",
                )
            )
            return {}
        result: dict[str, Any] = {}
        first_seen: dict[str, Mark] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                m = self.mark(key_node)
                self.loaded.diagnostics.append(
                    _error(
                        m.file,
                        m.line,
                        m.column,
                        "a key must be a plain name, not a list or map",
                        format_path(path),
                    )
                )
                continue
            # The raw text, not the resolved value: 'on:' stays "on", '1000:' stays "1000".
            key = key_node.value
            key_mark = self.mark(key_node)
            if key in first_seen:
                prev = first_seen[key]
                self.loaded.diagnostics.append(
                    _error(
                        key_mark.file,
                        key_mark.line,
                        key_mark.column,
                        f"duplicate key '{key}' (first defined at line {prev.line}); "
                        "YAML would silently keep only the last one",
                        format_path((*path, key)),
                        hint="remove one of them, or merge their contents",
                    )
                )
                continue
            first_seen[key] = key_mark
            result[key] = self.build(value_node, (*path, key))
            self.loaded.key_marks[(*path, key)] = key_mark
        return result

    @staticmethod
    def _is_unquoted_template(node: MappingNode) -> bool:
        # '{{ env.X }}' composes as a flow map whose only key is itself a flow map.
        return any(isinstance(k, MappingNode) and k.flow_style for k, _ in node.value)

    def _source_of(self, node: Node) -> str:
        start, end = node.start_mark.index, node.end_mark.index
        return " ".join(self.loaded.text[start:end].split())
