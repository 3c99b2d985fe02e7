"""Pages from the Jinja2 templates beside this module: autoescaped, undefined names are errors, and every answer
carries headers that keep the console to its own scripts and styles and out of other sites' frames."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from engine.console.session import CSRF, ROLE, SESSIONS
from engine.runtime.operator import Operator

__all__ = ["CONSOLE", "NAV", "age", "page", "when"]

CONSOLE: web.AppKey[Operator] = web.AppKey("seamline_console")

# The pages in the header, in the order a night goes: what runs, what failed, and the rest.
NAV = (
    ("flows", "/console/", "Flows"),
    ("dead-letters", "/console/dead-letters", "Dead letters"),
    ("records", "/console/records", "Records"),
    ("runs", "/console/runs", "Runs"),
    ("systems", "/console/systems", "Systems"),
    ("cursors", "/console/cursors", "Cursors"),
    ("spec", "/console/spec", "Spec"),
)

HEADERS = {
    # Only this console's own files: no inline script or style, no other origin, no framing, no form posted away.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # pages show live state and records: never from a cache
}


def when(seconds: float | None) -> str:
    """A moment as people read it in a log: ``2026-12-06 03:10:12 UTC``."""
    if seconds is None:
        return "—"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float | None) -> str:
    """A duration, coarse: ``12 s``, ``4 min``, ``3 h 5 min``, ``2 d 4 h``."""
    if seconds is None:
        return "—"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


_ENV = Environment(
    loader=PackageLoader("engine.console", "templates"),
    autoescape=True,  # every value, .html or not: records and reasons come from outside
    undefined=StrictUndefined,  # a name a template misses is an error in the tests, not an empty cell
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["when"] = when
_ENV.filters["age"] = age


def page(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    """``template`` rendered for this request: who is asking (their role, their forms' CSRF field), the client,
    the navigation."""
    operator = request.app.get(CONSOLE)
    sessions = request.app.get(SESSIONS)
    html = _ENV.get_template(template).render(
        client=operator.client_name if operator is not None else "",
        # without the auth middleware nobody was let in as the operator: the pages offer no action
        role=request.get(ROLE, "viewer"),
        csrf=request.get(CSRF, ""),
        signed_in=sessions is not None and not sessions.open,
        nav=NAV,
        path=request.path,
        **context,
    )
    return web.Response(status=status, text=html, content_type="text/html", charset="utf-8", headers=HEADERS)
