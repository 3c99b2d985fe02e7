"""The daemon's HTTP API: health, readiness, metrics, webhooks and request triggers, the operator's JSON API and
the web console.

Everything but /healthz, /readyz, the console's sign-in page and its static files needs a credential, unless the
daemon runs in dev mode (no token), which is only allowed on a loopback address and lets everyone in as the
operator. A credential is ``Authorization: Bearer <token>`` or the console's session cookie; the operator's token
gives the operator's role, the view token a read-only one, which may GET anything and change nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from aiohttp import web

from engine.console import add_console_routes, refusal
from engine.console.session import COOKIE, CSRF, CSRF_FIELD, CSRF_HEADER, ROLE, SESSIONS, Role, Sessions
from engine.errors import UsageError
from engine.runtime.admin_api import add_operator_routes
from engine.runtime.admin_api import json_response as _json
from engine.runtime.operator import Operator

if TYPE_CHECKING:
    from engine.runtime.triggers import RequestHandler


class Ingress(Protocol):
    """What the HTTP API needs of the daemon, and nothing more: readiness, events in, requests answered.

    The daemon implements it; a test can serve the API on anything else that does.
    """

    token: str | None  # the operator's: everything (None: dev mode, open)
    view_token: str | None  # read-only: GETs only
    started: bool
    stopping: bool
    stopped_triggers: dict[str, str]  # flow -> why its schedule or consumer stopped (/readyz degraded)
    body_budget: BodyBudget
    flow_names: list[str]
    generation: int  # +1 at each reload: the webhook and request paths are looked up again

    async def intake_ready(self) -> None:
        """Returns when the daemon takes events (at once, unless a reload is swapping its flows)."""
        ...

    @property
    def webhooks(self) -> Mapping[str, str]:
        """Path -> flow."""
        ...

    @property
    def requests(self) -> Mapping[str, RequestHandler]:
        """Path -> the request trigger's handler."""
        ...

    @property
    def body_timeout(self) -> float: ...

    def max_body(self, flow: str) -> int:
        """The largest body the flow's webhook or request path takes."""
        ...

    async def accept_event(
        self, flow: str, body: bytes, *, source: str, message_id: str = "", headers: Mapping[str, Any] | None = None
    ) -> int: ...

    async def metrics_text(self) -> str: ...


__all__ = ["BodyBudget", "Ingress", "build_app", "check_exposure", "read_body"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/console/login"})
OPEN_PREFIXES = ("/console/static/",)  # the console's stylesheet and script: the sign-in page uses them
READS = frozenset({"GET", "HEAD", "OPTIONS"})  # what the read-only role may send
ANYONE_POSTS = frozenset({"/console/logout"})  # a read-only session may still sign out
_ACCEPTED = tuple(json.dumps({"accepted": n}).encode() for n in range(2))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, dev: bool) -> None:
    """Refuse to serve an API without a token, except in dev mode on loopback."""
    if dev and not is_loopback(host):
        raise UsageError(f"--dev (no API token) is only allowed on a loopback address, not {host}")
    if not dev and not token:
        raise UsageError(
            "the daemon's HTTP API needs a token: set SEAMLINE_API_TOKEN (or --token-file), "
            "or use --dev while bound to 127.0.0.1"
        )


DAEMON: web.AppKey[Ingress] = web.AppKey("daemon")


def build_app(daemon: Ingress, operator: Operator | None = None) -> web.Application:
    """The daemon's HTTP API: health, metrics, the flows' webhook and request paths and, given an ``operator``,
    the operator's JSON API under /api/ (engine.runtime.admin_api)."""
    app = web.Application(middlewares=[_auth], client_max_size=16 * 1024 * 1024)
    app[DAEMON] = daemon
    app[SESSIONS] = Sessions(daemon)  # its signing key is new with each app: a restart signs everyone out
    if operator is not None:
        add_operator_routes(app, operator)
        add_console_routes(app, operator)
        app.router.add_get("/", _to_console)

    async def healthz(_request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        return await _ready(daemon)

    async def metrics(_request: web.Request) -> web.Response:
        return await _metrics(daemon)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    # Webhook and request-trigger paths are looked up per request: a reload may add, move or drop them.
    routes = _FlowRoutes(daemon)
    # The paths known now get routes of their own (aiohttp finds them by a dict lookup; a catch-all's pattern
    # match cost ~0.1 ms of CPU per webhook, measured); a path a reload adds is served by the catch-all.
    for method, path in routes.known():
        app.router.add_route(method, path, routes.dispatch)
    app.router.add_route("*", "/{path:.*}", routes.dispatch)
    return app


class _FlowRoutes:
    """The flows' own paths (webhooks, request triggers), as the daemon runs them now.

    Handlers are made once per daemon generation: a reload that changes a path or its ``max_body`` is
    served by the next request, and a request arriving during the swap waits for it (``intake_ready``).
    """

    def __init__(self, daemon: Ingress) -> None:
        self.daemon = daemon
        self.generation = -1
        self.routes: dict[tuple[str, str], Handler] = {}
        self.paths: set[str] = set()

    def _refresh(self) -> None:
        daemon = self.daemon
        routes: dict[tuple[str, str], Handler] = {}
        for path, flow_name in daemon.webhooks.items():
            routes[("POST", path)] = _webhook(daemon, flow_name)
        for path, handler in daemon.requests.items():
            method = handler.flow.flow.trigger.request.method if handler.flow.flow.trigger.request else "POST"
            routes[(method, path)] = _request(daemon, path)
        self.routes, self.paths = routes, {path for _method, path in routes}
        self.generation = daemon.generation

    def known(self) -> list[tuple[str, str]]:
        """(method, path) of the flows' paths now."""
        self._refresh()
        return sorted(self.routes)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        await self.daemon.intake_ready()
        if self.generation != self.daemon.generation:
            self._refresh()
        handler = self.routes.get((request.method, request.path))
        if handler is not None:
            return await handler(request)
        if request.path in self.paths:
            allowed = sorted(method for method, path in self.routes if path == request.path)
            return _json(
                405, {"error": f"{request.method} is not served at {request.path}"}, {"Allow": ", ".join(allowed)}
            )
        return _json(404, {"error": f"nothing is served at {request.path}"})


async def _to_console(_request: web.Request) -> web.Response:
    return web.Response(status=303, headers={"Location": "/console/"})


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is asking, and may they: a bearer token, else the console's session cookie, gives a role; the
    read-only role sends reads only; a change made with the cookie carries its session's CSRF field."""
    path = request.path
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return await handler(request)
    sessions = request.app[SESSIONS]
    if sessions.open:  # --dev: the operator, no sign-in; a console form still carries its CSRF field
        return await _let_in(request, handler, "operator", "dev", check_csrf=_is_console(path))
    authorization = request.headers.get("Authorization")
    if authorization is not None:  # a script: no cookie involved, so no request forged by another site
        role = sessions.bearer_role(authorization)
        if role is None:
            return _json(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
        return await _let_in(request, handler, role, "bearer", check_csrf=False)
    session = sessions.session(request.cookies.get(COOKIE))
    if session is not None:
        return await _let_in(request, handler, session.role, session.sid, check_csrf=True)
    if request.method in READS and (path == "/" or _is_console(path)):  # a person: to the sign-in page
        target = "/console/" if path == "/" else request.path_qs
        return web.Response(status=303, headers={"Location": f"/console/login?next={quote(target, safe='')}"})
    return _json(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})


def _is_console(path: str) -> bool:
    return path == "/console" or path.startswith("/console/")


async def _let_in(
    request: web.Request, handler: Handler, role: Role, sid: str, *, check_csrf: bool
) -> web.StreamResponse:
    sessions = request.app[SESSIONS]
    request[ROLE] = role
    if _is_console(request.path):  # what the pages put in their forms (an HMAC: not for every webhook)
        request[CSRF] = sessions.csrf(sid)
    if request.method not in READS:
        if role == "viewer" and request.path not in ANYONE_POSTS:
            return _refuse(
                request,
                403,
                f"read-only: the view token may look, not change anything; {request.method} {request.path} needs "
                "the operator's token",
            )
        if check_csrf and not sessions.csrf_ok(sid, await _csrf_given(request)):
            return _refuse(
                request,
                403,
                "this form did not come from this console session (a page from before a restart or a sign-out, or "
                "another site): reload the page and send it again",
            )
    return await handler(request)


_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


async def _csrf_given(request: web.Request) -> str | None:
    """The CSRF value a request carries: the ``X-CSRF-Token`` header, or a console form's hidden field (only the
    console's bodies are read here: a webhook's body is left whole for its handler)."""
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return header
    if _is_console(request.path) and request.content_type in _FORMS:
        value = (await request.post()).get(CSRF_FIELD)  # parsed once: the handler reads the same form
        return value if isinstance(value, str) else None
    return None


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    """A refusal as the asker reads it: the console's page for the console, JSON for the API and the rest."""
    if _is_console(request.path):
        return refusal(request, status, message)
    return _json(status, {"error": message})


async def _ready(daemon: Ingress) -> web.Response:
    if daemon.stopping or not daemon.started:
        return _json(503, {"status": "stopping" if daemon.stopping else "starting"})
    if daemon.stopped_triggers:
        # a flow whose schedule or consumer stopped takes no new work: not ready for all of its work
        return _json(503, {"status": "degraded", "stopped": dict(sorted(daemon.stopped_triggers.items()))})
    return _json(200, {"status": "ready", "flows": sorted(daemon.flow_names)})


async def _metrics(daemon: Ingress) -> web.Response:
    return web.Response(text=await daemon.metrics_text(), content_type="text/plain", charset="utf-8")


class BodyBudget:
    """Bytes of request bodies the daemon holds at once: a body is read only when its size fits in what is left.

    Forty 15 MB uploads at once must not take the daemon's memory with them: past the budget a sender is
    answered 503 with Retry-After and sends again later, as it would after any 503.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.taken = 0

    def try_take(self, size: int) -> bool:
        if self.taken + size > self.capacity and self.taken > 0:
            return False
        self.taken += size
        return True

    def give(self, size: int) -> None:
        self.taken = max(0, self.taken - size)


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@asynccontextmanager
async def read_body(request: web.Request, limit: int, budget: BodyBudget, timeout: float) -> AsyncIterator[bytes]:
    """The body, held against the budget until the block ends (it is parsed and stored there); refused unread
    when it says it is over ``limit`` (413), cut off when it turns out to be (413), refused when the budget is
    spent (503), or when it does not arrive within ``timeout`` seconds (408)."""
    length = request.content_length
    if length is not None and length > limit:
        raise _Refused(_json(413, {"error": f"the body is {length} bytes; this path takes at most {limit}"}))
    reserved = length if length is not None else limit
    if not budget.try_take(reserved):
        raise _Refused(_json(503, {"error": "busy reading other bodies; send again"}, {"Retry-After": "1"}))
    try:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await request.content.readany()
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise _Refused(
                            _json(413, {"error": f"the body is over {limit} bytes, the most this path takes"})
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise _Refused(
                _json(
                    408,
                    {"error": f"the body did not arrive within {timeout:g} s; send it again"},
                    {"Connection": "close"},
                )
            ) from None
        yield b"".join(chunks)
    finally:
        budget.give(reserved)


def _webhook(daemon: Ingress, flow_name: str) -> Handler:
    limit = daemon.max_body(flow_name)

    async def handle(request: web.Request) -> web.Response:
        if daemon.stopping:
            return _json(503, {"error": "shutting down; send again"}, {"Retry-After": "5"})
        message_id = request.headers.get("X-Message-Id") or request.headers.get("Idempotency-Key") or ""
        try:
            async with read_body(request, limit, daemon.body_budget, daemon.body_timeout) as body:
                added = await daemon.accept_event(
                    flow_name, body, source=f"webhook:{request.path}", message_id=message_id, headers=request.headers
                )
        except _Refused as refused:
            return refused.response
        except TimeoutError:  # the store did not take it in time: not accepted, the sender sends it again
            return _json(503, {"error": "the inbox is busy; send again"}, {"Retry-After": "2"})
        # Answered only after the inbox has it. The body of the usual answers is made once, not per event.
        accepted = _ACCEPTED[added] if added < len(_ACCEPTED) else json.dumps({"accepted": added}).encode()
        return web.Response(status=202, body=accepted, content_type="application/json")

    return handle


def _request(daemon: Ingress, path: str) -> Handler:
    limit = daemon.max_body(daemon.requests[path].flow.name)

    async def handle(request: web.Request) -> web.Response:
        if daemon.stopping:
            return _json(503, {"error": "shutting down"}, {"Retry-After": "5"})
        if request.method == "GET":
            payload: Any = dict(request.query)
        else:
            try:
                async with read_body(request, limit, daemon.body_budget, daemon.body_timeout) as body:
                    payload = json.loads(body or b"null")
            except _Refused as refused:
                return refused.response
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return _json(400, {"error": f"the request body is not JSON: {exc}"})
            except RecursionError:
                return _json(400, {"error": "the request body is JSON nested deeper than this engine reads"})
        result = await daemon.requests[path].handle(payload)
        return _json(result.status, result.body, result.headers)

    return handle
