"""Reading and writing the file formats of a drop: CSV, JSON, JSONL, XML (SAP IDoc XML is in :mod:`.idoc`).

Reading turns a file's bytes into :class:`Entry` values, one per record, in file order: a record's
data, or the reason it is malformed (a CSV row with a bad number). A file that cannot be read at all
raises :class:`Unreadable` with the line and column when known. Writing turns one record into bytes
or raises :class:`Unwritable` saying why the drop cannot hold it.

XML is parsed with the standard library's expat, refusing any DTD: without a DTD no entity can be
declared, so neither entity expansion ("billion laughs") nor external entities (local files, URLs)
can happen. XML becomes JSONata-friendly data the way golden inputs are read (``engine.testing``):
children by local name (repeated ones as lists), attributes as ``@name``, text beside children as
``#text``, namespaces dropped.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final
from xml.parsers import expat

if TYPE_CHECKING:
    from connectors.file import Drop

__all__ = [
    "Entry",
    "Unreadable",
    "Unwritable",
    "XmlNode",
    "decode",
    "node_data",
    "parse_number",
    "parse_xml",
    "read_entries",
    "render_record",
    "xml_bytes",
]

MAX_XML_DEPTH: Final = 256  # deeper nesting is an attack or a bug, not an ERP export
_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its BOM starts the same way
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# A number as German-locale SAP writes it: 1.234,50 / 12,5 / 1234 / SAP's trailing minus 1.234,50-
_COMMA_NUMBER = re.compile(r"^(?P<sign>[+-]?)(?P<int>\d{1,3}(?:\.\d{3})+|\d+)(?:,(?P<frac>\d+))?(?P<trail>-?)$")
_POINT_NUMBER = re.compile(r"^(?P<sign>[+-]?)(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?(?P<trail>-?)$")
_XML_DECLARED_ENCODING = re.compile(rb"^\s*<\?xml[^>]*\bencoding\s*=", re.IGNORECASE)
_XML_NAME = re.compile(r"^[^\W\d][\w.-]*$")
_XML_INVALID_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class Entry:
    """One record found in a file: its data, or (``error`` set) why it cannot be used.

    ``index`` counts every record of the file, good or bad, in file order: with the file's content
    hash it makes the record's stable id. ``line`` is where it starts (1-based; 0 when unknown).
    ``raw`` is the record as found, kept with a dead letter so a person can see and fix it.
    """

    index: int
    line: int
    data: Any = None
    error: str = ""
    raw: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class Unreadable(Exception):
    """The whole file cannot be read; ``line`` and ``column`` are 1-based, 0 when unknown."""

    def __init__(self, message: str, *, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.line and self.column:
            return f"line {self.line}, column {self.column}: {self.message}"
        if self.line:
            return f"line {self.line}: {self.message}"
        return self.message


class Unwritable(ValueError):
    """A record the drop's format or encoding cannot hold."""


# -- bytes to text ----------------------------------------------------------------------------------


def _bom_codec(content: bytes) -> str | None:
    for bom, codec in _BOMS:
        if content.startswith(bom):
            return codec
    return None


def decode(content: bytes, encoding: str) -> str:
    """The file's text: a byte-order mark wins over ``encoding``; Unreadable names the first bad byte."""
    label = _bom_codec(content) or encoding
    # a UTF-8 BOM is dropped even when the option says plain utf-8
    codec = "utf-8-sig" if codecs.lookup(label).name == "utf-8" else label
    try:
        return content.decode(codec)
    except UnicodeDecodeError as exc:
        bad = content[exc.start : exc.start + 1].hex()
        hint = (
            "; if the ERP writes Windows-1252 (as German SAP GUI downloads often do), set encoding: cp1252 on the drop"
            if codecs.lookup(label).name == "utf-8"
            else ""
        )
        if codecs.lookup(codec).name.startswith(("utf-16", "utf-32")):
            raise Unreadable(f"byte 0x{bad} at offset {exc.start} cannot be read as {label}: {exc.reason}") from None
        line = content.count(b"\n", 0, exc.start) + 1
        column = exc.start - (content.rfind(b"\n", 0, exc.start) + 1) + 1
        raise Unreadable(
            f"byte 0x{bad} (offset {exc.start}) cannot be read as {label}: {exc.reason}{hint}",
            line=line,
            column=column,
        ) from None


# -- numbers ----------------------------------------------------------------------------------------


def parse_number(text: str, *, decimal_comma: bool) -> int | float | None:
    """'1.234,50' -> 1234.5 (decimal comma), '1,234.50' -> 1234.5 (decimal point), '' -> None.

    SAP writes negatives with a trailing minus ('12,5-'); both signs at once is not a number.
    ValueError when ``text`` is not a number in the drop's notation.
    """
    value = text.strip()
    if not value:
        return None
    match = (_COMMA_NUMBER if decimal_comma else _POINT_NUMBER).match(value)
    if match is None or (match["sign"] and match["trail"]):
        raise ValueError(text)
    digits = re.sub(r"[.,]", "", match["int"])
    number: int | float = int(digits) if match["frac"] is None else float(f"{digits}.{match['frac']}")
    return -number if "-" in (match["sign"], match["trail"]) else number


def _comma_decimal(text: str) -> int | float | None:
    """A value that carries a decimal comma, as a number; None for anything else (codes stay text)."""
    match = _COMMA_NUMBER.match(text.strip())
    if match is None or match["frac"] is None or (match["sign"] and match["trail"]):
        return None
    return parse_number(text, decimal_comma=True)


# -- reading ----------------------------------------------------------------------------------------


def read_entries(content: bytes, drop: Drop) -> list[Entry]:
    """Every record of a file of ``drop``'s format, in order. Unreadable when the file as a whole is not."""
    if drop.format == "idoc":
        from connectors.file.idoc import read_idocs

        return read_idocs(parse_xml(content, drop.encoding))
    if drop.format == "xml":
        return _xml_records(parse_xml(content, drop.encoding), drop.record_path)
    text = decode(content, drop.encoding)
    readers: dict[str, Callable[[str, Drop], list[Entry]]] = {"csv": _csv, "json": _json, "jsonl": _jsonl}
    return readers[drop.format](text, drop)


def _csv(text: str, drop: Drop) -> list[Entry]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=drop.delimiter)
    try:
        first = next(reader, None)
    except csv.Error as exc:
        raise Unreadable(f"the header row is not valid CSV: {exc}", line=reader.line_num) from None
    if first is None:
        return []
    header = [name.strip() for name in first]
    trailing = len(header) > 1 and header[-1] == ""  # 'a;b;c;' — a delimiter ending every line
    if trailing:
        header.pop()
    _check_header(header, drop)
    numbers = set(drop.numbers)
    entries: list[Entry] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise Unreadable(f"not valid CSV: {exc}", line=start) from None
        if not any(cell.strip() for cell in row):
            continue  # blank lines (and lines of bare delimiters) hold no record
        if trailing and len(row) == len(header) + 1 and row[-1] == "":
            row.pop()
        entries.append(_csv_entry(len(entries), start, header, row, numbers, drop.decimal_comma))
    return entries


def _check_header(header: list[str], drop: Drop) -> None:
    if any(not name for name in header):
        position = header.index("") + 1
        raise Unreadable(f"column {position} of the header row has no name; every column needs one", line=1)
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise Unreadable(f"column '{name}' appears twice in the header row", line=1)
        seen.add(name)
    missing = [name for name in drop.numbers if name not in seen]
    if missing:
        raise Unreadable(
            f"the header row has no column {', '.join(repr(m) for m in missing)} (named in the drop's numbers); "
            f"its columns: {', '.join(header)}",
            line=1,
        )


def _csv_entry(
    index: int, line: int, header: list[str], row: list[str], numbers: set[str], decimal_comma: bool
) -> Entry:
    if len(row) != len(header):
        raw = json.dumps(row, ensure_ascii=False)
        return Entry(
            index, line, error=f"line {line}: the row has {len(row)} fields, the header has {len(header)}", raw=raw
        )
    record: dict[str, Any] = {}
    for name, cell in zip(header, row, strict=True):
        if name in numbers:
            try:
                record[name] = parse_number(cell, decimal_comma=decimal_comma)
            except ValueError:
                notation = "1.234,50" if decimal_comma else "1234.50"
                raw = json.dumps(dict(zip(header, row, strict=True)), ensure_ascii=False)
                return Entry(
                    index,
                    line,
                    error=f"line {line}: column '{name}' holds '{cell}', which is not a number "
                    f"(this drop writes numbers as {notation})",
                    raw=raw,
                )
            continue
        number = _comma_decimal(cell) if decimal_comma else None
        record[name] = cell if number is None else number
    return Entry(index, line, record)


def _json(text: str, drop: Drop) -> list[Entry]:
    if not text.strip():
        raise Unreadable("the file is empty; a json drop holds an array of records or one object")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Unreadable(f"not valid JSON: {exc.msg}", line=exc.lineno, column=exc.colno) from None
    node = document
    if drop.record_path:
        for part in drop.record_path.split("."):
            if not isinstance(node, dict) or part not in node:
                keys = ", ".join(sorted(node)) if isinstance(node, dict) else type(node).__name__
                raise Unreadable(f"no '{drop.record_path}' in the document: nothing at '{part}' (found: {keys})")
            node = node[part]
    records = node if isinstance(node, list) else [node]
    return [Entry(i, 0, record) for i, record in enumerate(records)]


def _jsonl(text: str, _drop: Drop) -> list[Entry]:
    entries: list[Entry] = []
    # split on '\n' only: str.splitlines would also split at U+2028, which JSON strings may hold raw
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            entries.append(Entry(len(entries), number, json.loads(stripped)))
        except json.JSONDecodeError as exc:
            entries.append(
                Entry(
                    len(entries),
                    number,
                    error=f"line {number}, column {exc.colno}: not valid JSON: {exc.msg}",
                    raw=stripped,
                )
            )
    return entries


# -- XML --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class XmlNode:
    """An element as parsed: local name, attributes by local name, children, its own text, where it starts."""

    name: str
    attrs: dict[str, str]
    line: int
    column: int
    children: list[XmlNode] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def child(self, name: str) -> XmlNode | None:
        return next((c for c in self.children if c.name == name), None)

    def value(self) -> str:
        return "".join(self.text).strip()


class _Refused(Exception):
    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


def _local(name: str) -> str:
    return name.rsplit(" ", 1)[-1]  # expat gives "<namespace> <local>" with namespace_separator=" "


def parse_xml(content: bytes, encoding: str) -> XmlNode:
    """The document's root element; Unreadable with line and column for bad or refused XML.

    The document's byte-order mark or encoding declaration wins; without either, ``encoding`` (the
    drop's option) says how the bytes are written.
    """
    declared = _bom_codec(content) is not None or _XML_DECLARED_ENCODING.match(content[:256]) is not None
    override = None if declared or codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        parser = expat.ParserCreate(encoding=override, namespace_separator=" ")
    except LookupError:
        raise Unreadable(f"the XML parser cannot read encoding '{encoding}'; convert the files to utf-8") from None
    stack: list[XmlNode] = []
    roots: list[XmlNode] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        if len(stack) >= MAX_XML_DEPTH:
            raise _Refused(f"elements nest deeper than {MAX_XML_DEPTH} levels", *position())
        node = XmlNode(
            _local(name),
            {_local(k): v for k, v in attrs.items()},
            parser.CurrentLineNumber,
            parser.CurrentColumnNumber + 1,
        )
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text.append(data)

    def position() -> tuple[int, int]:
        return parser.CurrentLineNumber, parser.CurrentColumnNumber + 1

    def refuse_dtd(*_args: object) -> None:
        raise _Refused(
            "the document has a DOCTYPE; DTDs are refused (their entities can expand without bound or read local "
            "files), and SAP IDoc and ERP exports do not need one",
            parser.CurrentLineNumber,
            0,  # expat is past the DOCTYPE's name by now; the line is what helps
        )

    def refuse_entity(_context: str, _base: str | None, _system: str | None, _public: str | None) -> int:
        refuse_dtd()
        return 0

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.ExternalEntityRefHandler = refuse_entity
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(content, True)
    except expat.ExpatError as exc:
        hint = ""
        if exc.code == expat.errors.codes[expat.errors.XML_ERROR_INVALID_TOKEN] and override is None and not declared:
            try:
                content.decode("utf-8")
            except UnicodeDecodeError:
                hint = (
                    "; the file is not utf-8 and does not declare its encoding: if the ERP writes Windows-1252, "
                    "set encoding: cp1252 on the drop"
                )
        raise Unreadable(
            f"not well-formed XML: {expat.ErrorString(exc.code)}{hint}", line=exc.lineno, column=exc.offset + 1
        ) from None
    except _Refused as exc:
        raise Unreadable(str(exc), line=exc.line, column=exc.column) from None
    except (LookupError, ValueError) as exc:  # an encoding expat cannot use (a multi-byte one)
        raise Unreadable(f"the XML parser cannot read this file's encoding: {exc}") from None
    return roots[0]


def node_data(
    node: XmlNode, *, skip_attrs: frozenset[str] = frozenset(), as_map: Callable[[XmlNode], bool] | None = None
) -> Any:
    """The element as data: text alone as a string; else a map of @attributes, children by name, and #text.

    ``skip_attrs`` are attributes left out; ``as_map`` says which elements are maps even when empty.
    """
    attrs = {f"@{k}": v for k, v in node.attrs.items() if k not in skip_attrs}
    if not node.children and not attrs and not (as_map is not None and as_map(node)):
        return node.value()
    out: dict[str, Any] = attrs
    for child in node.children:
        value = node_data(child, skip_attrs=skip_attrs, as_map=as_map)
        if child.name in out:
            existing = out[child.name]
            out[child.name] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            out[child.name] = value
    if node.value():
        out["#text"] = node.value()
    return out


def _xml_records(root: XmlNode, record_path: str | None) -> list[Entry]:
    if not record_path:
        return [Entry(0, root.line, {root.name: node_data(root)})]
    steps = [step for step in record_path.split("/") if step]
    if steps and steps[0] == root.name and root.child(root.name) is None:
        steps = steps[1:]  # the path may name the root itself
    nodes = [root]
    for depth, step in enumerate(steps):
        found = [child for node in nodes for child in node.children if child.name == step]
        if not found:
            names = sorted({child.name for node in nodes for child in node.children})
            if not names and depth == len(steps) - 1:
                return []  # an export with no records: the parent is there and empty
            where = "/".join([root.name, *steps[:depth]])
            raise Unreadable(
                f"no element at record_path '{record_path}': <{where}> has no <{step}>"
                + (f" (its children: {', '.join(names)})" if names else " (it has no children)")
            )
        nodes = found
    return [Entry(i, node.line, node_data(node)) for i, node in enumerate(nodes)]


# -- writing ----------------------------------------------------------------------------------------


def render_record(record: Any, drop: Drop) -> bytes:
    """One record as the bytes of one file of ``drop``'s format; Unwritable when the drop cannot hold it."""
    if drop.format in ("json", "jsonl"):
        return _json_bytes(record, drop)
    if drop.format == "csv":
        return _csv_bytes(record, drop)
    if drop.format == "idoc":
        from connectors.file.idoc import idoc_element

        return xml_bytes(idoc_element(record), drop.encoding)
    if not isinstance(record, dict) or len(record) != 1:
        raise Unwritable(
            'an xml drop writes one root element: give the record as {root name: content}, e.g. {"order": {...}}'
        )
    ((name, content),) = record.items()
    return xml_bytes(build_element(str(name), content), drop.encoding)


def _json_bytes(record: Any, drop: Drop) -> bytes:
    pretty = drop.format == "json"
    text = json.dumps(
        record, ensure_ascii=False, indent=2 if pretty else None, separators=None if pretty else (",", ":")
    )
    try:
        return (text + "\n").encode(drop.encoding)
    except UnicodeEncodeError:
        # JSON can say any character in ASCII (\u escapes): the record still arrives whole
        text = json.dumps(
            record, ensure_ascii=True, indent=2 if pretty else None, separators=None if pretty else (",", ":")
        )
        return (text + "\n").encode(drop.encoding)


def _csv_cell(name: str, value: Any, decimal_comma: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = format(Decimal(repr(value)), "f") if isinstance(value, float) else str(value)
        return text.replace(".", ",") if decimal_comma else text
    if isinstance(value, str):
        return value
    kind = "a list" if isinstance(value, list) else "a map" if isinstance(value, dict) else type(value).__name__
    raise Unwritable(f"a csv drop takes flat records: field '{name}' holds {kind}; flatten it in the transform")


def _csv_bytes(record: Any, drop: Drop) -> bytes:
    if not isinstance(record, dict):
        raise Unwritable(f"a csv drop takes records that are maps of fields, not {type(record).__name__}")
    cells = {str(k): _csv_cell(str(k), v, drop.decimal_comma) for k, v in record.items()}
    for name, cell in [*((k, k) for k in cells), *cells.items()]:
        try:
            cell.encode(drop.encoding)
        except UnicodeEncodeError as exc:
            char = cell[exc.start]
            raise Unwritable(
                f"field '{name}' holds '{char}' (U+{ord(char):04X}), which {drop.encoding} cannot write; "
                "change the drop's encoding or replace the character in the transform"
            ) from None
    out = io.StringIO()
    writer = csv.writer(out, delimiter=drop.delimiter, lineterminator="\r\n")
    writer.writerow(cells.keys())
    writer.writerow(cells.values())
    return out.getvalue().encode(drop.encoding)


def _check_xml_text(where: str, text: str) -> str:
    bad = _XML_INVALID_CHAR.search(text)
    if bad:
        raise Unwritable(f"{where} holds the control character U+{ord(bad.group()):04X}, which XML cannot carry")
    return text


def _check_xml_name(name: str) -> str:
    if not _XML_NAME.match(name) or name.lower().startswith("xml"):
        raise Unwritable(f"'{name}' cannot be an XML element or attribute name; rename it in the transform")
    return name


def _xml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    return str(value)


def build_element(name: str, content: Any, *, segment: Callable[[ET.Element], None] | None = None) -> ET.Element:
    """An element from data in the reading convention (@attributes, #text, lists as repeated elements).

    ``segment`` is called on every element that holds a map (IDoc segments get SEGMENT="1").
    """
    element = ET.Element(_check_xml_name(name))
    _fill(element, content, segment)
    return element


def _fill(element: ET.Element, content: Any, segment: Callable[[ET.Element], None] | None) -> None:
    if isinstance(content, dict):
        if segment is not None:
            segment(element)
        for key, value in content.items():
            key = str(key)
            if key.startswith("@"):
                element.set(_check_xml_name(key[1:]), _check_xml_text(key, _xml_text(value)))
            elif key == "#text":
                element.text = _check_xml_text(key, _xml_text(value))
            else:
                for item in value if isinstance(value, list) else [value]:
                    if item is None:
                        continue
                    if isinstance(item, list):
                        raise Unwritable(f"'{key}' holds a list inside a list, which XML elements cannot express")
                    child = ET.SubElement(element, _check_xml_name(key))
                    _fill(child, item, segment)
    elif content is not None:
        element.text = _check_xml_text(element.tag, _xml_text(content))


def xml_bytes(root: ET.Element, encoding: str) -> bytes:
    """The document with a declaration; characters the encoding lacks become character references."""
    ET.indent(root)
    text = f"<?xml version='1.0' encoding='{encoding}'?>\n{ET.tostring(root, encoding='unicode')}\n"
    return text.encode(encoding, errors="xmlcharrefreplace")
