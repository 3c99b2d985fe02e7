"""The web console: the daemon's state for a person, served by the daemon itself under ``/console/``.

Server-rendered HTML (Jinja2 templates beside this package, autoescaped) with one small script and one
stylesheet under ``/console/static/``: no front-end build, nothing from another origin. It reads what the JSON API
reads (engine/runtime/admin_api.py) through the same :class:`~engine.runtime.operator.Operator`, and its actions
(replay, reload, run now, cursor reset) are the same calls.

Pages: flows (``/console/``), dead letters and one letter, replay preview and result, a record's timeline, runs,
systems, cursors, the spec. Signing in, roles and CSRF: engine/console/session.py and the middleware of
engine/runtime/api.py.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from engine.console.pages import ROUTES, not_found, refusal
from engine.console.render import CONSOLE
from engine.console.throughput import THROUGHPUT, FinishedCounts, sampling
from engine.runtime.operator import Operator

__all__ = ["STATIC", "add_console_routes", "refusal"]

STATIC = Path(__file__).with_name("static")


def add_console_routes(app: web.Application, operator: Operator) -> None:
    """Serve the console for ``operator`` on ``app``, before the app's catch-all route (the flows' paths):
    unknown paths under /console/ are the console's "not found" page."""
    app[CONSOLE] = operator
    app[THROUGHPUT] = FinishedCounts()
    app.cleanup_ctx.append(sampling(operator))
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_static("/console/static/", STATIC, append_version=False)
    app.router.add_get("/console/{tail:.*}", not_found)
