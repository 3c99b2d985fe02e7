"""Who may see and do what (issue 16, item 1): the operator's and the view token as bearer tokens, the console's
sign-in with its signed session cookie, CSRF fields on the console's forms, and dev mode open as before.

A real daemon serves the real app (engine.runtime.api.build_app with the operator API and the console mounted);
the tests speak HTTP to it as a script or a browser would. The browser itself: tests/e2e/test_console.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from connectors.http.fake import FakeHttpServer
from engine.console.session import COOKIE, Session, Sessions
from engine.runtime.api import build_app
from tests.runtime.operator_harness import LiveDaemon

OPERATOR_TOKEN = "op-7c1f2e9a-console"
VIEW_TOKEN = "view-4b8d0c33-console"

SPEC = """\
seamline: 1
client: guarded
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    endpoints:
      products: { path: /products }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      products: { path: "/products/{sku}", method: PUT }
flows:
  catalog:
    trigger: { schedule: 1h }
    source: { system: erp, read: products, cursor: changed, id: sku }
    target: { system: shop, write: products, key: sku }
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    target: { system: shop, write: products, key: sku }
"""


class ConsoleDaemon(LiveDaemon):
    """The harness's daemon, served by ``build_app(daemon, daemon)`` as ``seamline run`` serves it: the operator
    API and the console mounted, the auth middleware in front."""

    async def _start(self) -> None:
        await self.daemon.start()
        self.runner = web.AppRunner(build_app(self.daemon, self.daemon), access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


@contextmanager
def console_daemon(spec: Path, env: dict[str, str], *, state_url: str, **options: Any) -> Iterator[ConsoleDaemon]:
    live = ConsoleDaemon(spec, env, state_url=state_url, **options).start()
    try:
        yield live
    finally:
        live.stop()


@contextmanager
def guarded(root: Path, **options: Any) -> Iterator[ConsoleDaemon]:
    root.mkdir(parents=True, exist_ok=True)
    spec = root / "seamline.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        erp.seed("/products", [{"id": "A", "sku": "A", "changed": "2025-01-01T00:00:00Z"}])
        env = {"ERP_URL": erp.url, "SHOP_URL": shop.url}
        with console_daemon(spec, env, state_url=f"sqlite:///{root / 'state.db'}", **options) as live:
            yield live


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleDaemon]:
    with guarded(tmp_path_factory.mktemp("guarded"), token=OPERATOR_TOKEN, view_token=VIEW_TOKEN) as daemon:
        yield daemon


def client(live: ConsoleDaemon, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=live.url, headers=headers, timeout=30, follow_redirects=False)


@contextmanager
def signed_in(live: ConsoleDaemon, token: str) -> Iterator[httpx.Client]:
    """A browser-like client after signing in: it holds the session cookie."""
    with client(live) as browser:
        answer = browser.post("/console/login", data={"token": token, "next": "/console/"})
        assert answer.status_code == 303 and answer.headers["Location"] == "/console/", answer.text
        yield browser


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the page has a form with its CSRF field"
    return found.group(1)


# -- bearer tokens: scripts ------------------------------------------------------------------------------------


def test_the_operator_token_does_everything_the_view_token_only_reads(live: ConsoleDaemon) -> None:
    with client(live, OPERATOR_TOKEN) as operator, client(live, VIEW_TOKEN) as viewer:
        for path in ("/api/flows", "/api/dead-letters", "/metrics", "/console/", "/console/spec"):
            assert viewer.get(path).status_code == 200, path
            assert operator.get(path).status_code == 200, path
        refused = viewer.post("/api/reload")
        assert refused.status_code == 403
        assert "read-only" in refused.json()["error"] and "POST /api/reload" in refused.json()["error"]
        assert viewer.post("/api/cursors/catalog/reset").status_code == 403
        assert viewer.post("/api/dead-letters/replay", json={"all": True}).status_code == 403
        assert viewer.post("/hooks/stock", json={"sku": "X"}).status_code == 403  # no events from a viewer
        assert operator.post("/api/reload").status_code == 200  # the same spec: "nothing to reload"
        assert operator.post("/hooks/stock", json={"sku": "X"}).status_code == 202
        console = viewer.post("/console/reload", data={"csrf": "x"})
        assert console.status_code == 403 and "text/html" in console.headers["Content-Type"]
        assert "read-only" in console.text


def test_a_wrong_or_missing_token_is_401_and_the_open_paths_stay_open(live: ConsoleDaemon) -> None:
    with client(live, "not-a-token") as wrong, client(live) as nobody:
        assert wrong.get("/api/flows").status_code == 401
        assert wrong.get("/console/").status_code == 401  # a script with a wrong token is told so, not redirected
        answer = nobody.get("/api/flows")
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
        assert nobody.post("/hooks/stock", json={"sku": "X"}).status_code == 401
        open_paths = (
            "/healthz",
            "/readyz",
            "/console/login",
            "/console/static/console.css",
            "/console/static/console.js",
        )
        for path in open_paths:
            assert nobody.get(path).status_code == 200, path
        for escape in ("/console/static/../session.py", "/console/static/%2e%2e/session.py"):
            outside = nobody.get(escape)  # the open prefix serves the static folder, nothing beside it
            assert outside.status_code != 200 and "class Sessions" not in outside.text, escape


# -- signing in: people ----------------------------------------------------------------------------------------


def test_a_person_is_sent_to_sign_in_and_back_where_they_were_going(live: ConsoleDaemon) -> None:
    with client(live) as browser:
        root = browser.get("/")
        assert root.status_code == 303 and root.headers["Location"] == "/console/login?next=%2Fconsole%2F"
        deep = browser.get("/console/dead-letters?flow=catalog")
        assert deep.headers["Location"] == "/console/login?next=%2Fconsole%2Fdead-letters%3Fflow%3Dcatalog"
        form = browser.get("/console/login", params={"next": "/console/dead-letters?flow=catalog"})
        assert form.status_code == 200 and 'name="token"' in form.text
        assert 'value="/console/dead-letters?flow=catalog"' in form.text
        answer = browser.post("/console/login", data={"token": VIEW_TOKEN, "next": "/console/dead-letters?flow=x"})
        assert answer.status_code == 303 and answer.headers["Location"] == "/console/dead-letters?flow=x"
        for elsewhere in ("//evil.example/", "https://evil.example/console/", "/api/flows", "javascript:alert(1)"):
            sent = browser.post("/console/login", data={"token": VIEW_TOKEN, "next": elsewhere})
            assert sent.headers["Location"] == "/console/", elsewhere  # never away from this console


def test_a_wrong_token_is_refused_at_sign_in(live: ConsoleDaemon) -> None:
    with client(live) as browser:
        answer = browser.post("/console/login", data={"token": "guess", "next": "/console/"})
        assert answer.status_code == 401 and COOKIE not in answer.cookies
        assert "neither this daemon&#39;s operator token nor its view token" in answer.text
        assert browser.post("/console/login", data={}).status_code == 401


def test_the_session_cookie_is_httponly_strict_signed_and_carries_the_role(live: ConsoleDaemon) -> None:
    with client(live) as browser:
        answer = browser.post("/console/login", data={"token": OPERATOR_TOKEN, "next": "/console/"})
        header = answer.headers["Set-Cookie"]
        assert header.startswith(f"{COOKIE}=") and "HttpOnly" in header and "SameSite=Strict" in header
        assert "Path=/" in header and "Max-Age=43" in header  # 12 h, less the second it took
        assert OPERATOR_TOKEN not in header  # the cookie names the role, never the token
        overview = browser.get("/console/")
        assert overview.status_code == 200 and '<span class="role operator"' in overview.text
        assert browser.get("/api/flows").status_code == 200  # reads anywhere with the cookie
        body, signature = browser.cookies[COOKIE].split(".")
        for forged in (f"{body}.{signature[:-2]}xx", f"{body[:-2]}xx.{signature}", "garbage", ""):
            with client(live) as other:
                other.cookies.set(COOKIE, forged)
                assert other.get("/console/").status_code == 303, forged  # to the sign-in page
                assert other.get("/api/flows").status_code == 401, forged


def test_console_forms_need_their_sessions_csrf_field(live: ConsoleDaemon) -> None:
    with signed_in(live, OPERATOR_TOKEN) as browser:
        csrf = csrf_of(browser.get("/console/spec").text)
        missing = browser.post("/console/reload", data={})
        assert missing.status_code == 403 and "did not come from this console session" in missing.text
        assert browser.post("/console/reload", data={"csrf": "0" * 32}).status_code == 403
        assert browser.post("/console/reload", data={"csrf": csrf}).status_code == 200
        with signed_in(live, OPERATOR_TOKEN) as another:  # another session's field is not this one's
            assert another.post("/console/reload", data={"csrf": csrf}).status_code == 403
        # the JSON API with the cookie: the same field as a header
        assert browser.post("/api/reload").status_code == 403
        assert browser.post("/api/reload", headers={"X-CSRF-Token": csrf}).status_code == 200


def test_a_read_only_session_sees_every_page_and_changes_nothing(live: ConsoleDaemon) -> None:
    with signed_in(live, VIEW_TOKEN) as browser:
        pages = ("/console/", "/console/dead-letters", "/console/runs", "/console/systems", "/console/cursors")
        for path in (*pages, "/console/records?key=A", "/console/spec"):
            shown = browser.get(path)
            assert shown.status_code == 200 and "read-only" in shown.text, path
        spec = browser.get("/console/spec").text
        assert re.search(r"<button[^>]*disabled[^>]*>Reload the spec</button>", spec)
        csrf = csrf_of(spec)
        for path, form in (
            ("/console/reload", {}),
            ("/console/flows/catalog/run", {}),
            ("/console/cursors/catalog/reset", {"to": ""}),
            ("/console/dead-letters/replay", {"scope": "flow", "flow": "catalog"}),
        ):
            refused = browser.post(path, data={"csrf": csrf, **form})
            assert refused.status_code == 403 and "the view token may look, not change anything" in refused.text, path
        cursor = browser.get("/api/cursors").json()["cursors"][0]["value"]
        assert cursor is not None  # nothing was reset
        assert browser.post("/console/logout", data={"csrf": csrf}).status_code == 303  # signing out is allowed


def test_a_signed_out_session_is_refused_even_with_a_copy_of_its_cookie(live: ConsoleDaemon) -> None:
    with signed_in(live, OPERATOR_TOKEN) as browser:
        copy = browser.cookies[COOKIE]
        csrf = csrf_of(browser.get("/console/").text)
        out = browser.post("/console/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["Location"] == "/console/login"
        assert COOKIE not in browser.cookies or not browser.cookies[COOKIE]
    with client(live) as thief:
        thief.cookies.set(COOKIE, copy)
        assert thief.get("/console/").status_code == 303


def test_an_unknown_console_page_is_the_consoles_404(live: ConsoleDaemon) -> None:
    with signed_in(live, VIEW_TOKEN) as browser:
        missing = browser.get("/console/nope")
        assert missing.status_code == 404 and "no page at /console/nope" in missing.text
        letter = browser.get("/console/dead-letters/999")
        assert letter.status_code == 404 and "no dead letter 999" in letter.text
        assert browser.get("/console/dead-letters/x").status_code == 400
        headers = browser.get("/console/").headers
        assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"


# -- dev mode --------------------------------------------------------------------------------------------------


def test_dev_mode_is_open_as_the_operator_and_its_forms_still_carry_csrf(tmp_path: Path) -> None:
    with guarded(tmp_path, token=None, dev=True) as live, client(live) as browser:
        assert browser.get("/api/flows").status_code == 200
        assert browser.post("/api/reload").status_code == 200  # the JSON API as before: open
        assert browser.get("/console/login").headers["Location"] == "/console/"
        spec = browser.get("/console/spec")
        assert spec.status_code == 200 and '<span class="role operator"' in spec.text and "Sign out" not in spec.text
        # a page of another site could post a form to a loopback daemon: the console's forms need the field
        assert browser.post("/console/reload", data={}).status_code == 403
        assert browser.post("/console/reload", data={"csrf": csrf_of(spec.text)}).status_code == 200


# -- the session itself ---------------------------------------------------------------------------------------


class Tokens:
    token: str | None = OPERATOR_TOKEN
    view_token: str | None = VIEW_TOKEN


def test_sessions_sign_expire_end_and_give_the_role_of_each_token() -> None:
    now = [1_000_000.0]
    sessions = Sessions(Tokens(), clock=lambda: now[0])
    assert sessions.role_of(OPERATOR_TOKEN) == "operator" and sessions.role_of(VIEW_TOKEN) == "viewer"
    assert sessions.role_of("") is None and sessions.role_of(OPERATOR_TOKEN + "x") is None
    assert sessions.bearer_role(f"Bearer {VIEW_TOKEN}") == "viewer"
    assert sessions.bearer_role(f"bearer {OPERATOR_TOKEN}") == "operator"
    assert sessions.bearer_role(f"Basic {OPERATOR_TOKEN}") is None and sessions.bearer_role("Bearer") is None
    cookie, session = sessions.issue("viewer")
    assert sessions.session(cookie) == session and isinstance(session, Session)
    assert Sessions(Tokens()).session(cookie) is None  # another daemon (another key)
    assert sessions.csrf(session.sid) != sessions.csrf("other")
    assert sessions.csrf_ok(session.sid, sessions.csrf(session.sid))
    assert not sessions.csrf_ok(session.sid, None)
    now[0] += 12 * 3600 + 1
    assert sessions.session(cookie) is None  # expired
    cookie, session = sessions.issue("operator")
    sessions.end(session)
    assert sessions.session(cookie) is None  # signed out


def test_without_a_view_token_no_token_gives_the_read_only_role() -> None:
    class OnlyOperator:
        token: str | None = OPERATOR_TOKEN
        view_token: str | None = None

    sessions = Sessions(OnlyOperator())
    assert sessions.role_of("") is None and sessions.role_of(OPERATOR_TOKEN) == "operator"
    assert not sessions.open and Sessions(type("Dev", (), {"token": None, "view_token": None})()).open
