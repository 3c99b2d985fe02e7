"""A small, real HTTP server that behaves like a generic REST API: for tests, crash tests and demos.

::

    with FakeHttpServer(port=0) as fake:
        fake.seed("/products", [{"id": 1, "sku": "A"}])
        fake.fail_next(2, status=429, retry_after="3")
        ...                                  # point a connector at fake.url
        fake.writes("/products")             # the write log, oldest first
        fake.applied_count()                 # writes that changed the store (duplicates excluded)

    seamline fake http --port 8081 [--state-file fake.json] [--bearer TOKEN] [--fail-path /products --fail-status 503]

What it does with a request, in this order:

1. ``/__fake/...`` is the admin API (never faulted, never authenticated): ``GET /__fake/log``,
   ``POST /__fake/reset``, ``GET|POST /__fake/faults`` (same keys as :meth:`FakeHttpServer.configure`),
   ``POST /__fake/seed`` ``{"path", "items"}``, ``GET /__fake/resources?prefix=``, ``GET /__fake/health``.
2. Faults: ``drop_next`` closes the socket without answering; ``latency`` waits; ``fail_next`` answers
   the next N requests (or ``"all"`` of them, until changed) with a status (and Retry-After, and a body
   if given), only those to one path or under it when it names a ``path``; ``error_rate`` answers that
   share of requests with ``error_status`` (seeded, so runs repeat).
3. Auth, when required: a bearer token, a basic user and password, or an API-key header; else 401.
4. ``intercept`` (a Python hook) and routes added with :meth:`FakeHttpServer.route`.
5. The store, keyed by path as sent (percent-encoded, no query): ``POST /c`` adds ``/c/<id>`` (the
   body's ``id`` or a new number) and answers 201; ``PUT /c/x`` stores (201 new, 200 replaced);
   ``PATCH`` merges (404 when missing); ``DELETE`` removes (204; 404 when missing). A write with an
   ``Idempotency-Key`` seen before gets the first answer again, is not applied, and is logged as a
   duplicate (a key reused for another method or path is a 422).
6. ``GET`` of a resource answers it; ``GET`` of a collection lists its direct children, filtered and paged.
   A collection nobody has written to yet is an empty page, not a 404, so a spec reading a fresh fake
   finds nothing to do: any path the fake does not know whose last segment is a word (``/products``,
   ``/api/sales-orders``) and whose parent is no collection. A path ending in an id (``/products/A-1``,
   ``/orders/42``) or under a known collection is a missing resource: 404.

   * generic: ``page``/``size`` (1-based), ``offset``/``limit``, or ``cursor``; filters ``f=v``,
     ``f_gte``, ``f_gt``, ``f_lte``, ``f_lt``; answer ``{"items", "total", "next", "next_cursor"}`` and a
     ``Link: <…>; rel="next"`` header. ``idempotency_key=K`` keeps the resources last written by a
     write with ``Idempotency-Key: K`` (as an API that stores the client's key with what it created lets
     a client look it up): what an endpoint's ``check`` asks after a crash; a field of that name in the
     stored records, when they have one, is filtered on instead;
   * OData V2 (any ``$`` parameter): ``$filter`` (``f ge datetime'…'`` clauses joined by ``and``),
     ``$orderby``, ``$top``, ``$skip``; answer ``{"d": {"results", "__count", "__next"}}``;
   * Magento (any ``searchCriteria`` parameter): filter groups, sort orders, ``pageSize``,
     ``currentPage``; answer ``{"items", "search_criteria", "total_count"}``, empty past the end.

   ``max_page_size`` caps every page (for OData the rest of a ``$top`` window comes by ``__next``).

Thread-safe (one lock around the state); keep-alive HTTP/1.1; :meth:`FakeHttpServer.stop` also closes
open keep-alive connections, so a stopped fake really is gone. With a state file, the store, the
idempotency keys and the write log survive a restart.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from engine.fakeserver import ServedFake, TrackingHTTPServer, listen, serve_until_signalled

__all__ = ["FakeHttpServer", "FakeRequest", "FakeResponse", "main"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
IDEMPOTENCY_FILTER = "idempotency_key"  # a list filter on the Idempotency-Key that last wrote each resource
_PAGING = frozenset({"page", "size", "limit", "offset", "cursor"})
_MAGENTO_KEY = re.compile(r"^searchCriteria\[(filter_groups|filterGroups)\]\[(\d+)\]\[filters\]\[(\d+)\]\[(\w+)\]$")
_MAGENTO_SORT = re.compile(r"^searchCriteria\[(sort_orders|sortOrders)\]\[(\d+)\]\[(\w+)\]$")
_COLLECTION_NAME = re.compile(r"^[a-z]+(?:[-_][a-z]+)*$")  # products, sales-orders: not an id such as A-1 or 42
_ODATA_CLAUSE = re.compile(r"^\(?\s*([\w/]+)\s+(eq|ne|gt|ge|lt|le)\s+(.+?)\s*\)?$")


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    base_url: str

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None

    @property
    def url(self) -> str:
        return self.base_url + self.path + (f"?{urlencode(self.query)}" if self.query else "")


@dataclass(slots=True)
class FakeResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[FakeRequest], FakeResponse]


@dataclass(slots=True)
class _Faults:
    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    fail_next: int = 0
    fail_status: int = 503
    fail_retry_after: str | None = None
    fail_body: Any = None
    fail_all: bool = False  # every request (under fail_path) fails until the fault is changed
    fail_path: str | None = None  # only requests to this path, or under it, fail
    drop_next: int = 0
    auth: dict[str, Any] | None = None
    max_page_size: int = 1000

    def as_json(self) -> dict[str, Any]:
        return {
            "latency": self.latency,
            "error_rate": self.error_rate,
            "error_status": self.error_status,
            "fail_next": {
                "count": "all" if self.fail_all else self.fail_next,
                "status": self.fail_status,
                "retry_after": self.fail_retry_after,
                "body": self.fail_body,
                "path": self.fail_path,
            },
            "drop_next": self.drop_next,
            "auth": self.auth,
            "max_page_size": self.max_page_size,
        }


class _Server(TrackingHTTPServer):
    fake: FakeHttpServer

    def __init__(self, address: tuple[str, int], fake: FakeHttpServer) -> None:
        super().__init__(address, _RequestHandler, fake)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "seamline-fake/0.1"
    timeout = 30  # idle keep-alive connections are closed after this
    disable_nagle_algorithm = True  # headers and body leave at once, not after the client's delayed ACK
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the logs they need
        return

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        host = self.headers.get("Host") or f"{self.server.fake.host}:{self.server.fake.port}"
        request = FakeRequest(
            method=self.command,
            path=parts.path or "/",
            query=parse_qsl(parts.query, keep_blank_values=True),
            headers=dict(self.headers.items()),
            body=body,
            base_url=f"http://{host}",
        )
        response = self.server.fake.handle(request)
        if response is None:  # drop the connection without answering
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = _encode(response.body)
        self.send_response(response.status)
        headers = {"Content-Type": "application/json", **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


def _encode(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body, separators=(",", ":")).encode()


def _message(text: str, *parameters: Any) -> dict[str, Any]:
    """An error body in Magento's shape: a template with %1, %2… and its parameters."""
    body: dict[str, Any] = {"message": text}
    if parameters:
        body["parameters"] = [str(p) for p in parameters]
    return body


def _compare(left: Any, right: str) -> int | None:
    """-1/0/1 comparing a record's value with a query value (numbers as numbers); None when absent."""
    if left is None:
        return None
    try:
        a: Any = float(left)
        b: Any = float(right)
    except (TypeError, ValueError):
        a, b = str(left), right
    return int(a > b) - int(a < b)


class FakeHttpServer(ServedFake):
    """See the module docstring. ``port=0`` picks a free port; :attr:`url` says which."""

    thread_name = "fake-http"

    def _make_server(self) -> TrackingHTTPServer:
        return _Server((self.host, self.port), self)

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        state_file: str | Path | None = None,
        seed: int = 0,
        default_page_size: int = 20,
    ) -> None:
        self.host = host
        self.port = port
        self.state_file = Path(state_file) if state_file is not None else None
        self.default_page_size = default_page_size
        self.intercept: Handler | Callable[[FakeRequest], FakeResponse | None] | None = None
        self._seed = seed
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[tuple[str, str], Handler] = {}
        self._in_flight = 0  # not reset with the rest: requests being answered still finish
        self._clear()
        self._load()

    # -- state ----------------------------------------------------------------------------------
    def _clear(self) -> None:
        self._resources: dict[str, Any] = {}
        self._collections: set[str] = set()
        self._idempotency: dict[str, dict[str, Any]] = {}
        self._written_by: dict[str, str] = {}  # resource path -> Idempotency-Key of the write that last set it
        self._log: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._next_id = 1
        self._peak_in_flight = 0
        self._faults = _Faults()
        self._random = random.Random(self._seed)

    def reset(self) -> None:
        """Forget everything: the store, the logs, the idempotency keys and the faults (routes stay)."""
        with self._lock:
            self._clear()
            self._save()

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        data = json.loads(self.state_file.read_text(encoding="utf-8"))
        self._resources = dict(data.get("resources", {}))
        self._collections = set(data.get("collections", []))
        self._idempotency = dict(data.get("idempotency", {}))
        self._written_by = dict(data.get("written_by", {}))
        self._log = list(data.get("log", []))
        self._next_id = int(data.get("next_id", 1))

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {
            "resources": self._resources,
            "collections": sorted(self._collections),
            "idempotency": self._idempotency,
            "written_by": self._written_by,
            "log": self._log,
            "next_id": self._next_id,
        }
        temp = self.state_file.with_name(self.state_file.name + ".tmp")
        temp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(temp, self.state_file)

    def seed(self, path: str, items: Iterable[Any], id_field: str = "id") -> None:
        """Put records in the collection at ``path`` (each under ``path/<its id_field>``); not logged."""
        collection = path.rstrip("/") or "/"
        with self._lock:
            self._collections.add(collection)
            for item in items:
                key = item.get(id_field) if isinstance(item, dict) else None
                if key is None:
                    key = self._take_id()
                self._resources[f"{collection}/{key}"] = item
            self._save()

    def resource(self, path: str) -> Any:
        with self._lock:
            return self._resources.get(path.rstrip("/"))

    def resources(self, prefix: str = "") -> dict[str, Any]:
        with self._lock:
            return {p: v for p, v in self._resources.items() if p.startswith(prefix)}

    def writes(self, path_prefix: str = "") -> list[dict[str, Any]]:
        """The write log, oldest first: every write that got past the faults and auth, with its status,
        whether it was an idempotent replay (``duplicate``), and its body (None when not JSON)."""
        with self._lock:
            return [dict(entry) for entry in self._log if entry["path"].startswith(path_prefix)]

    def applied_count(self, path_prefix: str = "") -> int:
        """Writes that changed the store: 2xx and not an idempotent replay."""
        return sum(1 for e in self.writes(path_prefix) if not e["duplicate"] and 200 <= e["status"] < 300)

    def requests(self) -> list[dict[str, Any]]:
        """Every request but the admin ones (the last 1000): method, path, query (decoded pairs), the
        Authorization header, and the status answered (None when the connection was dropped)."""
        with self._lock:
            return [dict(entry) for entry in self._requests]

    # -- faults and extension -------------------------------------------------------------------
    def configure(self, **knobs: Any) -> None:
        """Set fault knobs: latency (s), error_rate (0..1), error_status, fail_next ({count, status,
        retry_after, body, path} or a count; count "all" fails every request until changed, path limits
        the fault to requests to that path or under it), drop_next, auth ({bearer: token} | {basic:
        {username, password}} | {api_key: {header, key}} | None), max_page_size."""
        with self._lock:
            faults = self._faults
            for name, value in knobs.items():
                if name == "fail_next":
                    spec = value if isinstance(value, dict) else {"count": value}
                    count, path = _fail_count(spec.get("count", 1)), _fail_path(spec.get("path"))
                    faults.fail_all, faults.fail_next = count == "all", 0 if count == "all" else int(count)
                    faults.fail_path = path
                    faults.fail_status = int(spec.get("status", 503))
                    after = spec.get("retry_after")
                    faults.fail_retry_after = None if after is None else str(after)
                    faults.fail_body = spec.get("body")
                elif name in ("latency", "error_rate"):
                    setattr(faults, name, float(value))
                elif name in ("error_status", "drop_next", "max_page_size"):
                    setattr(faults, name, int(value))
                elif name == "auth":
                    faults.auth = _check_auth(value)
                else:
                    known = ", ".join(sorted(_Faults().as_json()))
                    raise ValueError(f"unknown fault knob {name!r}; known: {known}")

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return self._faults.as_json()

    def fail_next(
        self,
        count: int | str,
        status: int = 503,
        *,
        retry_after: str | None = None,
        body: Any = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (``"all"``: every one) with ``status``; with ``path``, only
        requests to that path or under it (``/products`` fails ``/products/A-1`` too)."""
        spec = {"count": count, "status": status, "retry_after": retry_after, "body": body, "path": path}
        self.configure(fail_next=spec)

    def drop_next(self, count: int = 1) -> None:
        self.configure(drop_next=count)

    def require_auth(
        self,
        *,
        bearer: str | None = None,
        basic: tuple[str, str] | None = None,
        api_key: tuple[str, str] | None = None,
    ) -> None:
        """Require one credential on every non-admin request (all None: no auth)."""
        if bearer is not None:
            self.configure(auth={"bearer": bearer})
        elif basic is not None:
            self.configure(auth={"basic": {"username": basic[0], "password": basic[1]}})
        elif api_key is not None:
            self.configure(auth={"api_key": {"header": api_key[0], "key": api_key[1]}})
        else:
            self.configure(auth=None)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer ``method path`` with ``handler`` (after faults and auth, before the store)."""
        with self._lock:
            self._routes[(method.upper(), path)] = handler

    # -- the request path -----------------------------------------------------------------------
    def handle(self, request: FakeRequest) -> FakeResponse | None:
        """Answer one request; None means: drop the connection without answering."""
        if request.path.startswith("/__fake/"):
            return self._admin(request)
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            return self._answer(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def peak_in_flight(self) -> int:
        """The most requests this fake was answering at one time (a client's concurrency limit, seen from here)."""
        with self._lock:
            return self._peak_in_flight

    def _answer(self, request: FakeRequest) -> FakeResponse | None:
        with self._lock:
            faults = self._faults
            if faults.drop_next > 0:
                faults.drop_next -= 1
                self._note(request, None)
                return None
            latency = faults.latency
        if latency > 0:
            time.sleep(latency)
        with self._lock:
            response = self._faulted(request) or self._unauthorized(request)
            if response is None:
                hook = self.intercept
                response = hook(request) if hook is not None else None
            if response is None:
                route = self._routes.get((request.method, request.path))
                response = route(request) if route is not None else self._store(request)
            self._note(request, response.status)
            return response

    def _note(self, request: FakeRequest, status: int | None) -> None:
        self._requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "authorization": request.header("Authorization"),
                "status": status,
            }
        )
        del self._requests[:-1000]

    def _faulted(self, request: FakeRequest) -> FakeResponse | None:
        faults = self._faults
        targeted = faults.fail_path is None or _under(request.path, faults.fail_path)
        if targeted and (faults.fail_all or faults.fail_next > 0):
            if not faults.fail_all:
                faults.fail_next -= 1
            status = faults.fail_status
            headers = {"Retry-After": faults.fail_retry_after} if faults.fail_retry_after is not None else {}
            body = faults.fail_body
            if body is None:
                body = (
                    {"message": "Too Many Requests", "trace": None}
                    if status == 429
                    else _message("injected %1", status)
                )
            return FakeResponse(status, body, headers)
        if faults.error_rate > 0 and self._random.random() < faults.error_rate:
            return FakeResponse(faults.error_status, _message("injected random failure %1", faults.error_status))
        return None

    def _unauthorized(self, request: FakeRequest) -> FakeResponse | None:
        auth = self._faults.auth
        if auth is None:
            return None
        given = request.header("Authorization") or ""
        if "bearer" in auth:
            ok = given == f"Bearer {auth['bearer']}"
        elif "basic" in auth:
            pair = f"{auth['basic']['username']}:{auth['basic']['password']}".encode()
            ok = given == "Basic " + base64.b64encode(pair).decode()
        else:
            ok = request.header(auth["api_key"]["header"]) == auth["api_key"]["key"]
        if ok:
            return None
        body = {
            "message": "The consumer isn't authorized to access %resources.",
            "parameters": {"resources": request.path},
        }
        return FakeResponse(401, body, {"WWW-Authenticate": 'Bearer realm="fake"'})

    def _store(self, request: FakeRequest) -> FakeResponse:
        path = request.path.rstrip("/") or "/"
        if request.method in WRITE_METHODS:
            return self._write(request, path)
        if request.method in ("GET", "HEAD"):
            if path in self._resources:
                return FakeResponse(200, self._resources[path])
            if self._is_collection(path):
                return self._list(request, path)
            parent, name = path.rsplit("/", 1)
            if not self._is_collection(parent) and _COLLECTION_NAME.match(name):
                return self._list(request, path)  # a collection nobody has written to yet: an empty page
            if self._is_collection(parent):
                return FakeResponse(404, _message("The entity that was requested doesn't exist: %1", path))
            return FakeResponse(404, {"message": "Request does not match any route.", "trace": None})
        return FakeResponse(405, _message("Method %1 is not allowed", request.method))

    def _is_collection(self, path: str) -> bool:
        """Whether ``path`` is a collection the fake knows: written to or seeded, or holding resources."""
        return path in self._collections or any(p.rsplit("/", 1)[0] == path for p in self._resources)

    # -- writes ---------------------------------------------------------------------------------
    def _write(self, request: FakeRequest, path: str) -> FakeResponse:
        key = request.header("Idempotency-Key")
        if key is not None and key in self._idempotency:
            first = self._idempotency[key]
            if (first["method"], first["path"]) != (request.method, path):
                self._append_log(request, path, 422, key, duplicate=False)
                self._save()
                return FakeResponse(
                    422, _message("Idempotency-Key %1 was used for %2 %3", key, first["method"], first["path"])
                )
            self._append_log(request, path, first["status"], key, duplicate=True)
            self._save()
            headers = {**first["headers"], "Idempotent-Replayed": "true"}
            return FakeResponse(first["status"], first["body"], headers)
        try:
            body = request.json()
        except ValueError as exc:
            self._append_log(request, path, 400, key, duplicate=False)
            self._save()
            return FakeResponse(400, _message("Decoding error: %1", exc))
        response = self._apply(request.method, path, body)
        self._append_log(request, path, response.status, key, duplicate=False, body=body)
        if 200 <= response.status < 300:
            self._remember_writer(request.method, response.headers.get("Location") or path, key)
        if key is not None and 200 <= response.status < 300:
            self._idempotency[key] = {
                "method": request.method,
                "path": path,
                "status": response.status,
                "body": response.body,
                "headers": response.headers,
            }
        self._save()
        return response

    def _apply(self, method: str, path: str, body: Any) -> FakeResponse:
        if method == "POST":
            if body is None:
                return FakeResponse(400, _message("The request body is empty."))
            item_id = body.get("id") if isinstance(body, dict) else None
            if item_id is None:
                item_id = self._take_id()
                if isinstance(body, dict):
                    body = {"id": item_id, **body}
            self._collections.add(path)
            self._resources[f"{path}/{item_id}"] = body
            return FakeResponse(201, body, {"Location": f"{path}/{item_id}"})
        if method == "PUT":
            if body is None:
                return FakeResponse(400, _message("The request body is empty."))
            existed = path in self._resources
            self._collections.add(path.rsplit("/", 1)[0] or "/")
            self._resources[path] = body
            return FakeResponse(200 if existed else 201, body)
        if path not in self._resources:
            return FakeResponse(404, _message("The entity that was requested doesn't exist: %1", path))
        if method == "PATCH":
            current = self._resources[path]
            merged = {**current, **body} if isinstance(current, dict) and isinstance(body, dict) else body
            self._resources[path] = merged
            return FakeResponse(200, merged)
        del self._resources[path]
        return FakeResponse(204)

    def _remember_writer(self, method: str, resource: str, key: str | None) -> None:
        """Keep which Idempotency-Key last set a resource, for ``?idempotency_key=`` in a list."""
        if method == "DELETE" or key is None:
            self._written_by.pop(resource, None)
        else:
            self._written_by[resource] = key

    def _append_log(
        self, request: FakeRequest, path: str, status: int, key: str | None, *, duplicate: bool, body: Any = None
    ) -> None:
        if body is None:
            try:
                body = request.json()
            except ValueError:
                body = None
        self._log.append(
            {
                "seq": len(self._log) + 1,
                "method": request.method,
                "path": path,
                "body": body,
                "idempotency_key": key,
                "status": status,
                "duplicate": duplicate,
                "at": time.time(),
            }
        )

    def _take_id(self) -> int:
        value = self._next_id
        self._next_id += 1
        return value

    # -- listing --------------------------------------------------------------------------------
    def _children(self, path: str) -> list[Any]:
        return [value for _, value in self._child_items(path)]

    def _child_items(self, path: str) -> list[tuple[str, Any]]:
        """(resource path, value) of the direct children of a collection."""
        prefix = path.rstrip("/") + "/"
        return [(p, v) for p, v in self._resources.items() if p.startswith(prefix) and "/" not in p[len(prefix) :]]

    def _list(self, request: FakeRequest, path: str) -> FakeResponse:
        names = {name for name, _ in request.query}
        if any(name.startswith("searchCriteria") for name in names):
            return self._list_magento(request, path)
        if any(name.startswith("$") for name in names):
            return self._list_odata(request, path)
        return self._list_generic(request, path)

    def _list_generic(self, request: FakeRequest, path: str) -> FakeResponse:
        params = dict(request.query)
        children = self._child_items(path)
        filters = [(k, v) for k, v in request.query if k not in _PAGING]
        for name, value in filters:
            if name == IDEMPOTENCY_FILTER and not any(isinstance(v, dict) and name in v for _, v in children):
                children = [(p, v) for p, v in children if self._written_by.get(p) == value]
            else:
                children = [(p, v) for p, v in children if _generic_match(v, name, value)]
        items = [value for _, value in children]
        try:
            size = int(params.get("size") or params.get("limit") or self.default_page_size)
            if "cursor" in params:
                start = int(base64.urlsafe_b64decode(params["cursor"].encode()).decode())
            elif "offset" in params:
                start = int(params["offset"])
            elif "page" in params:
                start = (int(params["page"]) - 1) * size
            else:
                start = 0
        except ValueError:
            return FakeResponse(400, _message("Invalid paging parameters: %1", urlencode(request.query)))
        if size < 1 or start < 0:
            return FakeResponse(400, _message("Invalid paging parameters: %1", urlencode(request.query)))
        size = min(size, self._faults.max_page_size)
        page = items[start : start + size]
        end = start + len(page)
        body: dict[str, Any] = {"items": page, "total": len(items), "next": None, "next_cursor": None}
        headers: dict[str, str] = {}
        if end < len(items):
            token = base64.urlsafe_b64encode(str(end).encode()).decode()
            link = f"{request.base_url}{path}?" + urlencode([*filters, ("cursor", token), ("size", str(size))])
            body.update(next=link, next_cursor=token)
            headers["Link"] = f'<{link}>; rel="next"'
        return FakeResponse(200, body, headers)

    def _list_odata(self, request: FakeRequest, path: str) -> FakeResponse:
        params = dict(request.query)
        items = self._children(path)
        for clause in filter(None, re.split(r"\s+and\s+", params.get("$filter", ""))):
            match = _ODATA_CLAUSE.match(clause.strip())
            if match is None:
                return FakeResponse(
                    400, {"error": {"code": "FAKE/001", "message": {"value": f"bad $filter: {clause}"}}}
                )
            name, op, literal = match.groups()
            value = re.sub(r"^(datetime|datetimeoffset)?'(.*)'$", r"\2", literal).replace("''", "'")
            items = [item for item in items if _odata_match(item, name, op, value)]
        if "$orderby" in params:
            name, _, direction = params["$orderby"].partition(" ")
            items.sort(key=lambda item: str(item.get(name, "")), reverse=direction.strip().lower() == "desc")
        skip = int(params.get("$skip", "0"))
        top = int(params["$top"]) if "$top" in params else None
        window = items[skip:] if top is None else items[skip : skip + top]
        page = window[: self._faults.max_page_size]
        envelope: dict[str, Any] = {"results": page, "__count": str(len(items))}
        if len(page) < len(window):
            rest = [(k, v) for k, v in request.query if k not in ("$skip", "$top")]
            rest.append(("$skip", str(skip + len(page))))
            if top is not None:
                rest.append(("$top", str(top - len(page))))
            envelope["__next"] = f"{request.base_url}{path}?{urlencode(rest)}"
        return FakeResponse(200, {"d": envelope})

    def _list_magento(self, request: FakeRequest, path: str) -> FakeResponse:
        groups: dict[int, dict[int, dict[str, str]]] = {}
        sorts: dict[int, dict[str, str]] = {}
        size: int | None = None
        current = 1
        for name, value in request.query:
            if match := _MAGENTO_KEY.match(name):
                groups.setdefault(int(match.group(2)), {}).setdefault(int(match.group(3)), {})[match.group(4)] = value
            elif match := _MAGENTO_SORT.match(name):
                sorts.setdefault(int(match.group(2)), {})[match.group(3)] = value
            elif name == "searchCriteria[pageSize]":
                size = int(value)
            elif name == "searchCriteria[currentPage]":
                current = int(value)
        items = self._children(path)
        for group in groups.values():
            items = [item for item in items if any(_magento_match(item, f) for f in group.values())]
        for order in reversed([sorts[k] for k in sorted(sorts)]):
            name = order.get("field", "")
            items.sort(
                key=lambda item: str(item.get(name, "")), reverse=order.get("direction", "ASC").upper() == "DESC"
            )
        if size is not None:
            size = min(size, self._faults.max_page_size)
            page = items[(current - 1) * size : current * size]
        else:
            page = items
        echo: dict[str, Any] = {"filter_groups": [{"filters": list(g.values())} for _, g in sorted(groups.items())]}
        if size is not None:
            echo.update(page_size=size, current_page=current)
        return FakeResponse(200, {"items": page, "search_criteria": echo, "total_count": len(items)})

    # -- admin ----------------------------------------------------------------------------------
    def _admin(self, request: FakeRequest) -> FakeResponse:
        what = request.path[len("/__fake/") :].strip("/")
        try:
            if what == "health":
                return FakeResponse(200, {"ok": True})
            if what == "log":
                return FakeResponse(200, self.writes(dict(request.query).get("prefix", "")))
            if what == "requests":
                return FakeResponse(200, self.requests())
            if what == "resources":
                return FakeResponse(200, self.resources(dict(request.query).get("prefix", "")))
            if what == "reset" and request.method == "POST":
                self.reset()
                return FakeResponse(200, {"ok": True})
            if what == "faults":
                if request.method == "POST":
                    self.configure(**(request.json() or {}))
                return FakeResponse(200, self.faults())
            if what == "seed" and request.method == "POST":
                data = request.json() or {}
                self.seed(str(data["path"]), list(data.get("items", [])), str(data.get("id_field", "id")))
                return FakeResponse(200, {"ok": True})
        except (ValueError, KeyError, TypeError) as exc:
            return FakeResponse(400, _message("Bad admin request: %1", exc))
        return FakeResponse(404, _message("No admin endpoint %1 %2", request.method, request.path))


def _under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it (``/products/A-1`` is under ``/products``;
    ``/products-archive`` is not)."""
    prefix = prefix.rstrip("/") or "/"
    return path == prefix or path.startswith(prefix if prefix == "/" else prefix + "/")


def _fail_count(value: Any) -> int | str:
    if value == "all":
        return "all"
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f'fail_next.count is a number of requests or "all"; got {value!r}')


def _fail_path(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.startswith("/")):
        return value
    raise ValueError(f"fail_next.path is a path starting with '/', such as '/products'; got {value!r}")


def _check_auth(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict) and len(value) == 1:
        if isinstance(value.get("bearer"), str):
            return value
        basic = value.get("basic")
        if isinstance(basic, dict) and {"username", "password"} <= set(basic):
            return value
        api_key = value.get("api_key")
        if isinstance(api_key, dict) and {"header", "key"} <= set(api_key):
            return value
    raise ValueError(
        "auth is one of {bearer: token}, {basic: {username, password}}, {api_key: {header, key}} or null; "
        f"got {value!r}"
    )


_RANGES: tuple[tuple[str, Callable[[int], bool]], ...] = (
    ("_gte", lambda c: c >= 0),
    ("_gt", lambda c: c > 0),
    ("_lte", lambda c: c <= 0),
    ("_lt", lambda c: c < 0),
)


def _generic_match(item: Any, name: str, value: str) -> bool:
    if not isinstance(item, dict):
        return False
    for suffix, test in _RANGES:
        if name.endswith(suffix) and name[: -len(suffix)] in item:
            compared = _compare(item[name[: -len(suffix)]], value)
            return compared is not None and test(compared)
    return _compare(item.get(name), value) == 0


def _odata_match(item: Any, name: str, op: str, value: str) -> bool:
    compared = _compare(item.get(name) if isinstance(item, dict) else None, value)
    if compared is None:
        return False
    return {
        "eq": compared == 0,
        "ne": compared != 0,
        "gt": compared > 0,
        "ge": compared >= 0,
        "lt": compared < 0,
        "le": compared <= 0,
    }[op]


def _magento_match(item: Any, spec: dict[str, str]) -> bool:
    actual = item.get(spec.get("field", "")) if isinstance(item, dict) else None
    condition = spec.get("condition_type", "eq")
    value = spec.get("value", "")
    if condition == "null":
        return actual is None
    if condition == "notnull":
        return actual is not None
    if condition in ("in", "nin"):
        inside = actual is not None and str(actual) in value.split(",")
        return inside if condition == "in" else not inside
    if condition in ("like", "nlike"):
        pattern = "^" + ".*".join(re.escape(part) for part in value.split("%")) + "$"
        hit = actual is not None and re.match(pattern, str(actual)) is not None
        return hit if condition == "like" else not hit
    compared = _compare(actual, value)
    if compared is None:
        return False
    checks = {
        "eq": compared == 0,
        "neq": compared != 0,
        "gt": compared > 0,
        "gteq": compared >= 0,
        "from": compared >= 0,
        "moreq": compared >= 0,
        "lt": compared < 0,
        "lteq": compared <= 0,
        "to": compared <= 0,
    }
    return checks.get(condition, False)


CREDENTIALS_HELP = """\
credentials: none by default; with --bearer, --basic or --api-key every request but the admin API's
must carry that credential, as a spec's auth says it:
  --bearer T          auth: { bearer: { token: T } }
  --basic U:P         auth: { basic: { username: U, password: P } }
  --api-key H:K       auth: { api_key: { header: H, key: K } }

admin API (no credentials, never faulted): GET /__fake/log (the write log), GET /__fake/requests,
GET /__fake/resources?prefix=, POST /__fake/seed {"path", "items"}, GET|POST /__fake/faults
(e.g. {"fail_next": {"count": "all", "status": 503, "path": "/products"}}), POST /__fake/reset.
"""


def _pair(text: str, option: str, names: str) -> tuple[str, str]:
    first, colon, second = text.partition(":")
    if not (first and colon and second):
        raise argparse.ArgumentTypeError(f"{option} takes {names}, e.g. {option} {names.replace(' ', '')}")
    return first, second


def _auth_of(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.bearer is not None:
        return {"bearer": args.bearer}
    if args.basic is not None:
        username, password = _pair(args.basic, "--basic", "USER:PASSWORD")
        return {"basic": {"username": username, "password": password}}
    if args.api_key is not None:
        header, key = _pair(args.api_key, "--api-key", "HEADER:KEY")
        return {"api_key": {"header": header, "key": key}}
    return None


def _banner(fake: FakeHttpServer) -> str:
    """What a spec needs to reach the fake: its URL, its credentials, its fault and where its write log is."""
    faults = fake.faults()
    auth = faults["auth"] or {}
    lines = [f"fake http server on {fake.url}"]
    if "bearer" in auth:
        lines.append(f"  bearer token: {auth['bearer']}")
    elif "basic" in auth:
        lines.append(f"  basic user: {auth['basic']['username']} / {auth['basic']['password']}")
    elif "api_key" in auth:
        lines.append(f"  api key: {auth['api_key']['header']}: {auth['api_key']['key']}")
    else:
        lines.append("  credentials: none (--bearer, --basic or --api-key to require one)")
    failing = faults["fail_next"]
    if failing["count"]:
        every = failing["count"] == "all"
        which = "every request" if every else f"the next {failing['count']} request(s)"
        where = f" to {failing['path']}" if failing["path"] else ""
        lines.append(f"  fault: {which}{where} {'answers' if every else 'answer'} {failing['status']}")
    lines.append(f"  write log: GET {fake.url}/__fake/log")
    lines.append("stop with Ctrl-C")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``seamline fake http --port 8081``: serve until SIGINT/SIGTERM (the banner says how to reach it)."""
    parser = argparse.ArgumentParser(
        prog="seamline fake http",
        description=__doc__.split("\n")[0],
        epilog=CREDENTIALS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8081, help="port to listen on (default: %(default)s)")
    parser.add_argument("--state-file", type=Path, default=None, help="keep the store and the write log here")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--bearer", metavar="TOKEN", help="require this bearer token")
    auth.add_argument("--basic", metavar="USER:PASSWORD", help="require this basic user")
    auth.add_argument("--api-key", metavar="HEADER:KEY", help="require this key in this header")
    parser.add_argument("--fail-path", metavar="PATH", help="fail only requests to PATH or under it, e.g. /products")
    parser.add_argument("--fail-status", type=int, metavar="STATUS", help="fail requests with STATUS (default 503)")
    parser.add_argument(
        "--fail-count", type=int, metavar="N", help="fail only the next N requests (default: every one)"
    )
    parser.add_argument("--fail-retry-after", metavar="SECONDS", help="send Retry-After with the failures")
    args = parser.parse_args(argv)
    fake = FakeHttpServer(port=args.port, host=args.host, state_file=args.state_file)
    try:
        fake.configure(auth=_auth_of(args))
        if args.fail_path is not None or args.fail_status is not None or args.fail_count is not None:
            fake.fail_next(
                "all" if args.fail_count is None else args.fail_count,
                503 if args.fail_status is None else args.fail_status,
                retry_after=args.fail_retry_after,
                path=args.fail_path,
            )
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    refused = listen(fake)
    if refused is not None:
        print(refused, file=sys.stderr)
        return 1
    return serve_until_signalled(fake, lambda: _banner(fake))


if __name__ == "__main__":
    raise SystemExit(main())
