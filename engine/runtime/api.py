"""The daemon's HTTP API: health, readiness, metrics, webhooks and request triggers.

Everything but /healthz and /readyz needs ``Authorization: Bearer <token>``, unless the daemon
runs in dev mode, which is only allowed on a loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.errors import UsageError

if TYPE_CHECKING:
    from engine.runtime.daemon import Daemon

__all__ = ["build_app", "check_exposure"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
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


DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


def build_app(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[_auth], client_max_size=16 * 1024 * 1024)
    app[DAEMON] = daemon

    async def healthz(_request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        return await _ready(daemon)

    async def metrics(_request: web.Request) -> web.Response:
        return await _metrics(daemon)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    for path, flow_name in daemon.webhooks.items():
        app.router.add_post(path, _webhook(daemon, flow_name))
    for path, handler in daemon.requests.items():
        method = handler.flow.flow.trigger.request.method if handler.flow.flow.trigger.request else "POST"
        app.router.add_route(method, path, _request(daemon, path))
    return app


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False, default=str),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[DAEMON].token
    if token and request.path not in OPEN_PATHS:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return _json(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def _ready(daemon: Daemon) -> web.Response:
    if daemon.stopping or not daemon.started:
        return _json(503, {"status": "stopping" if daemon.stopping else "starting"})
    return _json(200, {"status": "ready", "flows": sorted(daemon.client.flows)})


async def _metrics(daemon: Daemon) -> web.Response:
    return web.Response(text=daemon.metrics.render(), content_type="text/plain", charset="utf-8")


def _webhook(daemon: Daemon, flow_name: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        if daemon.stopping:
            return _json(503, {"error": "shutting down; send again"}, {"Retry-After": "5"})
        body = await request.read()
        message_id = request.headers.get("X-Message-Id") or request.headers.get("Idempotency-Key") or ""
        added = await daemon.accept_event(flow_name, body, source=f"webhook:{request.path}", message_id=message_id)
        # Answered only after the inbox has it. The body of the usual answers is made once, not per event.
        accepted = _ACCEPTED[added] if added < len(_ACCEPTED) else json.dumps({"accepted": added}).encode()
        return web.Response(status=202, body=accepted, content_type="application/json")

    return handle


def _request(daemon: Daemon, path: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        if daemon.stopping:
            return _json(503, {"error": "shutting down"}, {"Retry-After": "5"})
        if request.method == "GET":
            payload: Any = dict(request.query)
        else:
            try:
                payload = json.loads(await request.read() or b"null")
            except json.JSONDecodeError as exc:
                return _json(400, {"error": f"the request body is not JSON: {exc}"})
        result = await daemon.requests[path].handle(payload)
        return _json(result.status, result.body, result.headers)

    return handle
