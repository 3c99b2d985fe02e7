"""Validate a client spec: every problem collected, each with its place.

The checks, in the order they run (each later check runs on what the earlier ones accepted, so
one mistake is reported once, where it was made):

1. YAML, with positions and the YAML traps (:mod:`engine.spec.yamlsource`);
2. ``extends:`` resolved into one merged spec (:mod:`engine.spec.overlay`);
3. the spec's shape (:class:`~engine.spec.model.SpecDocument`), and each system's options by its
   connector's own model;
4. references: systems a flow names exist and support the operation; transform and lookup
   files exist and parse; request and webhook paths are unique; the flows and systems an alert rule
   watches exist and fit its condition, and the notifiers it names are configured;
5. JSONata compiled, errors located inside the ``.jsonata`` file or the YAML block;
6. templates parsed in Jinja's sandbox; env vars and secrets present (warnings unless strict).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engine.connector import ConnectorKind, Registry, SystemOptions, closest, default_registry
from engine.errors import Diagnostic, Severity, TransformError, UsageError
from engine.spec.errors_translate import translate_validation_error
from engine.spec.expressions import did_you_mean_file, expression_source, value_positions
from engine.spec.jsonata_names import names_used
from engine.spec.lookups import TableError, read_table_file
from engine.spec.model import ALERT_CONDITIONS, AlertRule, Flow, LookupTable, Source, SpecDocument, Target, Trigger
from engine.spec.overlay import MergedSpec, resolve_spec
from engine.spec.templates import analyse_template, find_template_strings, secret_available
from engine.spec.yamlsource import JsonPath, Mark, format_path
from engine.transform import (
    JSONATA_BUILTINS,
    SEAMLINE_FUNCTIONS,
    ExpressionSource,
    compile_expression,
)

__all__ = ["SPEC_FILENAME", "SpecReport", "discover_specs", "validate_spec"]

SPEC_FILENAME = "seamline.yaml"
SECRET_KEYS = frozenset(
    {"password", "client_secret", "consumer_secret", "access_token", "access_token_secret", "token", "key"}
)
_LOOPBACK_URL = re.compile(r"^https?://(localhost|127\.0\.0\.1|\[::1\])[:/]", re.I)
_URL_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@", re.I)


@dataclass(slots=True)
class SpecReport:
    """What validating one client spec found."""

    file: str
    merged: MergedSpec
    document: SpecDocument | None = None
    systems: dict[str, SystemOptions] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Severity}
        for d in self.diagnostics:
            out[d.severity.value] += 1
        return out


def discover_specs(paths: Iterable[Path]) -> list[Path]:
    """Client spec files under ``paths``: a file is taken as is; a folder is searched for seamline.yaml.

    Folders whose name starts with '_' (``specs/_base``) hold bases, validated through the
    clients that extend them.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            direct = path / SPEC_FILENAME
            if direct.is_file():
                found.append(direct)
                continue
            for candidate in sorted(path.rglob(SPEC_FILENAME)):
                rel = candidate.relative_to(path)
                if not any(part.startswith(("_", ".")) for part in rel.parts[:-1]):
                    found.append(candidate)
            if not any(p.is_relative_to(path) for p in found):
                raise UsageError(f"no {SPEC_FILENAME} found under '{path}'; give a spec file or a client folder")
        else:
            raise UsageError(f"'{path}' does not exist")
    return found


def validate_spec(
    path: Path,
    *,
    registry: Registry | None = None,
    strict: bool = False,
    environ: Mapping[str, str] | None = None,
) -> SpecReport:
    checker = _Checker(
        resolve_spec(path, str(path)),
        registry or default_registry(),
        strict,
        os.environ if environ is None else environ,
    )
    return checker.run()


class _Checker:
    def __init__(self, merged: MergedSpec, registry: Registry, strict: bool, environ: Mapping[str, str]) -> None:
        self.report = SpecReport(file=merged.file, merged=merged)
        self.merged = merged
        self.registry = registry
        self.strict = strict
        self.environ = environ
        self.diags = self.report.diagnostics
        self.lookup_names: set[str] = set()
        self.unusable: set[str] = set()  # sections the shape check rejected: references into them are not judged

    # -- plumbing ------------------------------------------------------------------------------
    def add(
        self,
        severity: Severity,
        message: str,
        path: JsonPath,
        *,
        code: str,
        hint: str = "",
        mark: Mark | None = None,
    ) -> None:
        mark = mark or self.merged.mark(path)
        self.diags.append(
            Diagnostic(
                severity,
                message,
                mark.file,
                mark.line,
                mark.column,
                path=format_path(path),
                code=code,
                hint=hint,
            )
        )

    def error(self, message: str, path: JsonPath, *, code: str, hint: str = "", mark: Mark | None = None) -> None:
        self.add(Severity.ERROR, message, path, code=code, hint=hint, mark=mark)

    def spec_dir(self, path: JsonPath) -> Path:
        """Relative file references resolve against the file that wrote them (a base or the client)."""
        return Path(self.merged.origin(path)).parent

    # -- the checks ----------------------------------------------------------------------------
    def run(self) -> SpecReport:
        self.check()
        self.diags[:] = _one_error_per_typo(self.diags)
        # A YAML trap already explained a value (a date that is not one): do not report it twice.
        explained = {(d.file, d.line, d.column) for d in self.merged.diagnostics if d.line}
        self.diags[:] = [
            d
            for d in self.diags
            if d in self.merged.diagnostics
            or d.severity is not Severity.ERROR
            or (d.file, d.line, d.column) not in explained
        ]
        # One line per problem, whatever the spec contains: a key such as "\n" is shown escaped.
        self.diags[:] = sorted((_one_line(d) for d in self.diags), key=Diagnostic.sort_key)
        return self.report

    def check(self) -> None:
        self.diags.extend(self.merged.diagnostics)
        if not self.merged.complete or not isinstance(self.merged.data, dict):
            return
        data: dict[str, Any] = self.merged.data
        try:
            self.report.document = SpecDocument.model_validate(data)
        except ValidationError as exc:
            self.diags.extend(translate_validation_error(exc, self.merged, SpecDocument))
        self.unusable = _unusable_sections(data)
        systems = data.get("systems")
        if isinstance(systems, dict):
            for name, entry in systems.items():
                self.check_system(name, entry)
        lookups = data.get("lookups")
        if isinstance(lookups, dict):
            for name, entry in lookups.items():
                self.check_lookup(name, entry)
        flows = data.get("flows")
        if isinstance(flows, dict):
            self.check_flows(flows)
        alerts = data.get("alerts")
        if isinstance(alerts, dict):
            self.check_alerts(alerts)
        self.check_templates(data)
        self.note_not_runnable()

    def check_system(self, name: str, entry: Any) -> None:
        path: JsonPath = ("systems", name)
        if not isinstance(entry, dict):
            return  # the shape check already said so
        connector = entry.get("connector")
        if connector is None:
            self.error(
                f"system '{name}' has no connector; say which kind it is",
                path,
                code="missing",
                mark=self.merged.key_mark(path),
                hint="connectors: " + ", ".join(self.registry.names()),
            )
            return
        kind = self.registry.get(str(connector))
        if kind is None:
            guess = closest(str(connector), self.registry.names())
            message = f"unknown connector '{connector}'"
            if guess:
                message += f" — did you mean '{guess}'?"
            self.error(
                message,
                (*path, "connector"),
                code="unknown-connector",
                hint="connectors: " + ", ".join(self.registry.names()),
            )
            return
        self.check_secret_literals(entry, path)
        try:
            options = kind.options.model_validate(entry)
        except ValidationError as exc:
            self.diags.extend(translate_validation_error(exc, self.merged, kind.options, prefix=path))
            return
        self.report.systems[name] = options

    def note_not_runnable(self) -> None:
        pending = {
            name: options.connector
            for name, options in self.report.systems.items()
            if not getattr(self.registry.get(options.connector), "runnable", True)
        }
        if pending:
            listed = ", ".join(f"{name} ({kind})" for name, kind in pending.items())
            self.add(
                Severity.NOTE,
                f"declared but not yet runnable in this version: {listed}; their options are checked",
                (),
                code="not-runnable",
                mark=Mark(self.merged.file, 1, 1),
            )

    def check_secret_literals(self, entry: Any, path: JsonPath) -> None:
        if isinstance(entry, dict):
            for key, value in entry.items():
                child = (*path, key)
                if isinstance(value, str) and key in SECRET_KEYS and "auth" in path and "{{" not in value:
                    self.error(
                        f"'{key}' is written literally in the spec; secrets must not be committed",
                        child,
                        code="literal-secret",
                        hint=f"write  {key}: '{{{{ secret.NAME }}}}'  and provide NAME as an environment "
                        "variable or a file in $SEAMLINE_SECRETS_DIR",
                    )
                elif isinstance(value, str) and key == "url" and _URL_CREDENTIALS.match(value):
                    self.error(
                        "the URL carries a user and password written in the spec",
                        child,
                        code="literal-secret",
                        hint="move the whole URL to a secret: url: '{{ secret.AMQP_URL }}'",
                    )
                else:
                    self.check_secret_literals(value, child)

    def check_lookup(self, name: str, entry: Any) -> None:
        path: JsonPath = ("lookups", name)
        self.lookup_names.add(name)
        if isinstance(entry, str):
            entry = {"file": entry}
            file_path: JsonPath = path
        else:
            file_path = (*path, "file")
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            return
        try:
            table = LookupTable.model_validate(entry)
        except ValidationError:
            return  # reported by the shape check
        assert table.file is not None
        location = self.spec_dir(file_path) / table.file
        if not location.is_file():
            self.error(
                f"lookup file '{table.file}' not found (looked for {location})"
                + did_you_mean_file(location, table.file),
                file_path,
                code="missing-file",
                hint="lookup paths are relative to the spec file that names them",
            )
            return
        try:
            read_table_file(location, table)
        except TableError as problem:
            self.report_table_problem(name, path, file_path, location, problem)

    def report_table_problem(
        self, name: str, path: JsonPath, file_path: JsonPath, location: Path, problem: TableError
    ) -> None:
        if problem.column:  # the spec names a column the header lacks: the spec's key:/value: is what to fix
            self.error(f"lookup '{name}': {problem.message}", (*path, problem.column), code="lookup")
        elif problem.line:
            self.diags.append(
                Diagnostic(
                    Severity.ERROR,
                    problem.message,
                    str(location),
                    problem.line,
                    1,
                    path=format_path(path),
                    code="lookup",
                )
            )
        else:
            self.error(f"lookup '{name}': {problem.message}", file_path, code="lookup")

    def check_flows(self, flows: dict[str, Any]) -> None:
        served: dict[str, JsonPath] = {}
        systems = self.merged.data.get("systems") if isinstance(self.merged.data, dict) else None
        declared = set(systems) if isinstance(systems, dict) else set()
        for name, raw in flows.items():
            path: JsonPath = ("flows", name)
            if not isinstance(raw, dict):
                continue
            # Each part is checked on its own, so a typo in one part does not hide a broken
            # reference or expression in another; the shape check already reported the typo.
            self.check_flow_parts(path, raw, declared)
            trigger = _valid(Trigger, raw.get("trigger"))
            if trigger is None:
                continue
            for route_path, route in _served_paths(trigger, path):
                if route in served:
                    first = self.merged.mark(served[route])
                    self.error(
                        f"path '{route}' is already served by flow '{served[route][1]}' "
                        f"(line {first.line}); each request or webhook path must be unique",
                        route_path,
                        code="duplicate-path",
                    )
                else:
                    served[route] = route_path

    def check_flow_parts(self, path: JsonPath, raw: dict[str, Any], declared: set[str]) -> None:
        source = _valid(Source, raw.get("source"))
        trigger = _valid(Trigger, raw.get("trigger"))
        if source is not None:
            kind, options = self.system_ref(source.system, declared, (*path, "source", "system"))
            capability, op = ("read", source.read) if source.read else ("call", source.call)
            if kind is not None and op is not None:
                self.check_operation(kind, options, capability, op, (*path, "source", capability), source.system)
            if options is not None and source.read is not None and trigger is not None and trigger.schedule is not None:
                self.check_read_identity(path, raw, source, options)
        if trigger is not None and trigger.request is not None and trigger.request.transform is not None:
            self.check_transform(trigger.request.transform, (*path, "trigger", "request", "transform"))
        if trigger is not None and trigger.event is not None and trigger.event.system is not None:
            event_path = (*path, "trigger", "event", "system")
            kind, _ = self.system_ref(trigger.event.system, declared, event_path)
            if kind is not None and not kind.consumes:
                self.error(
                    f"system '{trigger.event.system}' ({kind.name}) cannot feed an event trigger; "
                    "use a queue system (amqp) or a webhook path",
                    event_path,
                    code="capability",
                )
        for tpath, raw_target in _raw_targets(path, raw):
            target = _valid(Target, raw_target)
            if target is None:
                continue
            kind, options = self.system_ref(target.system, declared, (*tpath, "system"))
            if kind is not None:
                self.check_operation(kind, options, "write", target.write, (*tpath, "write"), target.system)
            if target.transform is not None:
                self.check_transform(target.transform, (*tpath, "transform"))
        transform = raw.get("transform")
        if isinstance(transform, str):
            self.check_transform(transform, (*path, "transform"))

    def check_read_identity(self, path: JsonPath, raw: dict[str, Any], source: Source, options: SystemOptions) -> None:
        """Warn where a read's dedupe id (its id and version) cannot tell a record's rows or changes apart."""
        assert source.read is not None
        where = (*path, "source")
        version = source.version or source.cursor
        ids = source.id if source.id is not None else raw.get("key")
        if version is None and not options.gives_row_ids(source.read):
            self.add(
                Severity.WARNING,
                f"this read has no version (no source.cursor or source.version): every pass delivers every record "
                f"of {source.system}.{source.read} again, and an older change cannot be told from a newer one",
                where,
                code="no-version",
                hint="name the field that grows with each change: source.cursor (read incrementally) or source.version",
            )
        if ids is not None and source.group_by is None and options.reads_rows(source.read):
            shown = ids if isinstance(ids, str) else ", ".join(ids)
            self.add(
                Severity.WARNING,
                f"{source.system}.{source.read} hands over flat rows, and rows sharing {shown} (and a version) are "
                "different records to seamline: each is delivered, the last one written over the others at the target",
                where,
                code="rows-per-id",
                hint=f"if one record comes as several rows (a row per language, price scale or line), collect them "
                f"with source.group_by: {shown}; if each row is its own record, add the field that tells them apart "
                "to source.id",
            )

    def system_ref(
        self, system: str, declared: set[str], path: JsonPath
    ) -> tuple[ConnectorKind | None, SystemOptions | None]:
        if "systems" in self.unusable:
            return None, None  # 'sytems:' is one mistake, already reported; not one more per flow
        if system not in declared:
            guess = closest(system, declared)
            message = f"system '{system}' is not declared under systems:"
            if guess:
                message += f" — did you mean '{guess}'?"
            self.error(
                message,
                path,
                code="unknown-system",
                hint=("declared systems: " + ", ".join(sorted(declared))) if declared else "",
            )
            return None, None
        options = self.report.systems.get(system)
        return (self.registry.get(options.connector) if options else None), options

    def check_operation(
        self,
        kind: ConnectorKind,
        options: SystemOptions | None,
        capability: str,
        op: str,
        path: JsonPath,
        system: str,
    ) -> None:
        valid = kind.operations(capability, options)  # type: ignore[arg-type]
        if capability == "write" and kind.any_write:
            return  # the target names free text (an AMQP routing key); any is valid
        if op in valid:
            return
        verb = {"read": "read", "write": "write", "call": "call"}[capability]
        if not valid:
            self.error(
                f"system '{system}' ({kind.name}) has nothing to {verb}",
                path,
                code="capability",
                hint=_capability_hint(kind, capability),
            )
            return
        guess = closest(op, valid)
        message = f"system '{system}' ({kind.name}) cannot {verb} '{op}'"
        if guess:
            message += f" — did you mean '{guess}'?"
        self.error(message, path, code="capability", hint=f"it can {verb}: " + ", ".join(sorted(valid)))

    # -- alerts --------------------------------------------------------------------------------
    def check_alerts(self, alerts: dict[str, Any]) -> None:
        """The flows and systems each rule watches, the notifiers it names, and the notifiers' secrets."""
        notify = alerts.get("notify")
        configured = {name for name in ("webhook", "email") if isinstance(notify, dict) and notify.get(name)}
        if isinstance(notify, dict):
            self.check_notifier_secrets(notify)
        rules = alerts.get("rules")
        if not isinstance(rules, dict):
            return
        if rules and not configured:
            self.add(
                Severity.WARNING,
                "no notifier under alerts.notify: the rules' notices only go to the daemon's log",
                ("alerts", "rules"),
                code="alert-notify",
                mark=self.merged.key_mark(("alerts", "rules")),
                hint="add alerts.notify.webhook (Slack, Teams) or alerts.notify.email",
            )
        for name, raw in rules.items():
            rule = _valid(AlertRule, raw)
            if rule is None:
                continue  # the shape check said why
            path: JsonPath = ("alerts", "rules", name)
            if rule.flow is not None:
                self.check_alert_flow(name, rule, rule.flow, (*path, "flow"))
            elif ALERT_CONDITIONS[rule.when].subject == "flow":
                self.check_alert_watches_something(rule, path)
            if rule.system is not None:
                systems = self.merged.data.get("systems") if isinstance(self.merged.data, dict) else None
                self.system_ref(rule.system, set(systems) if isinstance(systems, dict) else set(), (*path, "system"))
            for index, notifier in enumerate(rule.notify or []):
                if notifier not in configured:
                    self.error(
                        f"alert rule '{name}' sends to {notifier}, which alerts.notify does not configure",
                        (*path, "notify", index),
                        code="alert-notify",
                        hint=f"configure alerts.notify.{notifier}, or leave {notifier} out of this rule's notify",
                    )

    def _flows(self) -> dict[str, Any]:
        flows = self.merged.data.get("flows") if isinstance(self.merged.data, dict) else None
        return flows if isinstance(flows, dict) and "flows" not in self.unusable else {}

    def check_alert_flow(self, name: str, rule: AlertRule, flow: str, path: JsonPath) -> None:
        flows = self._flows()
        if flow not in flows:
            if "flows" in self.unusable:
                return
            guess = closest(flow, flows)
            self.error(
                f"alert rule '{name}' watches flow '{flow}', which is not declared under flows:"
                + (f" — did you mean '{guess}'?" if guess else ""),
                path,
                code="unknown-flow",
                hint=("declared flows: " + ", ".join(sorted(flows))) if flows else "",
            )
            return
        parsed = _valid(Flow, flows[flow])
        if parsed is None:
            return
        problem = _alert_misfit(rule.when, parsed)
        if problem:
            self.error(f"{rule.when} cannot watch flow '{flow}': {problem}", path, code="alert-flow")

    def check_alert_watches_something(self, rule: AlertRule, path: JsonPath) -> None:
        """A rule for every flow that fits none of them is a rule that never fires: say so."""
        flows = [parsed for raw in self._flows().values() if (parsed := _valid(Flow, raw)) is not None]
        if flows and all(_alert_misfit(rule.when, flow) for flow in flows):
            self.add(
                Severity.WARNING,
                f"{rule.when} applies to no flow of this spec: {_alert_misfit(rule.when, flows[0])}",
                path,
                code="alert-flow",
                mark=self.merged.key_mark(path),
            )

    def check_notifier_secrets(self, notify: dict[str, Any]) -> None:
        """A notifier's secrets come from secret templates, like a system's (the notices' channel is theirs)."""
        email = notify.get("email")
        if isinstance(email, dict) and isinstance(email.get("password"), str):
            where: JsonPath = ("alerts", "notify", "email", "password")
            password = email["password"]
            if "{{" not in password:
                self.error(
                    "'password' is written literally in the spec; secrets must not be committed",
                    where,
                    code="literal-secret",
                    hint="write  password: '{{ secret.SMTP_PASSWORD }}'  and provide SMTP_PASSWORD as an environment "
                    "variable or a file in $SEAMLINE_SECRETS_DIR",
                )
            elif any(ref.root == "env" for ref in analyse_template(password)[0]):
                self.add(
                    Severity.WARNING,
                    "'password' reads an environment variable; use secret.NAME so the value is masked in logs",
                    where,
                    code="secret-in-env",
                )
            if email.get("tls") == "none":
                self.add(
                    Severity.WARNING,
                    "the SMTP password is sent in plain text (tls: none)",
                    ("alerts", "notify", "email", "tls"),
                    code="plain-password",
                    hint="use tls: starttls (port 587) or implicit (465) unless the relay is on this host",
                )
        webhook = notify.get("webhook")
        url = webhook.get("url") if isinstance(webhook, dict) else None
        if isinstance(url, str) and "{{" not in url and not _LOOPBACK_URL.match(url):
            self.add(
                Severity.WARNING,
                "the webhook URL is written in the spec; a chat's incoming webhook URL carries its token",
                ("alerts", "notify", "webhook", "url"),
                code="literal-secret",
                hint="write  url: '{{ secret.ALERTS_WEBHOOK_URL }}'  so the URL stays out of the repository and logs",
            )

    def check_transform(self, value: str, path: JsonPath) -> None:
        source = self.expression_source(value, path)
        if source is None:
            return
        try:
            compile_expression(source)
        except TransformError as exc:
            self.diags.append(
                Diagnostic(
                    Severity.ERROR,
                    exc.message,
                    exc.file,
                    exc.line,
                    exc.column,
                    path=format_path(path),
                    code="jsonata",
                )
            )
            return
        self.check_names_used(source, path)

    def check_names_used(self, source: ExpressionSource, path: JsonPath) -> None:
        """Functions, code tables and constants an expression names must exist (read from its syntax tree)."""
        data = self.merged.data if isinstance(self.merged.data, dict) else {}
        raw_constants = data.get("constants")
        constants: set[str] = set(raw_constants) if isinstance(raw_constants, dict) else set()
        functions = JSONATA_BUILTINS | SEAMLINE_FUNCTIONS
        for used in names_used(source.text):
            line, col = source.position(used.offset)
            if used.kind == "function":
                if used.name in functions:
                    continue
                guess = closest(used.name, functions)
                message = f"${used.name}() is not a JSONata function"
                message += f" — did you mean ${guess}()?" if guess else ""
                code, hint = (
                    "unknown-function",
                    (
                        "functions: https://docs.jsonata.org/string-functions; define your own with "
                        "$name := function($x) { ... }"
                    ),
                )
            elif used.kind == "table-as-string":
                if "lookups" in self.unusable:
                    continue
                table = used.name if used.name in self.lookup_names else closest(used.name, self.lookup_names)
                message = (
                    f'$lookup is given the string "{used.name}", not a table: it looks the key up in that text and '
                    f"gives nothing; write $lookup($lookups.{_name_in_path(table or used.name)}, key)"
                )
                code = "lookup-form"
                hint = "a code table is read as $lookups.<table>; $lookup(table, key) finds one key in it"
            else:
                section = used.kind
                declared = self.lookup_names if section == "lookups" else constants
                if section in self.unusable or used.name in declared:
                    continue
                what = "$lookups reads table" if section == "lookups" else "$constants reads"
                guess = closest(used.name, declared)
                message = f"{what} '{used.name}', which is not declared under {section}:" + (
                    f" — did you mean '{guess}'?" if guess else ""
                )
                code = f"unknown-{section}"
                hint = (f"declared {section}: " + ", ".join(sorted(declared))) if declared else ""
            self.diags.append(
                Diagnostic(Severity.ERROR, message, source.file, line, col, format_path(path), code=code, hint=hint)
            )

    def expression_source(self, value: str, path: JsonPath) -> ExpressionSource | None:
        ref = expression_source(self.merged, value, path)
        if ref.source is not None:
            return ref.source
        if ref.file:
            self.diags.append(
                Diagnostic(Severity.ERROR, ref.problem, ref.file, ref.line, ref.column, format_path(path), ref.code)
            )
        else:
            self.error(ref.problem, path, code=ref.code, hint=ref.hint)
        return None

    def check_templates(self, data: dict[str, Any]) -> None:
        missing: dict[tuple[str, str], list[tuple[JsonPath, Mark]]] = {}
        for path, text in find_template_strings(data):
            mark = self._template_mark(path, text)
            refs, problems = analyse_template(text)
            for problem in problems:
                self.error(problem.message, path, code="template", hint=problem.hint, mark=mark)
            for ref in refs:
                present = ref.name in self.environ if ref.root == "env" else secret_available(ref.name, self.environ)
                if not present:
                    missing.setdefault((ref.root, ref.name), []).append((path, mark))
                if ref.root == "env" and path and path[-1] in SECRET_KEYS and "auth" in path:
                    self.add(
                        Severity.WARNING,
                        f"'{path[-1]}' reads env.{ref.name}; use secret.{ref.name} so the value is "
                        "masked in logs and errors",
                        path,
                        code="secret-in-env",
                        mark=mark,
                    )
        # One message per missing name, at its first use: CI logs stay readable.
        severity = Severity.ERROR if self.strict else Severity.WARNING
        for (root, name), uses in missing.items():
            path, mark = uses[0]
            if root == "env":
                message = f"environment variable '{name}' is not set"
            else:
                message = (
                    f"secret '{name}' is not available (no environment variable {name}, "
                    f"no file {name} in $SEAMLINE_SECRETS_DIR)"
                )
            if len(uses) > 1:
                message += f"; used in {len(uses)} places"
            hint = "set it where the daemon runs" + ("" if self.strict else "; --strict makes this an error")
            self.add(severity, message, path, code=f"missing-{root}", mark=mark, hint=hint)

    def _template_mark(self, path: JsonPath, text: str) -> Mark:
        """Where the template's first '{' is written, or the value's start."""
        mark = self.merged.mark(path)
        places = value_positions(self.merged, path, text)
        if places is None:
            return mark
        line, column = places[max(text.find("{"), 0)] if places else (mark.line, mark.column)
        return Mark(mark.file, line, column)


M = TypeVar("M", bound=BaseModel)


def _name_in_path(name: str) -> str:
    """A table name as it is written after ``$lookups.``: bare when it can be, else in backquotes."""
    return name if name.replace("_", "a").isalnum() and not name[0].isdigit() else f"`{name}`"


def _one_error_per_typo(diags: list[Diagnostic]) -> list[Diagnostic]:
    """'trigers:' is one mistake: keep "unknown key 'trigers' — did you mean 'trigger'?", drop the
    "missing required key 'trigger'" it causes in the same map."""
    meant = {
        (d.path.rpartition(".")[0], match.group(1))
        for d in diags
        if d.code == "unknown-key" and (match := re.search(r"did you mean '([^']+)'", d.message))
    }
    return [
        d
        for d in diags
        if not (d.code == "missing" and (d.path.rpartition(".")[0], d.path.rpartition(".")[2]) in meant)
    ]


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _one_line(d: Diagnostic) -> Diagnostic:
    """``d`` with control and invisible characters in its message, path and hint escaped."""
    if d.message.isprintable() and d.path.isprintable() and d.hint.isprintable():
        return d
    return replace(d, message=_printable(d.message), path=_printable(d.path), hint=_printable(d.hint))


_SECTIONS = ("constants", "systems", "lookups", "flows")


def _unusable_sections(data: dict[str, Any]) -> set[str]:
    """Sections named under a misspelt key ('sytems:') or that are not a map: the shape check said so."""
    out = {name for name in _SECTIONS if name in data and not isinstance(data[name], dict)}
    for key in data:
        if key not in SpecDocument.model_fields:
            guess = closest(key, _SECTIONS)
            if guess is not None and guess not in data:
                out.add(guess)
    return out


def _valid(model: type[M], raw: Any) -> M | None:
    """``raw`` as ``model`` when it is well-formed; None otherwise (the shape check reports why)."""
    if raw is None:
        return None
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def _raw_targets(path: JsonPath, raw: dict[str, Any]) -> list[tuple[JsonPath, Any]]:
    targets = raw.get("targets")
    if isinstance(targets, list):
        return [((*path, "targets", i), t) for i, t in enumerate(targets)]
    return [((*path, "target"), raw["target"])] if raw.get("target") is not None else []


def _served_paths(trigger: Trigger, path: JsonPath) -> list[tuple[JsonPath, str]]:
    out: list[tuple[JsonPath, str]] = []
    if trigger.request is not None:
        out.append(((*path, "trigger", "request", "path"), trigger.request.path))
    if trigger.event is not None and trigger.event.webhook is not None:
        out.append(((*path, "trigger", "event", "webhook"), trigger.event.webhook))
    return out


def _alert_misfit(when: str, flow: Flow) -> str:
    """Why an alert condition cannot watch ``flow`` ('' when it can)."""
    trigger = flow.trigger
    if when in ("schedule_failing", "schedule_stalled", "cursor_lag") and trigger.schedule is None:
        return f"it is {_a(trigger.kind)} flow, and {when} watches schedule flows"
    if when == "cursor_lag" and (flow.source is None or flow.source.cursor is None):
        return "its source has no cursor"
    if when == "request_p99" and trigger.request is None:
        return f"it is {_a(trigger.kind)} flow, and request_p99 watches request flows"
    if when == "consumer_stopped" and trigger.schedule is None and (trigger.event is None or not trigger.event.queue):
        return "it has no schedule and consumes no queue (a webhook or request flow has nothing that stops)"
    return ""


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _capability_hint(kind: ConnectorKind, capability: str) -> str:
    if kind.operations_in:
        return f"declare it under the system's {kind.operations_in}:"
    return f"connector '{kind.name}' does not support {capability}"
