"""The operator's JSON API under ``/api/``: flows, runs, dead letters, systems, cursors, a record's timeline, the
spec's version, and the two actions (run a schedule now, reload the spec). Documented in ``openapi.json`` beside
this module, served at ``GET /api/openapi.json``; ``tests/runtime/test_operator_api.py`` holds the routes and the
document to each other and fuzzes the reads with schemathesis.

The API sees the daemon through :class:`~engine.runtime.operator.Operator` only, and reads state through the
daemon's inbox (on the store's thread, never on the event loop). The bearer token is the app's middleware's
business (engine/runtime/api.py): every route here needs it. Times are ISO-8601 UTC strings; errors are
``{"error": "..."}`` with a status that says which kind.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, wraps
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.runtime.inbox import Inbox
from engine.runtime.operator import FlowInfo, Operator, ReloadResult, RunNowResult
from engine.runtime.replay import one_letter, replay_dead_letters
from engine.runtime.system import System
from engine.runtime.views import dead_letter_json, depth_json, iso_or_none, run_json
from engine.state import DeadLetter, RecordChange, RunRecord, StateStore

# The data functions are public for the console (engine/console), which shows the same state as HTML.
__all__ = [
    "KINDS",
    "OPENAPI_FILE",
    "OPERATOR",
    "ROUTES",
    "RUN_STATUS",
    "FlowsState",
    "Problem",
    "add_operator_routes",
    "flow_named",
    "flows_state",
    "inbox_of",
    "json_response",
    "letter_matches",
    "one_letter",
    "openapi_document",
    "replace_cursor",
    "system_json",
]

OPERATOR: web.AppKey[Operator] = web.AppKey("operator")
OPENAPI_FILE = Path(__file__).with_name("openapi.json")
MAX_BODY = 64 * 1024  # the API's request bodies are small JSON objects

Handler = Callable[[web.Request], Awaitable[web.Response]]

RUN_STATUS = {"started": 202, "busy": 409, "unknown": 404, "not_a_schedule": 400}


class Problem(Exception):
    """A request the API answers with an error: ``status`` and a message saying what to do."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    """An answer of the daemon's HTTP API (the operator's and the webhooks'): ``body`` as JSON."""
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False, default=str),
        content_type="application/json",
        headers=headers,
    )


_json = json_response


def _answers(*, query: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
    """A handler that takes the query parameters ``query`` (any other is refused, so a typo such as ``?flwo=`` is
    not silently ignored) and whose :class:`Problem` becomes its JSON answer."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def wrapper(request: web.Request) -> web.Response:
            try:
                unknown = sorted(set(request.query) - set(query))
                if unknown:
                    takes = f"it takes {', '.join(query)}" if query else "it takes none"
                    raise Problem(400, f"unknown query parameter(s) {', '.join(map(repr, unknown))}; {takes}")
                return await handler(request)
            except Problem as problem:
                return _json(problem.status, problem.body)

        return wrapper

    return decorate


# -- what a handler needs -------------------------------------------------------------------------------------


def _operator(request: web.Request) -> Operator:
    return request.app[OPERATOR]


def inbox_of(operator: Operator) -> Inbox:
    inbox = operator.inbox
    if inbox is None:  # a daemon still starting (or a delivery process, which serves no API)
        raise Problem(503, "the daemon has not opened its state store yet; ask again in a moment")
    return inbox


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise Problem(
            400, f"query parameter '{name}' must be a whole number from {low} to {high}, not {text!r}"
        ) from None
    if not low <= value <= high:
        raise Problem(400, f"query parameter '{name}' must be from {low} to {high}, not {value}")
    return value


def _bool_query(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "false")
    if text not in ("true", "false"):
        raise Problem(400, f"query parameter '{name}' must be true or false, not {text!r}")
    return text == "true"


def _flow_query(request: web.Request) -> str | None:
    """``?flow=NAME``: only that flow's (absent: every flow's)."""
    flow = request.query.get("flow")
    if flow == "":
        raise Problem(400, "query parameter 'flow' names a flow; leave it out for every flow")
    return flow


def _text_query(request: web.Request, name: str, *, required: bool = False) -> str | None:
    """The parameter's text; None when it is absent (an empty one is a value: ``?flow=`` names no flow)."""
    text = request.query.get(name)
    if text is None and required:
        raise Problem(400, f"query parameter '{name}' is required, e.g. ?{name}=...")
    return text


async def _json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body when ``optional``)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Problem(413, f"the body is {request.content_length} bytes; this path takes at most {MAX_BODY}")
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise Problem(400, "the body is not JSON; send a JSON object") from None
    if not isinstance(body, dict):
        raise Problem(400, f"the body must be a JSON object, not {type(body).__name__}")
    return body


def _only(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(400, f"unknown field(s) {', '.join(unknown)}; this body takes {', '.join(sorted(allowed))}")


def flow_named(operator: Operator, name: str) -> FlowInfo:
    flows = operator.flows()
    for info in flows:
        if info.name == name:
            return info
    running = ", ".join(f.name for f in flows) or "none"
    raise Problem(404, f"no flow '{name}' runs in this daemon (running: {running})")


# -- flows --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowsState:
    depth: dict[str, dict[str, int]]
    last_runs: dict[str, RunRecord | None]
    cursors: dict[str, str]


def flows_state(store: StateStore, names: Sequence[str]) -> FlowsState:
    """Inbox depth, last run and cursor of every flow, in one trip to the store's thread."""
    last = {name: next(iter(store.runs(name, 1)), None) for name in names}
    return FlowsState(store.depth_by_flow(), last, store.cursors())


def _flow_json(info: FlowInfo, state: FlowsState, stopped: Mapping[str, str]) -> dict[str, Any]:
    last = state.last_runs.get(info.name)
    return {
        "name": info.name,
        "trigger": info.trigger,
        "detail": info.detail,
        "source": info.source,
        "targets": list(info.targets),
        "description": info.description,
        "inbox": depth_json(state.depth.get(info.name)),
        "last_run": run_json(last) if last is not None else None,
        "cursor": state.cursors.get(info.name),
        "stopped": stopped.get(info.name),
    }


@_answers()
async def list_flows(request: web.Request) -> web.Response:
    operator = _operator(request)
    inbox = inbox_of(operator)
    flows = operator.flows()
    state = await inbox.run(flows_state, inbox.store, [f.name for f in flows])
    stopped = operator.stopped_triggers
    return _json(200, {"flows": [_flow_json(info, state, stopped) for info in flows]})


@_answers()
async def get_flow(request: web.Request) -> web.Response:
    operator = _operator(request)
    info = flow_named(operator, request.match_info["flow"])
    inbox = inbox_of(operator)
    state = await inbox.run(flows_state, inbox.store, [info.name])
    return _json(200, _flow_json(info, state, operator.stopped_triggers))


def _run_now_json(result: RunNowResult) -> dict[str, Any]:
    return {"flow": result.flow, "status": result.status, "message": result.message}


@_answers()
async def run_flow(request: web.Request) -> web.Response:
    """Start a schedule flow's pass now: 202 started, 409 busy, 404 unknown flow, 400 not a schedule."""
    result = await _operator(request).run_now(request.match_info["flow"])
    return _json(RUN_STATUS[result.status], _run_now_json(result))


def _reload_json(result: ReloadResult) -> dict[str, Any]:
    return {
        "reloaded": result.reloaded,
        "spec_version": result.spec_version,
        "previous": result.previous,
        "errors": list(result.errors),
        "message": result.message,
    }


@_answers()
async def reload_spec(request: web.Request) -> web.Response:
    """Load the spec on disk: 200 reloaded (or already running), 422 refused with its errors (the old keeps running)."""
    result = await _operator(request).reload()
    return _json(200 if result.reloaded else 422, _reload_json(result))


@_answers()
async def spec_versions(request: web.Request) -> web.Response:
    operator = _operator(request)
    # loading the spec reads and compiles its files: off the loop, as the daemon's own reload does
    on_disk = await asyncio.to_thread(operator.spec_version_on_disk)
    running = operator.spec_version
    return _json(
        200,
        {"client": operator.client_name, "running": running, "on_disk": on_disk, "differs": on_disk != running},
    )


# -- runs and dead letters ------------------------------------------------------------------------------------


@_answers(query=("flow", "limit"))
async def list_runs(request: web.Request) -> web.Response:
    flow = _flow_query(request)
    limit = _int_query(request, "limit", 20, 1, 1000)
    inbox = inbox_of(_operator(request))
    runs = await inbox.run(inbox.store.runs, flow, limit)
    return _json(200, {"runs": [run_json(r) for r in runs]})


KINDS = ("terminal", "exhausted", "unknown", "rejected")


def letter_matches(letter: DeadLetter, reason: str | None, kind: str | None) -> bool:
    if kind is not None and letter.error_kind != kind:
        return False
    return reason is None or reason.casefold() in letter.reason.casefold()


@_answers(query=("flow", "reason", "kind", "limit", "replayed"))
async def list_dead_letters(request: web.Request) -> web.Response:
    """Open dead letters, newest first (``replayed=true``: replayed ones too); ``reason`` matches part of the
    reason, any case; ``total`` counts every match, ``dead_letters`` holds the first ``limit``."""
    flow = _flow_query(request)
    reason = _text_query(request, "reason")
    kind = _text_query(request, "kind")
    if kind is not None and kind not in KINDS:
        raise Problem(400, f"query parameter 'kind' must be one of {', '.join(KINDS)}, not {kind!r}")
    limit = _int_query(request, "limit", 100, 1, 1000)
    replayed = _bool_query(request, "replayed")
    inbox = inbox_of(_operator(request))
    letters = await inbox.run(inbox.store.dead_letters, flow, include_replayed=replayed)
    found = [letter for letter in reversed(letters) if letter_matches(letter, reason, kind)]
    return _json(200, {"dead_letters": [dead_letter_json(d) for d in found[:limit]], "total": len(found)})


@_answers()
async def get_dead_letter(request: web.Request) -> web.Response:
    text = request.match_info["id"]
    try:
        letter_id = int(text)
    except ValueError:
        raise Problem(400, f"a dead letter's id is a whole number, not {text!r}") from None
    inbox = inbox_of(_operator(request))
    letter, superseded = await inbox.run(one_letter, inbox.store, letter_id)
    if letter is None:
        raise Problem(404, f"no dead letter {letter_id}; GET /api/dead-letters lists them")
    return _json(200, {**dead_letter_json(letter, record=True), "superseded": superseded})


@dataclass(frozen=True, slots=True)
class ReplayAsk:
    """Which letters to replay: ``ids``, a ``flow``'s, or ``all``; ``force`` replays superseded ones too;
    ``dry_run`` says what would happen and changes nothing."""

    ids: tuple[int, ...]
    flow: str | None
    every: bool
    force: bool
    dry_run: bool

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> ReplayAsk:
        _only(body, {"ids", "flow", "all", "force", "dry_run"})
        ids = body.get("ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise Problem(400, "'ids' must be a list of dead letter ids (whole numbers)")
        if "ids" in body and not ids:
            raise Problem(400, "'ids' is empty; name at least one dead letter, or leave 'ids' out")
        flow = body.get("flow")
        if "flow" in body and (not isinstance(flow, str) or not flow):
            raise Problem(400, "'flow' must be a flow's name; leave it out for every flow")
        flags = {name: body.get(name, False) for name in ("all", "force", "dry_run")}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise Problem(400, f"'{name}' must be true or false")
        if not ids and flow is None and not flags["all"]:
            raise Problem(400, 'say which letters: {"ids": [...]}, {"flow": "..."} (both narrow), or {"all": true}')
        return cls(tuple(ids), flow, flags["all"], flags["force"], flags["dry_run"])


@_answers()
async def replay(request: web.Request) -> web.Response:
    operator = _operator(request)
    ask = ReplayAsk.parse(await _json_body(request))
    inbox = inbox_of(operator)
    running = operator.spec_version
    on_disk = await asyncio.to_thread(operator.spec_version_on_disk)
    outcome = await inbox.run(
        replay_dead_letters,
        inbox.store,
        flow=ask.flow,
        ids=ask.ids,
        force=ask.force,
        spec_version=on_disk or running,
        by=f"api:{request.remote or 'unknown'}",
        dry_run=ask.dry_run,
    )
    warning = None
    if on_disk is not None and on_disk != running:
        warning = (
            f"this daemon runs spec version {running}, the spec on disk is {on_disk}: replayed letters are delivered "
            "with the running version, so a fix on disk is not in effect yet; POST /api/reload, then replay"
        )
    return _json(
        200,
        {
            "replayed": outcome.replayed,
            "chosen": list(outcome.chosen),
            "superseded": list(outcome.superseded),
            "skipped": list(outcome.skipped),
            "not_found": list(outcome.not_found),
            "forced": outcome.forced,
            "dry_run": outcome.dry_run,
            "replay_id": outcome.record_id,
            "warning": warning,
        },
    )


# -- systems and cursors --------------------------------------------------------------------------------------


def system_json(system: System) -> dict[str, Any]:
    budget, breaker = system.budget, system.breaker
    # The budget keeps its slots private; reading them is only a look (nothing is taken or given).
    held = budget._slots.held
    return {
        "name": system.name,
        "kind": system.kind,
        "breaker": {"state": breaker.state, "failures": breaker.failures, "retry_in_s": round(breaker.remaining(), 3)},
        "budget": {
            "concurrency": budget.concurrency,
            "in_use": {"realtime": held["realtime"], "batch": held["batch"]},
            "rate_per_s": budget.rate,
            "timeout_s": budget.timeout,
            "max_retry_after_s": budget.max_retry_after,
        },
    }


@_answers()
async def list_systems(request: web.Request) -> web.Response:
    systems = _operator(request).systems
    return _json(200, {"systems": [system_json(systems[name]) for name in sorted(systems)]})


@_answers()
async def list_cursors(request: web.Request) -> web.Response:
    """Every schedule flow's cursor (null: the next pass reads everything), and any other cursor the store holds."""
    operator = _operator(request)
    inbox = inbox_of(operator)
    stored = await inbox.run(inbox.store.cursors)
    names = {f.name for f in operator.flows() if f.trigger == "schedule"} | set(stored)
    return _json(200, {"cursors": [{"flow": name, "value": stored.get(name)} for name in sorted(names)]})


def replace_cursor(store: StateStore, flow: str, value: str | None) -> str | None:
    before = store.get_cursor(flow)
    store.set_cursor(flow, value)
    return before


@_answers()
async def reset_cursor(request: web.Request) -> web.Response:
    """Clear a flow's cursor (the next pass reads everything) or set it with ``{"to": "..."}``."""
    operator = _operator(request)
    flow = flow_named(operator, request.match_info["flow"]).name
    body = await _json_body(request, optional=True)
    _only(body, {"to"})
    value = body.get("to")
    if value is not None and not isinstance(value, str):
        raise Problem(400, "'to' must be the cursor's new value as text, or null to clear it")
    inbox = inbox_of(operator)
    before = await inbox.run(replace_cursor, inbox.store, flow, value)
    return _json(200, {"flow": flow, "before": before, "after": value})


# -- a record's timeline --------------------------------------------------------------------------------------


def _trace_json(trace: RecordChange) -> dict[str, Any]:
    events = []
    for event in trace.events:
        shown: dict[str, Any] = {"at": iso_or_none(event.at), "event": event.event}
        for name in ("target", "request", "receipt", "reason", "kind", "source"):
            if getattr(event, name):
                shown[name] = getattr(event, name)
        if event.letter is not None:
            shown["letter"] = event.letter
        events.append(shown)
    return {
        "id": trace.id,
        "flow": trace.flow,
        "dedupe_key": trace.dedupe_key,
        "business_key": trace.business_key,
        "version": trace.version,
        "source": trace.source,
        "status": trace.status,
        "attempts": trace.attempts,
        "outcome": trace.outcome,
        "last_error": trace.last_error,
        "received_at": iso_or_none(trace.created_at),
        "record": trace.record,
        "events": events,
    }


@_answers(query=("key", "flow", "limit"))
async def record_history(request: web.Request) -> web.Response:
    """Every change of a business key, newest first: received, delivered to each target (with the target's
    receipt), dead-lettered and replayed."""
    key = _text_query(request, "key", required=True)
    if not key:
        raise Problem(400, "query parameter 'key' is a business key (a SKU, an order number), not empty")
    flow = _flow_query(request)
    limit = _int_query(request, "limit", 20, 1, 200)
    inbox = inbox_of(_operator(request))
    traces = await inbox.run(inbox.store.timeline, key, flow=flow, limit=limit)
    return _json(200, {"key": key, "flow": flow, "records": [_trace_json(t) for t in traces]})


# -- the document --------------------------------------------------------------------------------------------


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of this API (openapi.json beside this module)."""
    document: dict[str, Any] = json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))
    return document


@_answers()
async def openapi(_request: web.Request) -> web.Response:
    return _json(200, openapi_document())


# -- the routes ------------------------------------------------------------------------------------------------

ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/openapi.json", openapi),
    ("GET", "/api/spec", spec_versions),
    ("POST", "/api/reload", reload_spec),
    ("GET", "/api/flows", list_flows),
    ("GET", "/api/flows/{flow}", get_flow),
    ("POST", "/api/flows/{flow}/run", run_flow),
    ("GET", "/api/runs", list_runs),
    ("GET", "/api/dead-letters", list_dead_letters),
    ("POST", "/api/dead-letters/replay", replay),
    ("GET", "/api/dead-letters/{id}", get_dead_letter),
    ("GET", "/api/systems", list_systems),
    ("GET", "/api/cursors", list_cursors),
    ("POST", "/api/cursors/{flow}/reset", reset_cursor),
    ("GET", "/api/records", record_history),
)


def _not_allowed(path: str, allowed: Sequence[str]) -> Handler:
    """Another method at one of these paths: 405 naming the ones served (the daemon's catch-all for webhook
    paths would otherwise answer 404, as if the path did not exist)."""
    allow = ", ".join(sorted(allowed))

    async def handle(request: web.Request) -> web.Response:
        response = _json(405, {"error": f"{request.method} is not served at {path}; use {allow}"})
        response.headers["Allow"] = allow
        return response

    return handle


def add_operator_routes(app: web.Application, operator: Operator) -> None:
    """Serve the operator's JSON API on ``app`` (behind its bearer-token middleware) for ``operator``.

    Call it before a catch-all route is added: aiohttp resolves the longest fixed prefix first, so ``/api/...``
    wins over ``/{path:.*}`` anyway, but a method not served at one of these paths is answered 405 here.
    """
    app[OPERATOR] = operator
    methods: dict[str, list[str]] = {}
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
        methods.setdefault(path, []).append(method)
    for path, allowed in methods.items():
        app.router.add_route("*", path, _not_allowed(path, allowed))
