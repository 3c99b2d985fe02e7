"""How an HTTP answer becomes the engine's error, in one place for every HTTP-based connector::

    408, 425, 429, 5xx            TransientError  (Retry-After, seconds or an HTTP-date -> retry_after)
    301, 302, 303, 307, 308       TerminalError   (redirects are not followed; the text names the Location)
    other 3xx, 4xx                TerminalError   quoting the server's own message (server_message)

A connector adds what its system means beyond that (Salesforce's REQUEST_LIMIT_EXCEEDED is transient,
Tryton's 404 names the database) and composes the text; the classification and Retry-After live here.
Failures below HTTP (timeouts, refused connections, an answer over a cap) are translated where they
enter, in :func:`engine.kit.http.session.transport_error`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

from engine.errors import TerminalError, TransientError

__all__ = ["TRANSIENT_STATUSES", "parse_retry_after", "server_message", "status_error", "transient_status"]

TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_MAGENTO_PARAM = re.compile(r"%(\w+)")


def transient_status(status: int) -> bool:
    """Whether trying again later may get another answer: 408, 425, 429 and every 5xx."""
    return status in TRANSIENT_STATUSES or status >= 500


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds to wait: a number of seconds or an HTTP-date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def status_error(
    text: str,
    status: int,
    header: Callable[[str], str | None],
    *,
    transient: bool | None = None,
) -> TransientError | TerminalError:
    """The error for an answer with ``status``: ``text`` says what was asked and what came back (already
    masked); ``header`` reads the answer's headers (Retry-After, Location). ``transient`` overrides the
    status's own meaning (a system that answers 403 when it is busy)."""
    if transient if transient is not None else transient_status(status):
        return TransientError(text, retry_after=parse_retry_after(header("Retry-After")), status=status)
    if status in REDIRECTS:
        location = header("Location") or "?"
        return TerminalError(f"{text} (redirected to {location}; set the url to the final address)", status=status)
    return TerminalError(text, status=status)


def _substitute(template: str, parameters: Any) -> str:
    """Magento's '%1' (positional) and '%name' (named) placeholders, filled from ``parameters``."""
    positional: list[Any] = parameters if isinstance(parameters, list) else []
    named: dict[str, Any] = {}
    if isinstance(parameters, dict):
        named = dict(parameters)
    for entry in positional:  # the published schema's form: [{"fieldName": ..., "fieldValue": ...}]
        if isinstance(entry, dict):
            named.update(entry)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.isdigit() and 0 < int(name) <= len(positional) and not isinstance(positional[int(name) - 1], dict):
            return str(positional[int(name) - 1])
        if name in named:
            return str(named[name])
        return match.group(0)

    return _MAGENTO_PARAM.sub(fill, template)


def server_message(body: Any, text: str = "") -> str:
    """The server's own explanation of an error, from the common body shapes; '' when it gave none.

    Magento ``{"message": "... %1", "parameters": [...]}`` (placeholders filled, ``errors`` appended),
    OData ``{"error": {"code", "message": {"value"}}}``, OAuth ``{"error", "error_description"}``,
    RFC 7807 ``{"title", "detail"}``, a bare JSON string, or else the start of the text.
    """
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str):
            result = _substitute(message, body.get("parameters"))
            errors = body.get("errors")
            if isinstance(errors, list):
                details = [
                    _substitute(e["message"], e.get("parameters"))
                    for e in errors
                    if isinstance(e, dict) and isinstance(e.get("message"), str)
                ]
                if details:
                    result += " (" + "; ".join(details) + ")"
            return result
        error = body.get("error")
        if isinstance(error, dict):
            inner = error.get("message")
            if isinstance(inner, dict):
                inner = inner.get("value")
            if isinstance(inner, str):
                code = error.get("code")
                return f"{code}: {inner}" if code else inner
        if isinstance(error, str):
            description = body.get("error_description")
            return f"{error}: {description}" if isinstance(description, str) and description else error
        for name in ("detail", "title", "error_message", "msg"):
            value = body.get(name)
            if isinstance(value, str) and value:
                return value
        errors = body.get("errors")
        if isinstance(errors, list) and errors and all(isinstance(e, str) for e in errors):
            return "; ".join(errors)
    if isinstance(body, str) and body:
        return body
    flat = " ".join(text.split())
    return flat[:300] + ("…" if len(flat) > 300 else "")
