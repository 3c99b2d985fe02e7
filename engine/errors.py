"""One exception tree for seamline; exit codes and retryability are part of the type.

::

    SeamlineError                      exit 1   base of everything we raise on purpose
    ├── UsageError                     exit 2   the command line itself is wrong (bad path, bad option)
    ├── ServeError                     exit 1   the daemon cannot serve where it was told (a port in use)
    ├── SpecError                      exit 1   a spec is invalid; carries every Diagnostic found
    ├── TransientError                 exit 1   worth retrying: timeouts, 429, 5xx, broker down
    └── TerminalError                  exit 1   retrying will not help: dead-letter it
        └── TransformError                      a JSONata expression failed on a record

Errors raised by libraries (PyYAML, jsonata, jinja2, httpx) are translated into this tree where
they enter seamline, so callers never see a library's exception type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "Diagnostic",
    "SeamlineError",
    "ServeError",
    "Severity",
    "SpecError",
    "TerminalError",
    "TransformError",
    "TransientError",
    "UsageError",
]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in a spec, with its place.

    ``line`` and ``column`` are 1-based, as editors show them; 0 means "the whole file".
    ``path`` is the JSON path inside the (merged) spec, such as ``flows.catalog.trigger``.
    """

    severity: Severity
    message: str
    file: str
    line: int = 0
    column: int = 0
    path: str = ""
    code: str = ""
    hint: str = field(default="", compare=False)

    def location(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"

    def render(self) -> str:
        text = f"{self.location()}: {self.severity.value}: {self.message}"
        if self.path:
            text += f"  [{self.path}]"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def sort_key(self) -> tuple[int, str, int, int]:
        rank = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.NOTE: 2}[self.severity]
        return (rank, self.file, self.line, self.column)


class SeamlineError(Exception):
    """Base of every error seamline raises on purpose."""

    exit_code: int = 1
    retryable: bool = False


class UsageError(SeamlineError):
    """The command line is wrong: a path that does not exist, an option out of range."""

    exit_code = 2


class ServeError(SeamlineError):
    """The daemon cannot serve where it was told to (a port in use): one line saying so, exit 1."""

    exit_code = 1


class SpecError(SeamlineError):
    """A spec did not validate. ``diagnostics`` holds every problem, best first."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        errors = [d for d in self.diagnostics if d.severity is Severity.ERROR]
        first = errors[0].render() if errors else "invalid spec"
        super().__init__(f"{len(errors)} error(s) in spec; first: {first}")


class TransientError(SeamlineError):
    """Worth retrying with backoff: the other side was slow, busy or briefly away.

    ``retry_after`` (seconds) is the other side's own word on when to come back (a 429's or
    503's Retry-After); the runtime waits at least that long.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class TerminalError(SeamlineError):
    """Retrying will not help: the record goes to dead letters with this reason."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransformError(TerminalError):
    """A JSONata expression failed to compile or to evaluate.

    Carries where: the expression's file (or the spec file for an inline expression), the
    1-based line and column inside that file, the JSONata error code, and the record id when
    the failure happened on a record.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str = "",
        line: int = 0,
        column: int = 0,
        code: str = "",
        client: str = "",
        flow: str = "",
        record_id: str = "",
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.code = code
        self.client = client
        self.flow = flow
        self.record_id = record_id
        where = f"{file}:{line}:{column}: " if file and line else (f"{file}: " if file else "")
        scope = f"[{client}/{flow}] " if client and flow else ""
        extra = f" (record {record_id})" if record_id else ""
        super().__init__(f"{scope}{where}{message}{extra}")
