"""Who is asking: the two roles, the tokens that give them, and the console's signed session cookie.

The daemon has an operator token (everything, changes included) and may have a view token (read-only). A script
sends one as ``Authorization: Bearer``; a person signs in to the console with one and gets a session cookie.
The cookie is the role and an expiry, signed with HMAC-SHA256 under a key made when the daemon's app is built:
nothing is stored, and a restarted daemon's cookies are void (sign in again). A signed-out session is remembered
until it would have expired, so its cookie, copied before, is refused too.

The policy (which paths are open, what each role may do) is the HTTP middleware's (engine/runtime/api.py);
this module only says who a request is and makes and checks the cookie and the CSRF field of its forms.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from aiohttp import web

__all__ = [
    "COOKIE",
    "CSRF",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "ROLE",
    "SESSIONS",
    "Role",
    "Session",
    "Sessions",
    "Tokens",
]

Role = Literal["operator", "viewer"]

COOKIE = "seamline_session"
CSRF_FIELD = "csrf"  # the hidden field of every console form
CSRF_HEADER = "X-CSRF-Token"  # the same, for a script that posts with the session cookie
LIFETIME = 12 * 3600.0  # a night's shift; then sign in again

ROLE: web.RequestKey[Role] = web.RequestKey("seamline_role")  # set by the middleware on every request it lets in
CSRF: web.RequestKey[str] = web.RequestKey("seamline_csrf")  # the value the request's forms must carry back


class Tokens(Protocol):
    """Where the tokens are (the daemon): read at each request, never copied."""

    token: str | None
    view_token: str | None


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in person: the role, when the session ends, and its id (what its CSRF field is made from)."""

    role: Role
    expires: float
    sid: str


class Sessions:
    """Signs and checks session cookies and CSRF fields for one daemon (one random key per app)."""

    def __init__(self, tokens: Tokens, *, clock: Callable[[], float] = time.time) -> None:
        self.tokens = tokens
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._ended: dict[str, float] = {}  # signed-out session id -> when its cookie would have expired

    @property
    def open(self) -> bool:
        """No operator token: the daemon runs with ``--dev`` (loopback only) and everyone is the operator."""
        return not self.tokens.token

    def role_of(self, given: str) -> Role | None:
        """The role a token gives: the operator's or the view token; None for anything else (compared in constant
        time, both always compared)."""
        operator = _same(given, self.tokens.token)
        viewer = _same(given, self.tokens.view_token)
        if operator:
            return "operator"
        return "viewer" if viewer else None

    def bearer_role(self, header: str) -> Role | None:
        """The role of an ``Authorization: Bearer <token>`` header (None: absent, malformed or a wrong token)."""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        return self.role_of(given.strip())

    def issue(self, role: Role) -> tuple[str, Session]:
        """A new session's cookie value: ``<payload>.<signature>``, both base64url."""
        session = Session(role, self.clock() + LIFETIME, secrets.token_urlsafe(16))
        payload = json.dumps({"r": session.role, "e": round(session.expires), "s": session.sid}, separators=(",", ":"))
        body = _b64(payload.encode())
        return f"{body}.{self._sign(body)}", session

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie carries; None when it is absent, forged, expired, signed out or from another
        daemon (another key)."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, signature = cookie.split(".")
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        try:
            fields = json.loads(_unb64(body))
            role, expires, sid = fields["r"], float(fields["e"]), str(fields["s"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if role not in ("operator", "viewer") or expires <= self.clock() or sid in self._ended:
            return None
        return Session(role, expires, sid)

    def end(self, session: Session) -> None:
        """Sign out: the session's cookie is refused from now on, even if someone kept a copy."""
        now = self.clock()
        self._ended = {sid: until for sid, until in self._ended.items() if until > now}  # forget the expired
        self._ended[session.sid] = session.expires

    def csrf(self, sid: str) -> str:
        """The CSRF field of a session's forms: derived from its id with the key, so another site cannot make it
        (``sid`` is "dev" in dev mode and "bearer" for a script that sent its token)."""
        return hmac.new(self._key, f"csrf:{sid}".encode(), hashlib.sha256).hexdigest()[:32]

    def csrf_ok(self, sid: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf(sid).encode())

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, f"session:{body}".encode(), hashlib.sha256).digest())


def _same(given: str, token: str | None) -> bool:
    if not token:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


SESSIONS: web.AppKey[Sessions] = web.AppKey("seamline_sessions")
