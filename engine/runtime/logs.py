"""Structured logs: one JSON object per line, secrets masked, for the daemon's stderr.

Everything the daemon says goes through one :class:`JsonLog`: its own events, the connectors'
loggers (bound to their system, see :func:`engine.connector.system_log`) and the libraries'
(aiormq, aiohttp, httpx) once :func:`routed` is in force. Each line is masked as a whole, so a
secret a library puts in an exception message is masked like one the engine logs. With tracing on, a line
written while a record's span is current carries its ``trace_id`` (engine/runtime/tracing.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any, Literal

from engine.runtime.tracing import current_trace_id
from engine.secrets import Masker

__all__ = ["LEVELS", "JsonLog", "LogLevel", "iso_time", "routed"]

LogLevel = Literal["debug", "info", "warning", "error"]
LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

# Libraries that talk at INFO about every request or reconnect attempt: they are heard from at
# WARNING unless the daemon runs with --log-level debug.
_CHATTY = ("httpx", "httpcore", "aiormq", "aio_pika", "asyncio", "aiohttp.access", "aiosqlite", "watchfiles")


def iso_time(seconds: float) -> str:
    """ISO-8601 in UTC with milliseconds: 2026-12-06T01:30:09.123Z (sortable, and readable in a terminal)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLog:
    def __init__(
        self,
        client: str,
        masker: Masker,
        stream: IO[str] | None = None,
        *,
        level: str = "info",
        context: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.masker = masker
        self.stream = stream or sys.stderr
        self.context = dict(context or {})  # fields every line carries (a delivery process's number)
        self.level = level
        self._min = _LEVELS[level]

    def enabled(self, level: str) -> bool:
        return _LEVELS[level] >= self._min

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        if _LEVELS[level] < self._min:
            return
        record = {
            "ts": iso_time(time.time()),
            "level": level,
            "client": self.client,
            "event": event,
            **self.context,
            **fields,
        }
        trace_id = current_trace_id()  # "" at once when tracing is off
        if trace_id:  # a line said while a record's span is current finds its trace (a worker's retry, a letter)
            record["trace_id"] = trace_id
        line = self.masker(json.dumps(record, default=str, ensure_ascii=False))
        self.stream.write(line + "\n")
        self.stream.flush()

    def info(self, event: str, **fields: Any) -> None:
        self.event(event, "info", **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.event(event, "warning", **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.event(event, "error", **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self.event(event, "debug", **fields)


class _Routed(logging.Handler):
    """A Python logging handler that writes into a :class:`JsonLog` (masked, one line per record)."""

    def __init__(self, log: JsonLog) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = _level_of(record.levelno)
            if not self.log.enabled(level):
                return
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            system = record.__dict__.get("system")
            if system is not None:
                fields["system"] = system
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                fields["error"] = f"{type(exc).__name__}: {exc}"
                # A broker restart makes aiormq log its whole stack; one line says what happened,
                # the stack is for someone debugging.
                if self.log.enabled("debug"):
                    fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
            event = "connector_log" if record.name.startswith("seamline.connectors.") else "library_log"
            self.log.event(event, level, **fields)
        except Exception:  # a log line must never take the daemon down
            self.handleError(record)


def _level_of(levelno: int) -> LogLevel:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


@contextlib.contextmanager
def routed(log: JsonLog) -> Iterator[None]:
    """While in force, every Python logger (connectors', libraries') writes into ``log`` at its level."""
    root = logging.getLogger()
    handler = _Routed(log)
    before = root.level
    chatty = {name: logging.getLogger(name).level for name in _CHATTY}
    root.addHandler(handler)
    root.setLevel(_LEVELS[log.level])
    if not log.enabled("debug"):
        for name in _CHATTY:
            logging.getLogger(name).setLevel(max(logging.WARNING, _LEVELS[log.level]))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
        for name, level in chatty.items():
            logging.getLogger(name).setLevel(level)
