"""Load YAML while remembering where every value came from.

PyYAML's node tree knows line and column of every value, but the usual ``safe_load`` throws
that away, and silently accepts duplicate keys. We compose the node tree ourselves, build plain
Python values from it, and keep a map from each value's path to its position, so every later
check (schema, references, JSONata, templates) can point at ``file:line:col``.

The YAML traps a spec author falls into are reported here, in words about the spec rather
than about YAML's grammar: tabs, duplicate keys, an unquoted ``{{ ... }}`` that YAML read as a
map, undefined aliases.

Spec files come from pull requests, and CI validates them, so a hostile file must cost little:
values that aliases produce (a "billion laughs" file expands ten characters per level into
millions of values) and nesting depth (PyYAML and our builder recurse per level) are bounded while
the file is composed, and refused as located errors before anything is built from them.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import Diagnostic, Severity

__all__ = [
    "JsonPath",
    "LoadedYaml",
    "Mark",
    "ScalarInfo",
    "format_path",
    "load_yaml",
    "load_yaml_text",
    "position_of",
    "safe_load_bounded",
    "value_places",
]

JsonPath = tuple[str | int, ...]

# A spec nests a dozen levels; each level costs a few Python frames here and in every later check,
# so the bound sits far below Python's recursion limit (1000) and far above any real spec.
MAX_DEPTH = 100
# Values that aliases may add, all aliases of a file together: a shared block reused in every flow
# is a few thousand; an alias bomb is millions.
MAX_ALIAS_VALUES = 100_000


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
    start_index: int = 0  # character index in its file where the scalar starts (at its quote or '|')
    end_index: int = 0  # just past its end


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
    before = data[: exc.start].decode("utf-8", errors="replace")
    return _error(
        file,
        *position_of(before, len(before)),
        f"byte 0x{data[exc.start]:02x} is not UTF-8 text; save the file as UTF-8",
        hint="an editor's 'Save with Encoding' (or iconv -f latin1 -t utf-8) converts it",
    )


def load_yaml_text(text: str, file: str) -> LoadedYaml:
    loaded = LoadedYaml(file=file, text=text)
    try:
        loader = _BoundedLoader(text)  # checks every character first: a ReaderError comes from here
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except _Refused as exc:
        loaded.diagnostics.append(_error(file, *position_of(text, exc.index), exc.message, hint=exc.hint))
        return loaded
    except yaml.MarkedYAMLError as exc:
        loaded.diagnostics.append(_unclosed_quote(exc, file, text) or _translate_yaml_error(exc, file, text))
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
        if text.strip():  # point at the first comment, where the author looks for the spec
            first = len(text) - len(text.lstrip())
            message = "file has only comments; a spec starts with 'seamline: 1'"
            loaded.diagnostics.append(_error(file, *position_of(text, first), message))
        else:
            loaded.diagnostics.append(_error(file, 0, 0, "file is empty; a spec starts with 'seamline: 1'"))
        return loaded
    builder = _Builder(loaded, yaml.SafeLoader(""))
    loaded.data = builder.build(node, ())
    return loaded


def safe_load_bounded(text: str) -> Any:
    """``yaml.safe_load`` with this module's bounds on nesting and aliases, for YAML that is data.

    A code table is YAML from the same pull request as the spec. A refusal is raised as PyYAML's
    own errors are, a ``yaml.MarkedYAMLError`` whose ``problem_mark`` is the offending character,
    so a caller that already translates those needs no other change.
    """
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        line, column = position_of(text, exc.index)
        mark = yaml.Mark("<text>", exc.index, line - 1, column - 1, text, exc.index)
        raise yaml.composer.ComposerError(None, None, exc.message, mark) from None
    finally:
        loader.dispose()


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@lru_cache(maxsize=16)
def _line_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in _LINE_BREAK.finditer(text))]


def position_of(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a 0-based character index.

    Lines break at '\\n', '\\r\\n' and '\\r', as editors (and Python's text files) count them; not
    at U+2028 or U+0085, which PyYAML's own marks also count.
    """
    index = max(0, min(index, len(text)))
    starts = _line_starts(text)
    line = bisect_right(starts, index)
    return line, index - starts[line - 1] + 1


_position = position_of
_ESCAPE_LENGTH = {"x": 4, "u": 6, "U": 10}


def value_places(text: str, info: ScalarInfo, value: str) -> list[int] | None:
    """For each character of ``value`` (a scalar as YAML read it), its character index in ``text``.

    YAML changes a scalar on the way in: it drops quotes, indentation and the '|' header, folds
    line breaks into spaces and decodes escapes ('\\n', "''"). Walking the source beside the value
    undoes that: each character of the value is found where it was written, so an error at offset
    *i* of a multi-line or quoted transform points at the right line and column. None when the two
    cannot be aligned (then callers fall back to the scalar's start).
    """
    end = info.end_index
    if end <= info.start_index:
        return None
    source = text[:end]
    block = info.style in ("|", ">")
    j = info.start_index
    indent = 0
    if block:
        j = source.find("\n", j) + 1  # the content starts on the line after the '|' header
        if j == 0:
            return None
        content = re.search(r"^( *)\S", source[j:], re.M)
        indent = len(content.group(1)) if content else 0

    def after_break(k: int) -> int:
        """Past the indentation YAML drops at the start of a line: the block's, or all of it in a flow scalar."""
        skipped = 0
        while k < end and source[k] in (" " if block else " \t") and (not block or skipped < indent):
            k += 1
            skipped += 1
        return k

    def past_break(k: int) -> int:
        """Past the line break at ``k``, or at ``k + 1`` after an escaping backslash."""
        k += source[k] == "\\"
        return k + 2 if source.startswith("\r\n", k) else k + 1

    if block:
        j = after_break(j)
    places: list[int] = []
    for char in value:
        while True:
            if j >= end:
                return None
            here = source[j]
            if info.style == '"' and here == "\\":
                nxt = source[j + 1 : j + 2]
                if nxt in ("\n", "\r"):  # an escaped line break joins the lines
                    j = after_break(past_break(j))
                    continue
                places.append(j)
                j += _ESCAPE_LENGTH.get(nxt, 2)
                break
            if here == char or (here in "\r\n" and char in " \n"):  # the same, or a folded line break
                places.append(j)
                j = after_break(past_break(j)) if here in "\r\n" else j + 1
                break
            if here in "\r\n":  # a line break YAML dropped (folded into a neighbour)
                j = after_break(past_break(j))
                continue
            if here in " \t\"'":  # trailing spaces, quotes
                j += 1
                continue
            return None
    return places


def _error(file: str, line: int, column: int, message: str, path: str = "", hint: str = "") -> Diagnostic:
    return Diagnostic(Severity.ERROR, message, file, line, column, path=path, code="yaml", hint=hint)


def _unclosed_quote(exc: yaml.MarkedYAMLError, file: str, text: str) -> Diagnostic | None:
    """A quote left open swallows the lines after it, and YAML fails only where that value ends.

    When the error is on the line where a quoted value spanning several lines ends, the missing
    closing quote is the likely mistake: point at the quote that opened it.
    """
    if exc.problem_mark is None:
        return None
    error_line = position_of(text, exc.problem_mark.index)[0]
    suspect: yaml.ScalarToken | None = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if token.start_mark.index > exc.problem_mark.index:
                break
            if isinstance(token, yaml.ScalarToken) and token.style in ('"', "'"):
                suspect = token
    except yaml.YAMLError:
        pass
    if suspect is None:
        return None
    start = position_of(text, suspect.start_mark.index)
    end = position_of(text, suspect.end_mark.index)
    if start[0] == end[0] or end[0] != error_line:
        return None
    quote = suspect.style
    return _error(
        file,
        *start,
        f"this {quote} is not closed on its line: YAML reads the value on to line {end[0]}, where it fails; "
        f"add the closing {quote}",
        hint=f"a quoted value runs across lines until the next {quote}",
    )


def _translate_yaml_error(exc: yaml.MarkedYAMLError, file: str, text: str) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    line, column = _position(text, mark.index) if mark else (1, 1)
    problem = " ".join((exc.problem or "").split())
    context = " ".join((exc.context or "").split())
    opened_at = _position(text, exc.context_mark.index) if exc.context_mark else None
    hint = ""
    lines = text.splitlines()
    line_text = lines[line - 1] if mark and 0 < line <= len(lines) else ""
    if "'\\t'" in problem or ("\t" in line_text and "cannot start any token" in problem):
        message = "tab character in indentation; YAML indents with spaces only"
        hint = "replace the tab with spaces (configure your editor to insert spaces in YAML files)"
        tab_at = line_text.find("\t")
        if tab_at >= 0:
            column = tab_at + 1
    elif "undefined alias" in problem:
        alias = problem.split("alias", 1)[1].strip().strip("'\"")
        message = f"alias *{alias} refers to an anchor that is not defined above it"
        hint = f"define '&{alias}' on a value earlier in this file, or remove the '*'"
    elif "duplicate anchor" in context and opened_at:
        anchor = context.split("anchor", 1)[1].split(";")[0].strip().strip("'\"")
        message = f"anchor &{anchor} is defined twice (first at line {opened_at[0]}); rename one of them"
    elif "expected a single document" in context or "but found another document" in problem:
        message = "more than one YAML document ('---') in this file; a spec file holds exactly one"
    elif "mapping values are not allowed" in problem:
        message = "a ':' here starts a map where a value was expected; quote the value if it contains ': '"
        hint = 'for example  description: "Note: see ERP"'
    elif context.startswith(("while parsing a flow mapping", "while parsing a flow sequence")) and opened_at:
        bracket, closer = ("{", "}") if "mapping" in context else ("[", "]")
        found = problem.rsplit("but got", 1)[-1].strip()
        where = "the end of the file" if found == "'<stream end>'" else f"{found} at line {line}, column {column}"
        message = f"'{bracket}' is not closed: expected ',' or '{closer}' but found {where}"
        line, column = opened_at
        hint = f"close it with '{closer}' on the same line, or quote a value that contains {bracket} or ','"
    elif context.startswith("while scanning a quoted scalar") and opened_at:
        message = "this quoted value is never closed; add the closing quote"
        line, column = opened_at
    elif context.startswith(("while parsing a block mapping", "while parsing a block collection")) and opened_at:
        kind = "map" if "mapping" in context else "list"
        found = problem.rsplit("but found", 1)[-1].strip()
        found = {"'?'": "a key", "'-'": "a list item", "'<block sequence start>'": "a list"}.get(found, found)
        message = (
            f"{found} here does not fit the {kind} that starts at line {opened_at[0]}, column "
            f"{opened_at[1]}; check the indentation (a list's items start with '- ', a map's entries "
            "with 'key:')"
        )
    elif "found character '%'" in problem or "found character '@'" in problem or "found character '`'" in problem:
        message = f"YAML cannot start a plain value with this character ({problem}); quote the value"
    else:
        message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return _error(file, line, column, message, hint=hint)


class _Refused(Exception):
    """A file refused while it is composed (too deep, too many aliased values), at a character index."""

    def __init__(self, index: int, message: str, hint: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message
        self.hint = hint


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting past MAX_DEPTH and aliases past MAX_ALIAS_VALUES.

    PyYAML composes an alias as a second reference to its anchor's node, so the node tree stays
    small; what explodes is every walk over it (ours builds one value per path). Each node's size
    with its aliases expanded is recorded when the node is complete, so counting what an alias adds
    costs one lookup, and the file is refused at the alias that crosses the bound, before any
    value is built. An alias to a node still being composed (``&a [*a]``) would make a cycle.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._text = stream
        self._depth = 0
        self._aliased = 0  # values aliases have added so far
        self._sizes: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            return self._compose_alias(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(
                self._next_event().start_mark.index,
                f"values nested more than {MAX_DEPTH} levels deep; a spec is never this deep, so the file "
                "is refused here",
                "flatten the structure (check the brackets and indentation, or the tool that wrote the file)",
            )
        node = super().compose_node(parent, index)
        assert node is not None  # PyYAML composes a node for every event but an alias
        self._depth -= 1
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in _children(node))
        return node

    def _compose_alias(self, parent: Node | None, index: int) -> Node | None:
        event = self._next_event()
        target = self.anchors.get(event.anchor)
        if target is not None:  # an undefined alias is PyYAML's error, translated later
            size = self._sizes.get(id(target))
            if size is None:
                line = position_of(self._text, target.start_mark.index)[0]
                raise _Refused(
                    event.start_mark.index,
                    f"alias *{event.anchor} is used inside the value it names (&{event.anchor}, line {line}); "
                    "a value cannot contain itself",
                    "copy the values you need instead of the alias",
                )
            self._aliased += size
            if self._aliased > MAX_ALIAS_VALUES:
                raise _Refused(
                    event.start_mark.index,
                    f"aliases expand to more than {MAX_ALIAS_VALUES:,} values by this *{event.anchor} (each alias "
                    "copies its anchor's whole value, and aliases inside anchors multiply); the file is refused",
                    "write the shared values once and alias them a few times, not aliases of aliases",
                )
        return super().compose_node(parent, index)

    def _next_event(self) -> Any:
        return self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML's stubs leave the parser untyped


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class _Builder:
    """Turn a composed node tree into plain values, recording positions and YAML traps."""

    def __init__(self, loaded: LoadedYaml, constructor: yaml.SafeLoader) -> None:
        self.loaded = loaded
        self.constructor = constructor

    def mark(self, node: Node) -> Mark:
        # From the character index, counting lines at '\n' as editors do; PyYAML's own line also
        # breaks at U+0085, U+2028 and U+2029, so it can disagree with the editor and with JSONata's.
        line, column = _position(self.loaded.text, node.start_mark.index)
        return Mark(self.loaded.file, line, column)

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
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            # A tag YAML cannot honour ('!!int x', '!custom x') or a date that does not exist ('2024-13-45').
            m = self.mark(node)
            self.loaded.diagnostics.append(
                _error(
                    m.file, m.line, m.column, self._unreadable(node, exc), format_path(path), hint=self._tag_hint(node)
                )
            )
            return node.value
        resolved = type(value).__name__ if value is not None else "null"
        self.loaded.scalars[path] = ScalarInfo(
            node.style, self.mark(node), node.value, resolved, node.start_mark.index, node.end_mark.index
        )
        return value

    def build_mapping(self, node: MappingNode, path: JsonPath) -> Any:
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
            return template  # what the author meant, so the checks after this one still run
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
    def _unreadable(node: ScalarNode, exc: Exception) -> str:
        if node.tag == "tag:yaml.org,2002:timestamp":
            detail = f" ({exc})" if isinstance(exc, ValueError) else ""
            return f"{node.value!r} looks like a date but is not one{detail}; quote it if it is text"
        if not node.tag.startswith("tag:yaml.org,2002:"):
            return f"unknown YAML tag '{node.tag}' on {node.value!r}; specs use plain values, remove the tag"
        kind = node.tag.removeprefix("tag:yaml.org,2002:")
        return f"{node.value!r} cannot be read as !!{kind}"

    @staticmethod
    def _tag_hint(node: ScalarNode) -> str:
        return "" if node.tag == "tag:yaml.org,2002:timestamp" else f"write the value without the tag: {node.value}"

    @staticmethod
    def _is_unquoted_template(node: MappingNode) -> bool:
        # '{{ env.X }}' composes as a flow map whose only key is itself a flow map.
        return any(isinstance(k, MappingNode) and k.flow_style for k, _ in node.value)

    def _source_of(self, node: Node) -> str:
        start, end = node.start_mark.index, node.end_mark.index
        return " ".join(self.loaded.text[start:end].split())
