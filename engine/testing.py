"""Golden cases: each client's ERP customizations proven by reviewed snapshots.

Layout::

    golden/<client>/<flow>/<case>.input.json      what the flow's source hands over (.xml, .csv too)
    golden/<client>/<flow>/<case>.snapshot.json   what each target would be sent, reviewed in PRs
    golden/<client>/<flow>/<case>.error.txt       the records it would not deliver, with the reason
                                                  (rejected at read, dead-lettered, skipped), when any

The input is read as the flow's source reads it (:mod:`engine.preview`): a file drop's sample with the
drop's own format and options, else the records an API sends. A case whose record is rejected or
dead-lettered is not an error of the test: its ``.error.txt`` says what is expected, and ``--update``
writes it, as it writes snapshots.

A snapshot is canonical JSON (:func:`engine.transform.canonical_json`): the same text whichever
JSONata backend produced it, so switching backends never shows up as a diff. ``$now()`` is fixed
at :data:`GOLDEN_NOW`. ``seamline test`` and the pytest suite (through :class:`GoldenExtension`)
read and write the very same files.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import SeamlineError, TransformError
from engine.flow import CompiledClient, CompiledFlow, CompiledTarget
from engine.runtime.identity import pick
from engine.transform import canonical_json

__all__ = [
    "ERROR_SUFFIX",
    "GOLDEN_NOW",
    "INPUT_SUFFIXES",
    "REQUEST_SUFFIX",
    "CaseResult",
    "GoldenCase",
    "GoldenInputError",
    "GoldenReport",
    "discover_cases",
    "golden_extension",
    "read_input",
    "render_case",
    "render_snapshot",
    "run_case",
    "run_golden",
]

GOLDEN_NOW = "2025-01-15T08:00:00.000Z"
INPUT_SUFFIXES = (".input.json", ".input.xml", ".input.csv")
REQUEST_SUFFIX = ".request.json"  # a request trigger's caller asking: the case proves trigger.request.transform
SNAPSHOT_SUFFIX = ".snapshot.json"
ERROR_SUFFIX = ".error.txt"


class GoldenInputError(SeamlineError):
    """A golden input file cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class GoldenCase:
    client: str
    flow: str
    name: str
    input_path: Path

    @property
    def snapshot_path(self) -> Path:
        return self.input_path.parent / f"{self.name}{SNAPSHOT_SUFFIX}"

    @property
    def error_path(self) -> Path:
        return self.input_path.parent / f"{self.name}{ERROR_SUFFIX}"

    @property
    def id(self) -> str:
        return f"{self.client}/{self.flow}/{self.name}"

    @property
    def is_request(self) -> bool:
        return self.input_path.name.endswith(REQUEST_SUFFIX)


Status = Literal["passed", "failed", "new", "updated", "error"]


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: GoldenCase
    status: Status
    actual: str = ""
    expected: str = ""
    error: str = ""

    def diff(self) -> str:
        lines = difflib.unified_diff(
            self.expected.splitlines(keepends=True),
            self.actual.splitlines(keepends=True),
            fromfile=f"{self.case.snapshot_path} (reviewed)",
            tofile=f"{self.case.id} (now)",
        )
        return "".join(lines)


def discover_cases(root: Path, client: str | None = None, flow: str | None = None) -> list[GoldenCase]:
    """Every golden case under ``root`` (golden/), optionally of one client and one flow."""
    cases: list[GoldenCase] = []
    if not root.is_dir():
        return cases
    for client_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if client is not None and client_dir.name != client:
            continue
        for flow_dir in sorted(p for p in client_dir.iterdir() if p.is_dir()):
            if flow is not None and flow_dir.name != flow:
                continue
            for path in sorted(flow_dir.iterdir()):
                suffix = next((s for s in INPUT_SUFFIXES if path.name.endswith(s)), None)
                if suffix:
                    name = path.name[: -len(suffix)]
                    cases.append(GoldenCase(client_dir.name, flow_dir.name, name, path))
                elif path.name.endswith(REQUEST_SUFFIX):  # named '<case>.request': its snapshot sits beside it
                    cases.append(GoldenCase(client_dir.name, flow_dir.name, path.name[: -len(".json")], path))
    return cases


def read_input(path: Path) -> Any:
    """The record(s) in a golden input: JSON as is, XML as nested maps, CSV as a list of rows."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenInputError(f"{path}: cannot read golden input: {exc}") from None
    if path.name.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise GoldenInputError(
                f"{path}:{exc.lineno}:{exc.colno}: golden input is not valid JSON: {exc.msg}"
            ) from None
    if path.name.endswith(".xml"):
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            line, column = exc.position
            raise GoldenInputError(f"{path}:{line}:{column + 1}: golden input is not valid XML: {exc}") from None
        return {_local(root.tag): xml_to_data(root)}
    return _read_csv(path, text)


def _read_csv(path: Path, text: str) -> list[dict[str, str]]:
    sample = text[:4096]
    delimiter = ";" if sample.count(";") > sample.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise GoldenInputError(f"{path}:1:1: golden CSV input is empty; it needs a header row")
        records = []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                # a quoted field may span lines: name the line where the row starts
                first = reader.line_num - sum(field.count("\n") for field in row)
                raise GoldenInputError(
                    f"{path}:{first}:1: golden CSV row has {len(row)} fields, the header has {len(header)}"
                )
            records.append(dict(zip(header, row, strict=True)))
    except csv.Error as exc:
        raise GoldenInputError(f"{path}:{reader.line_num}:1: golden input is not valid CSV: {exc}") from None
    return records


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def xml_to_data(element: ET.Element) -> Any:
    """XML as JSONata-friendly data: children by name (repeated ones as lists), attributes as @name."""
    children = list(element)
    if not children and not element.attrib:
        return (element.text or "").strip()
    out: dict[str, Any] = {f"@{_local(k)}": v for k, v in element.attrib.items()}
    for child in children:
        key = _local(child.tag)
        value = xml_to_data(child)
        if key in out:
            existing = out[key]
            out[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            out[key] = value
    text = (element.text or "").strip()
    if text:
        out["#text"] = text
    return out


class TargetKeyError(SeamlineError):
    """A target's ``key`` names a field its payload does not have (the worker reads the key from the payload)."""


def render_case(flow: CompiledFlow, case: GoldenCase) -> tuple[str | None, str | None]:
    """(snapshot text, error text) of ``case``; either is None when there is nothing of it.

    The snapshot is {target: payload} for an input of one record, {target: [payloads]} for several
    (the delivered ones, in order); the error text has a line per record that would not be delivered.
    """
    from engine.preview import SampleError, preview_file

    if case.is_request:
        data = read_input(case.input_path)
        return canonical_json(_shaped_request(flow, case, data)) + "\n", None
    try:
        previews, single = preview_file(flow, case.input_path, name=case.name)
    except SampleError as exc:
        raise GoldenInputError(str(exc)) from None
    delivered = [p.payloads for p in previews if p.payloads is not None]
    for payloads in delivered:
        check_target_keys(flow, payloads)
    problems = [f"record {p.record}: {p.problem}" for p in previews if p.problem]
    errors = "\n".join(problems) + "\n" if problems else None
    if not delivered:
        return None, errors
    if single:
        return canonical_json(delivered[0]) + "\n", errors
    out: dict[str, Any] = {label: [p[label] for p in delivered] for label in delivered[0]}
    return canonical_json(out) + "\n", errors


def render_snapshot(flow: CompiledFlow, case: GoldenCase) -> str:
    """The snapshot text of ``case`` ("" when no record of it is delivered: see its ``.error.txt``)."""
    snapshot, _ = render_case(flow, case)
    return snapshot or ""


def _shaped_request(flow: CompiledFlow, case: GoldenCase, request: Any) -> dict[str, Any]:
    """{"<system>.<call>": what the source is asked} for a caller's request."""
    source = flow.flow.source
    if flow.flow.trigger.request is None or source is None or source.call is None:
        raise GoldenInputError(
            f"{case.input_path}: a {REQUEST_SUFFIX} case needs a flow with a request trigger; "
            f"'{flow.name}' has none (name the file <case>.input.json to feed its transform)"
        )
    return {f"{source.system}.{source.call}": flow.shape_request(request, record_id=case.name)}


def check_target_keys(flow: CompiledFlow, preview: dict[str, Any]) -> None:
    """Every target ``key`` field is in the payload that target is sent: the key the runtime orders and upserts by."""
    for target in flow.targets:
        labels = [label for label, _ in target.shapes()] if target.depends_on_existence else [target.label]
        for label in labels:
            _check_key(flow, target, preview.get(label))


def _check_key(flow: CompiledFlow, target: CompiledTarget, payload: Any) -> None:
    spec = target.target
    if spec is None or spec.key is None or payload is None:
        return
    for field in [spec.key] if isinstance(spec.key, str) else spec.key:
        if pick(payload, field) is None:
            has = ", ".join(sorted(payload)) if isinstance(payload, dict) else type(payload).__name__
            raise TargetKeyError(
                f"flow '{flow.name}', target {target.label}: key '{field}' is not in the payload it is sent "
                f"(it has: {has}); the runtime reads the key from that payload, after the target's own "
                "transform: name one of its fields"
            )


def run_case(client: CompiledClient, case: GoldenCase, *, update: bool = False) -> CaseResult:
    """Compare (or with ``update``, rewrite) one case's snapshot and error file; failures are results."""
    try:
        flow = client.flow(case.flow)
        snapshot, errors = render_case(flow, case)
    except (TransformError, GoldenInputError) as exc:
        return CaseResult(case, "error", error=str(exc))
    except SeamlineError as exc:
        return CaseResult(case, "error", error=str(exc))
    files = ((case.snapshot_path, snapshot), (case.error_path, errors))
    before = [path.read_text(encoding="utf-8") if path.is_file() else None for path, _ in files]
    actual, expected = _joined(snapshot, errors), _joined(*before)
    if before == [snapshot, errors]:
        return CaseResult(case, "passed", actual, expected)
    if update:
        for path, text in files:
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text, encoding="utf-8")
        return CaseResult(case, "new" if before == [None, None] else "updated", actual, expected)
    if errors is not None and before[1] is None:
        first = errors.splitlines()[0]
        hint = f"{first}; if that is expected, run with --update to write {case.error_path.name}"
        return CaseResult(case, "failed", actual, expected, error=hint)
    if before == [None, None]:
        return CaseResult(case, "failed", actual, "", error="no reviewed snapshot yet; run with --update")
    return CaseResult(case, "failed", actual, expected)


def _joined(snapshot: str | None, errors: str | None) -> str:
    """A case's files as one text for the diff: the snapshot, then the records not delivered."""
    text = snapshot or ""
    if errors:
        text += f"--- {ERROR_SUFFIX.lstrip('.')} ---\n" + errors
    return text


def clients_in(cases: Iterable[GoldenCase]) -> list[str]:
    return sorted({case.client for case in cases})


def summarize(results: Sequence[CaseResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return counts


@dataclass(slots=True)
class GoldenReport:
    """The outcome of a `seamline test` run, and how to print it."""

    results: list[CaseResult]
    mapping_files: dict[tuple[str, str], list[str]]  # (client, flow) -> files holding its mappings
    untested: list[str]  # clients with a spec but no golden cases
    update: bool = False
    shared_mappings: frozenset[str] = frozenset()  # mapping files written outside a client's own folder

    @property
    def ok(self) -> bool:
        return all(r.status in ("passed", "new", "updated") for r in self.results)

    def render(self, *, color: bool = False) -> str:
        out: list[str] = []
        for result in self.results:
            if result.status == "failed":
                out.append(
                    _paint(f"FAIL {result.case.id}", "31", color) + (f": {result.error}" if result.error else "")
                )
                out.append(_color_diff(result.diff(), color) if result.expected else result.actual)
            elif result.status == "error":
                out.append(_paint(f"ERROR {result.case.id}", "31", color) + f": {result.error}")
            elif result.status in ("new", "updated"):
                out.append(_paint(f"{result.status.upper()} {result.case.snapshot_path}", "33", color))
        out.append(self._table())
        out.extend(self._affected())
        for client in self.untested:
            out.append(f"note: client '{client}' has no golden cases (add golden/{client}/<flow>/<case>.input.json)")
        counts = summarize(self.results)
        parts = [f"{counts.get('passed', 0)} passed", f"{counts.get('failed', 0)} failed"]
        if counts.get("error"):
            parts.append(f"{counts['error']} errors")
        if counts.get("new") or counts.get("updated"):
            parts.append(f"{counts.get('new', 0) + counts.get('updated', 0)} written")
        out.append(", ".join(parts))
        return "\n".join(out)

    def _table(self) -> str:
        rows: dict[tuple[str, str], dict[str, int]] = {}
        for result in self.results:
            key = (result.case.client, result.case.flow)
            row = rows.setdefault(key, {"cases": 0, "passed": 0, "failed": 0, "error": 0})
            row["cases"] += 1
            bucket = "passed" if result.status in ("passed", "new", "updated") else result.status
            row[bucket] += 1
        header = ("client", "flow", "cases", "passed", "failed", "errors", "mappings")
        table = [header]
        for (client, flow), row in rows.items():
            files = ", ".join(self.mapping_files.get((client, flow), [])) or "-"
            table.append(
                (
                    client,
                    flow,
                    str(row["cases"]),
                    str(row["passed"]),
                    str(row["failed"]),
                    str(row["error"]),
                    files,
                )
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines = []
        for index, row_cells in enumerate(table):
            cells = [
                c.rjust(w) if 2 <= i <= 5 else c.ljust(w)
                for i, (c, w) in enumerate(zip(row_cells, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def _affected(self) -> list[str]:
        """Which clients a failing shared (base) mapping affects: what a base change costs."""
        by_file: dict[str, set[str]] = {}
        for result in self.results:
            if result.status not in ("failed", "error"):
                continue
            for path in self.mapping_files.get((result.case.client, result.case.flow), []):
                if path in self.shared_mappings:
                    by_file.setdefault(path, set()).add(result.case.client)
        return [
            f"shared mapping {path} is used by failing cases of: {', '.join(sorted(clients))}"
            for path, clients in sorted(by_file.items())
        ]


def _paint(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color else text


def _color_diff(diff: str, color: bool) -> str:
    if not color:
        return diff.rstrip("\n")
    painted = []
    for line in diff.rstrip("\n").splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            painted.append(_paint(line, "32", True))
        elif line.startswith("-") and not line.startswith("---"):
            painted.append(_paint(line, "31", True))
        else:
            painted.append(line)
    return "\n".join(painted)


def run_golden(
    golden_dir: Path,
    specs_dir: Path,
    *,
    client: str | None = None,
    flow: str | None = None,
    update: bool = False,
    backend: str | None = None,
) -> GoldenReport:
    """Run the golden cases of one client (or all); every case runs, whatever the others did."""
    from engine.errors import SpecError, UsageError
    from engine.flow import load_client

    spec_of = {p.parent.name: p for p in sorted(specs_dir.glob("*/seamline.yaml")) if not p.parent.name.startswith("_")}
    if client is not None and client not in spec_of:
        known = ", ".join(spec_of) or "none"
        raise UsageError(f"no client '{client}' (looked for {specs_dir / client / 'seamline.yaml'}); clients: {known}")
    every_case = discover_cases(golden_dir, client)
    cases = [case for case in every_case if flow is None or case.flow == flow]
    results: list[CaseResult] = []
    mapping_files: dict[tuple[str, str], list[str]] = {}
    shared: set[str] = set()
    flows_seen: set[str] = set()
    # every client with golden cases is loaded, even with --flow, so a misspelt flow is named
    for name in sorted({*clients_in(every_case), *([client] if client else [])}):
        client_cases = [c for c in cases if c.client == name]
        if name not in spec_of:
            results.extend(
                CaseResult(
                    c,
                    "error",
                    error=f"no spec for client '{name}' (expected {specs_dir / name / 'seamline.yaml'})",
                )
                for c in client_cases
            )
            continue
        try:
            compiled = load_client(spec_of[name], backend=backend, now=GOLDEN_NOW)
        except SpecError as exc:
            first = exc.diagnostics[0].render() if exc.diagnostics else str(exc)
            results.extend(CaseResult(c, "error", error=f"the spec is invalid: {first}") for c in client_cases)
            continue
        flows_seen.update(compiled.flows)
        if client is not None and flow is not None and flow not in compiled.flows:
            compiled.flow(flow)  # raises UsageError with did-you-mean
        own_dir = spec_of[name].parent.resolve()
        for flow_name, compiled_flow in compiled.flows.items():
            mapping_files[(name, flow_name)] = compiled_flow.mapping_files
            shared.update(f for f in compiled_flow.mapping_files if not Path(f).resolve().is_relative_to(own_dir))
        results.extend(run_case(compiled, case, update=update) for case in client_cases)
    if flow is not None and flows_seen and flow not in flows_seen:
        _no_such_flow(flow, flows_seen)
    tested = set(clients_in(cases))
    untested = [] if client is not None or flow is not None else [c for c in spec_of if c not in tested]
    return GoldenReport(results, mapping_files, untested, update, frozenset(shared))


def _no_such_flow(flow: str, known: set[str]) -> None:
    from engine.connector import closest
    from engine.errors import UsageError

    guess = closest(flow, known)
    raise UsageError(
        f"no client has a flow '{flow}'"
        + (f" — did you mean '{guess}'?" if guess else "")
        + f"; flows: {', '.join(sorted(known))}"
    )


def golden_extension(case: GoldenCase, text: str) -> Any:
    """A syrupy extension that keeps ``case``'s snapshot beside its input, as `seamline test` does.

    pytest asserts ``snapshot(extension_class=golden_extension(case, text)) == text``; with
    ``--snapshot-update`` syrupy writes the very file `seamline test --update` would.
    """
    from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

    class GoldenSnapshot(SingleFileSnapshotExtension):
        _write_mode = WriteMode.TEXT
        file_extension = SNAPSHOT_SUFFIX.lstrip(".")

        @classmethod
        def dirname(cls, *, test_location: Any) -> str:
            return str(case.input_path.parent)

        @classmethod
        def discovery_dirname(cls, *, test_location: Any) -> str:
            return str(case.input_path.parent)

        @classmethod
        def get_snapshot_name(cls, *, test_location: Any, index: Any = 0) -> str:
            return case.name

        def serialize(self, data: Any, **kwargs: Any) -> str:
            return str(data)

    return GoldenSnapshot
