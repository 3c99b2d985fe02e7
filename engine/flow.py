"""A validated, compiled client: its flows with their transforms compiled once and their bindings.

:func:`load_client` is the one way from a spec file to something that can transform records:
it validates (a spec with errors raises :class:`~engine.errors.SpecError`, with every problem),
loads the code tables, and compiles each flow's and each target's JSONata once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.connector import Registry, SystemOptions
from engine.errors import Diagnostic, Severity, SpecError, TransformError
from engine.spec import SpecReport, validate_spec
from engine.spec.expressions import expression_source
from engine.spec.lookups import TableError, load_table
from engine.spec.model import Flow, LookupTable, Target
from engine.spec.yamlsource import JsonPath, format_path
from engine.transform import Bindings, Expression, Limits, compile_expression, resolve_backend

__all__ = ["CompiledClient", "CompiledFlow", "CompiledTarget", "load_client"]


@dataclass(frozen=True, slots=True)
class CompiledTarget:
    label: str  # "<system>.<write>", how snapshots and reports name the target
    target: Target | None
    expression: Expression | None

    @property
    def depends_on_existence(self) -> bool:
        """Whether what is sent depends on the target having the record (create-only or update-only fields)."""
        return self.target is not None and bool(self.target.create_only or self.target.update_only)

    def shapes(self) -> list[tuple[str, bool]]:
        """How previews name the two shapes of a target with create-only or update-only fields."""
        return [(f"{self.label} (when new)", False), (f"{self.label} (when it exists)", True)]

    def for_existence(self, payload: Any, exists: bool) -> Any:
        """``payload`` as sent to a target that has the record (create-only fields left out) or not (update-only)."""
        if self.target is None or not isinstance(payload, dict):
            return payload
        drop = set(self.target.create_only if exists else self.target.update_only)
        return {k: v for k, v in payload.items() if k not in drop} if drop else payload


@dataclass(slots=True)
class CompiledFlow:
    client: str
    name: str
    flow: Flow
    expression: Expression | None
    targets: list[CompiledTarget]
    bindings: Bindings
    origins: dict[str, str] = field(default_factory=dict)  # transform path -> file that wrote it
    request_expression: Expression | None = None  # a request trigger's shaping of the caller's request
    source_options: SystemOptions | None = None  # the options of the system records come from (read or consumed)

    def shape_request(self, request: Any, *, record_id: str = "") -> Any:
        """What a request trigger sends its source for the caller's ``request`` (as it is without a transform)."""
        if self.request_expression is None:
            return request
        return self.request_expression.evaluate(request, self.bindings, record_id=record_id)

    def transform(self, record: Any, *, record_id: str = "") -> Any:
        """The flow's own transform (the canonical record); the record itself when there is none."""
        if self.expression is None:
            return record
        return self.expression.evaluate(record, self.bindings, record_id=record_id)

    def transform_json(self, text: str, *, record_id: str = "") -> str | None:
        """The same transform on the record's JSON text (the worker's path): JSON text out, None for nothing.

        The backend skips the fields the mapping never reads and builds no Python values for either side;
        the result, decoded, equals :meth:`transform`'s (tests/test_transform.py holds the two to it)."""
        if self.expression is None:
            return text
        return self.expression.evaluate_json(text, self.bindings, record_id=record_id)

    def preview(self, record: Any, *, record_id: str = "") -> dict[str, Any]:
        """What each target would be sent for ``record``: {target label: payload or None}.

        A target with create-only or update-only fields shows both shapes, ``<label> (when new)`` and
        ``<label> (when it exists)``, as the worker sends one or the other.
        """
        shaped = self.transform(record, record_id=record_id)
        out: dict[str, Any] = {}
        for target in self.targets:
            if target.expression is None or shaped is None:
                payload = shaped
            else:
                payload = target.expression.evaluate(shaped, self.bindings, record_id=record_id)
            if target.depends_on_existence:
                for label, exists in target.shapes():
                    out[label] = None if payload is None else target.for_existence(payload, exists)
            else:
                out[target.label] = payload
        return out

    @property
    def mapping_files(self) -> list[str]:
        """Files holding this flow's mappings (a base's or the client's), for `seamline test --all`."""
        return sorted(set(self.origins.values()))


@dataclass(slots=True)
class CompiledClient:
    client: str
    file: str
    backend: str
    report: SpecReport
    flows: dict[str, CompiledFlow]
    lookup_files: list[str] = field(default_factory=list)  # code tables read from files

    @property
    def input_files(self) -> list[str]:
        """Every file the client's behaviour is made of: the spec chain, its mappings and its code tables.

        What the spec version is computed from (:func:`engine.runtime.daemon.spec_version`): a fixed lookup
        table is a new version, so a dead letter made by the old table is told apart from a new one.
        """
        files = set(self.report.merged.chain) | set(self.lookup_files)
        for flow in self.flows.values():
            files.update(flow.mapping_files)
        return sorted(files)

    def flow(self, name: str) -> CompiledFlow:
        if name not in self.flows:
            from engine.connector import closest
            from engine.errors import UsageError

            guess = closest(name, self.flows)
            raise UsageError(
                f"client '{self.client}' has no flow '{name}'"
                + (f" — did you mean '{guess}'?" if guess else "")
                + f"; flows: {', '.join(self.flows)}"
            )
        return self.flows[name]


def load_client(
    path: Path,
    *,
    backend: str | None = None,
    now: str | None = None,
    environ: Mapping[str, str] | None = None,
    limits: Limits | None = None,
    registry: Registry | None = None,
) -> CompiledClient:
    """Validate and compile the client spec at ``path``; SpecError if it has errors.

    ``registry``: the connector kinds the spec is held to (the installed ones by default)."""
    report = validate_spec(path, environ=environ if environ is not None else {}, registry=registry)
    if not report.ok or report.document is None:
        raise SpecError(report.diagnostics)
    document = report.document
    merged = report.merged
    chosen = resolve_backend(backend)
    lookups: dict[str, Any] = {}
    lookup_files: list[str] = []
    problems: list[Diagnostic] = []
    for name, table in document.lookups.items():
        if table.file is not None:
            lookup_files.append(str(_table_dir(report, name, table) / table.file))
        try:
            lookups[name] = load_table(table, _table_dir(report, name, table))
        except TableError as exc:
            mark = merged.mark(("lookups", name))
            problems.append(Diagnostic(Severity.ERROR, str(exc), mark.file, mark.line, mark.column, "lookups"))
    if problems:
        raise SpecError(problems)
    flows: dict[str, CompiledFlow] = {}
    for name, flow in document.flows.items():
        bindings = Bindings(client=document.client, flow=name, constants=document.constants, lookups=lookups, now=now)
        origins: dict[str, str] = {}

        def compile_at(value: str | None, at: JsonPath, origins: dict[str, str] = origins) -> Expression | None:
            if value is None:
                return None
            ref = expression_source(merged, value, at)
            if ref.source is None:  # validate reported it; a race with the file system lands here
                raise SpecError([Diagnostic(Severity.ERROR, ref.problem, merged.file, path=format_path(at))])
            origins[format_path(at)] = ref.source.file
            try:
                return compile_expression(ref.source, backend=chosen, limits=limits)
            except TransformError as exc:
                diag = Diagnostic(Severity.ERROR, exc.message, exc.file, exc.line, exc.column, format_path(at))
                raise SpecError([diag]) from None

        expression = compile_at(flow.transform, ("flows", name, "transform"))
        targets: list[CompiledTarget] = []
        labels: list[str] = []
        for index, target in enumerate(flow.all_targets()):
            at: JsonPath = ("flows", name, "targets", index) if flow.targets is not None else ("flows", name, "target")
            label = _unique(f"{target.system}.{target.write}", labels)
            labels.append(label)
            targets.append(CompiledTarget(label, target, compile_at(target.transform, (*at, "transform"))))
        if not targets:
            targets.append(CompiledTarget("response", None, None))  # a request flow answers its caller
        request = flow.trigger.request
        shaping = compile_at(request.transform, ("flows", name, "trigger", "request", "transform")) if request else None
        origin = flow.source.system if flow.source is not None else None
        if origin is None and flow.trigger.event is not None:
            origin = flow.trigger.event.system
        source_options = report.systems.get(origin) if origin is not None else None
        flows[name] = CompiledFlow(
            document.client, name, flow, expression, targets, bindings, origins, shaping, source_options
        )
    return CompiledClient(document.client, str(path), chosen, report, flows, lookup_files)


def _table_dir(report: SpecReport, name: str, table: LookupTable) -> Path:
    at: JsonPath = ("lookups", name, "file") if ("lookups", name, "file") in report.merged.marks else ("lookups", name)
    return Path(report.merged.origin(at)).parent


def _unique(label: str, taken: list[str]) -> str:
    if label not in taken:
        return label
    n = 2
    while f"{label}#{n}" in taken:
        n += 1
    return f"{label}#{n}"
