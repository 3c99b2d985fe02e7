"""The console's handlers: one per page, and one per action (each action answers with the page that shows its
outcome, so a refused reload's reasons or a replay's skipped letters are in front of the person who asked).

Who may do what is the HTTP middleware's (engine/runtime/api.py): it lets a request in with a role, and refuses
a read-only session's actions and a form without its session's CSRF field. The actions check the role again, so
the console mounted without that middleware offers nothing that changes state.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from multidict import MultiDictProxy

from engine.console import data
from engine.console.render import CONSOLE, page
from engine.console.session import COOKIE, ROLE, SESSIONS
from engine.console.throughput import THROUGHPUT
from engine.runtime.admin_api import KINDS, RUN_STATUS, Problem, flow_named, inbox_of, replace_cursor
from engine.runtime.operator import Operator

__all__ = ["ROUTES", "refusal", "see_other"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refusal(request: web.Request, status: int, message: str) -> web.Response:
    """The error page: what went wrong and what to do, with the status a script would read."""
    return page(request, "error.html", status=status, title=_TITLES.get(status, "Error"), message=message)


_TITLES = {400: "Not understood", 401: "Sign in", 403: "Not allowed", 404: "Not found", 503: "Not ready"}


def _shows(handler: Handler) -> Handler:
    """A handler whose :class:`~engine.runtime.admin_api.Problem` (a bad parameter, an unknown flow, a store not
    open yet) becomes the error page, with the JSON API's status and message."""

    @wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            return refusal(request, problem.status, str(problem))

    return wrapper


def _acts(handler: Handler) -> Handler:
    """An action: the operator's only (the middleware refused the others already; this holds without it)."""
    shown = _shows(handler)

    @wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        if request.get(ROLE) != "operator":
            return refusal(request, 403, "read-only: this session may look, not change anything")
        return await shown(request)

    return wrapper


def _operator(request: web.Request) -> Operator:
    return request.app[CONSOLE]


def _text(request: web.Request, name: str) -> str | None:
    """A query parameter as typed; None when absent or blank (a filter left empty filters nothing)."""
    value = request.query.get(name, "").strip()
    return value or None


def see_other(location: str) -> web.Response:
    """303 to ``location``: after a sign-in or sign-out, the browser GETs the page it is sent to."""
    return web.Response(status=303, headers={"Location": location})


def _id(text: str, what: str = "a dead letter's id") -> int:
    try:
        return int(text)
    except ValueError:
        raise Problem(400, f"{what} is a whole number, not {text!r}") from None


# -- flows -----------------------------------------------------------------------------------------------------


@_shows
async def overview(request: web.Request) -> web.Response:
    operator = _operator(request)
    now = time.time()
    rows = await data.flow_rows(operator, request.app[THROUGHPUT], now)
    spec = await data.spec_state(operator)
    return page(request, "flows.html", title="Flows", active="flows", flows=rows, spec=spec, now=now)


# -- dead letters ----------------------------------------------------------------------------------------------


@_shows
async def dead_letters(request: web.Request) -> web.Response:
    operator = _operator(request)
    flow, reason, kind = _text(request, "flow"), _text(request, "reason"), _text(request, "kind")
    if kind is not None and kind not in KINDS:
        raise Problem(400, f"kind is one of {', '.join(KINDS)}, not {kind!r}")
    letters = await data.dead_letters(operator, flow=flow, reason=reason, kind=kind)
    return page(
        request,
        "dead_letters.html",
        title="Dead letters",
        active="dead-letters",
        letters=letters,
        flows=[f.name for f in operator.flows()],
        kinds=KINDS,
        flow=flow or "",
        reason=reason or "",
        kind=kind or "",
    )


@_shows
async def one_letter(request: web.Request) -> web.Response:
    operator = _operator(request)
    letter_id = _id(request.match_info["id"])
    found = await data.letter(operator, letter_id)
    if found is None:
        raise Problem(404, f"no dead letter {letter_id}; the dead letters page lists them")
    spec = await data.spec_state(operator)
    return page(
        request, "letter.html", title=f"Dead letter {letter_id}", active="dead-letters", letter=found, spec=spec
    )


def _replay_ask(form: MultiDictProxy[Any]) -> tuple[str | None, list[int]]:
    """Which letters a replay form names: ``scope=selected`` the ticked ``id`` boxes (of the form's ``flow``, when
    it names one), ``scope=flow`` every open letter of the form's ``flow``."""
    scope = form.get("scope")
    flow = str(form.get("flow") or "") or None
    if scope == "flow":
        if flow is None:
            raise Problem(400, "choose a flow in the filter first: 'replay all' replays one flow's letters")
        return flow, []
    if scope == "selected":
        ids = [_id(str(value)) for value in form.getall("id", [])]
        if not ids:
            raise Problem(400, "tick at least one letter to replay, or filter by a flow and replay all of it")
        return flow, ids
    raise Problem(400, "this form says neither which letters (scope=selected) nor which flow (scope=flow)")


@_acts
async def replay(request: web.Request) -> web.Response:
    """Without ``confirm``: the preview (a dry run: what goes back, what the superseded check skips). With it:
    the replay itself, recorded in ``seamline dlq history`` as made by the console."""
    form = await request.post()
    flow, ids = _replay_ask(form)
    confirmed = form.get("confirm") == "yes"
    force = form.get("force") == "yes"
    view = await data.replay(
        _operator(request),
        flow=flow,
        ids=ids,
        force=force,
        dry_run=not confirmed,
        by=f"console:{request.remote or 'unknown'}",
    )
    return page(
        request,
        "replay.html",
        title="Replay done" if confirmed else "Replay preview",
        active="dead-letters",
        view=view,
        flow=flow or "",
        force=force,
    )


# -- runs, systems, cursors -----------------------------------------------------------------------------------


@_shows
async def runs(request: web.Request) -> web.Response:
    operator = _operator(request)
    flow = _text(request, "flow")
    found = await data.runs(operator, flow, 100)
    flows = [f.name for f in operator.flows()]
    return page(request, "runs.html", title="Runs", active="runs", runs=found, flow=flow or "", flows=flows)


@_shows
async def systems(request: web.Request) -> web.Response:
    found = data.systems(_operator(request))
    return page(request, "systems.html", title="Systems", active="systems", systems=found)


async def _cursors_page(request: web.Request, *, notice: str = "", status: int = 200) -> web.Response:
    rows = await data.cursor_rows(_operator(request), time.time())
    return page(request, "cursors.html", status=status, title="Cursors", active="cursors", cursors=rows, notice=notice)


@_shows
async def cursors(request: web.Request) -> web.Response:
    return await _cursors_page(request)


@_acts
async def reset_cursor(request: web.Request) -> web.Response:
    """Clear a flow's cursor (an empty ``to``: the next pass reads everything) or set it."""
    operator = _operator(request)
    flow = flow_named(operator, request.match_info["flow"]).name
    to = str((await request.post()).get("to") or "").strip() or None
    inbox = inbox_of(operator)
    before = await inbox.run(replace_cursor, inbox.store, flow, to)
    after = "cleared: the next pass reads everything" if to is None else f"now {to}"
    return await _cursors_page(request, notice=f"The cursor of {flow} was {before or 'empty'}; {after}.")


# -- a record's timeline --------------------------------------------------------------------------------------


@_shows
async def records(request: web.Request) -> web.Response:
    operator = _operator(request)
    key, flow = _text(request, "key"), _text(request, "flow")
    changes = await data.timeline(operator, key, flow) if key else []
    return page(
        request,
        "records.html",
        title=f"Record {key}" if key else "Records",
        active="records",
        key=key or "",
        flow=flow or "",
        flows=[f.name for f in operator.flows()],
        changes=changes,
    )


# -- the spec: versions, reload, run now ----------------------------------------------------------------------


async def _spec_page(request: web.Request, *, status: int = 200, **outcome: object) -> web.Response:
    operator = _operator(request)
    spec = await data.spec_state(operator)
    schedules = [f for f in operator.flows() if f.trigger == "schedule"]
    context: dict[str, object] = {"reload": None, "run": None, **outcome}
    return page(
        request, "spec.html", status=status, title="Spec", active="spec", spec=spec, schedules=schedules, **context
    )


@_shows
async def spec(request: web.Request) -> web.Response:
    return await _spec_page(request)


@_acts
async def reload(request: web.Request) -> web.Response:
    """Load the spec on disk: the page says the new version, or why it was refused (the old one keeps running)."""
    result = await _operator(request).reload()
    return await _spec_page(request, status=200 if result.reloaded else 422, reload=result)


@_acts
async def run_now(request: web.Request) -> web.Response:
    result = await _operator(request).run_now(request.match_info["flow"])
    status = 200 if result.status == "started" else RUN_STATUS[result.status]
    return await _spec_page(request, status=status, run=result)


# -- signing in and out ---------------------------------------------------------------------------------------


def _next(target: str | None) -> str:
    """Where to go after signing in: a console page of this daemon, never another site (``//evil``, ``http:``)."""
    if not target:
        return "/console/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console/") or target.startswith("//"):
        return "/console/"
    return target


async def login_form(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    if sessions.open:  # --dev: there is nothing to sign in to
        return see_other("/console/")
    return page(request, "login.html", title="Sign in", next=_next(request.query.get("next")), error="")


async def login(request: web.Request) -> web.Response:
    """A token in, a session cookie out (HttpOnly, SameSite=Strict, signed): the operator's token gives the
    operator's role, the view token the read-only one."""
    sessions = request.app[SESSIONS]
    form = await request.post()
    target = _next(str(form.get("next") or ""))
    if sessions.open:
        return see_other(target)
    role = sessions.role_of(str(form.get("token") or "").strip())
    if role is None:
        error = "That token is neither this daemon's operator token nor its view token."
        return page(request, "login.html", status=401, title="Sign in", next=target, error=error)
    cookie, session = sessions.issue(role)
    response = see_other(target)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(session.expires - time.time()),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,  # behind TLS the cookie never travels in clear; a loopback daemon speaks HTTP
    )
    return response


async def logout(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    session = sessions.session(request.cookies.get(COOKIE))
    if session is not None:
        sessions.end(session)
    response = see_other("/console/login")
    response.del_cookie(COOKIE, path="/")
    return response


# -- the rest --------------------------------------------------------------------------------------------------


async def to_overview(_request: web.Request) -> web.Response:
    return see_other("/console/")


async def not_found(request: web.Request) -> web.Response:
    return refusal(request, 404, f"the console has no page at {request.path}")


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/console", to_overview),
    ("GET", "/console/", overview),
    ("GET", "/console/login", login_form),
    ("POST", "/console/login", login),
    ("POST", "/console/logout", logout),
    ("GET", "/console/dead-letters", dead_letters),
    ("POST", "/console/dead-letters/replay", replay),
    ("GET", "/console/dead-letters/{id}", one_letter),
    ("GET", "/console/runs", runs),
    ("GET", "/console/systems", systems),
    ("GET", "/console/cursors", cursors),
    ("POST", "/console/cursors/{flow}/reset", reset_cursor),
    ("GET", "/console/records", records),
    ("GET", "/console/spec", spec),
    ("POST", "/console/reload", reload),
    ("POST", "/console/flows/{flow}/run", run_now),
)
