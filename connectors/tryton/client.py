"""The tryton connector's connection: JSON-RPC over one HTTP kit session per system (:mod:`engine.kit.http`).

Who calls what is documented on :class:`engine.connector.Connection`; the record shapes are in the
package doc. How Tryton's answers are translated, right where they enter (no library exception and no
raw Tryton error ever leaves this module)::

    timeout, connection refused, reset or dropped        TransientError
    HTTP 408, 429, 5xx                                    TransientError  (Retry-After -> retry_after)
    HTTP 401 on a call                                    the session expired: log in again once, resend
    HTTP 401 on login, or again after a fresh login       TerminalError   (check the login and password)
    HTTP 403 / 404                                        TerminalError   (method not exposed / no such database)
    {"error": ["UserError", [message, description, …]]}   TerminalError   quoting Tryton's message
    {"error": ["UserWarning", [name, message, …]]}        TerminalError   quoting Tryton's message
    {"error": ["ConcurrencyException", message]}          TransientError  (someone else saved the record)
    {"error": [text, traceback]} "database is locked"     TransientError
    {"error": [text, traceback]} anything else            TerminalError   (a server-side failure, quoted)

The protocol, in short: ``POST <url>/<database>/rpc/`` with ``{"id", "method", "params"}``;
``common.db.login`` answers ``[user_id, session, …]``, and later requests carry
``Authorization: Session base64(login:user_id:session)``. Model methods are
``model.<model>.<method>`` with Tryton's context (from ``res.user.get_preferences``) as the last
parameter. Decimals, dates and datetimes travel as ``{"__class__": "Decimal", "decimal": "1.50"}``
and the like.

Requests are logged on the ``seamline.connectors.tryton`` logger at DEBUG (method and duration;
the password, the session and the Authorization header are never logged).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Final
from urllib.parse import quote

from connectors.tryton import TrytonOptions
from engine.connector import (
    Caller,
    Checker,
    ConnectContext,
    ExistenceChecker,
    Source,
    Target,
    closest,
)
from engine.errors import SeamlineError, TerminalError, TransientError
from engine.kit.http.auth import Token, TokenCache
from engine.kit.http.errors import server_message
from engine.kit.http.session import Response, Session, Transport

__all__ = ["TrytonConnection", "from_tryton", "to_tryton"]


MASK: Final = "***"
SCAN_PAGE: Final = 1000  # ids and dates per request while finding what changed
_TRANSIENT_TEXT = re.compile(r"database is locked|could not serialize|deadlock|OperationalError", re.IGNORECASE)
_NOT_DIGITS = re.compile(r"[^0-9A-Za-z]")
_OPEN_SALE_STATES: Final = frozenset({"draft", "quotation"})


# -- Tryton's JSON: Decimal, date, datetime travel as tagged objects --------------------------------


def to_tryton(value: Any) -> Any:
    """A Python value as Tryton's JSON-RPC expects it (Decimal, date and datetime tagged)."""
    if isinstance(value, Decimal):
        return {"__class__": "Decimal", "decimal": str(value)}
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)  # Tryton stores naive UTC times
        return {
            "__class__": "datetime",
            "year": value.year,
            "month": value.month,
            "day": value.day,
            "hour": value.hour,
            "minute": value.minute,
            "second": value.second,
            "microsecond": value.microsecond,
        }
    if isinstance(value, date):
        return {"__class__": "date", "year": value.year, "month": value.month, "day": value.day}
    if isinstance(value, Mapping):
        return {str(k): to_tryton(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_tryton(v) for v in value]
    return value


def from_tryton(obj: dict[str, Any]) -> Any:
    """``json.loads`` object hook: Tryton's tagged objects back to Decimal, date, datetime, timedelta."""
    kind = obj.get("__class__")
    try:
        if kind == "Decimal":
            return Decimal(obj["decimal"])
        if kind == "datetime":
            return datetime(
                obj["year"], obj["month"], obj["day"], obj["hour"], obj["minute"], obj["second"], obj["microsecond"]
            )
        if kind == "date":
            return date(obj["year"], obj["month"], obj["day"])
        if kind == "timedelta":
            return timedelta(seconds=obj["seconds"])
        if kind == "bytes":
            return base64.decodebytes(obj["base64"].encode("ascii"))
    except (KeyError, TypeError, ValueError, InvalidOperation):
        return obj
    return obj


def _plain(value: Any) -> Any:
    """A value read from Tryton as plain JSON for a record: numbers, ISO dates, UTC times with Z."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        return float(value)  # JSON numbers, as the shop's APIs take them; Tryton rounds to its digits anyway
    if isinstance(value, datetime):
        return _stamp(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _stamp(value: datetime) -> str:
    """A Tryton time (naive UTC) as the cursor text: fixed width, so later times sort later as text."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_since(text: str, system: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise TerminalError(
            f"{system}: the cursor '{text}' is not a time; Tryton reads by write_date, "
            "so use `cursor: write_date` (its values look like 2026-01-31T10:00:00.000000Z)"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _compact(code: str) -> str:
    """A tax identifier without spaces, dots or dashes, upper case (how Tryton stores ``code_compact``)."""
    return _NOT_DIGITS.sub("", code).upper()


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ("" if value is None else str(value))


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise TerminalError(f"{what} must be a number, not {type(value).__name__}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise TerminalError(f"{what} must be a number, not '{value}'") from None
    if not number.is_finite():
        raise TerminalError(f"{what} must be a finite number, not '{value}'")
    return number


def _dotted(row: Mapping[str, Any], path: str) -> Any:
    """A value from a row read with dotted field names ('party.code' comes back as row['party.']['code'])."""
    head, _, rest = path.partition(".")
    if not rest:
        return row.get(head)
    inner = row.get(head + ".")
    if isinstance(inner, Mapping):
        return _dotted(inner, rest)
    return None


def _many(row: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    """The related rows of an x2many field read with dotted names."""
    inner = row.get(name + ".")
    return [r for r in inner if isinstance(r, Mapping)] if isinstance(inner, list) else []


def _domain_from_filter(filter: Mapping[str, Any] | None, system: str) -> list[Any]:
    """``source.filter`` as Tryton domain clauses (see the package doc)."""
    clauses: list[Any] = []
    for name, value in (filter or {}).items():
        if name == "domain":
            if not isinstance(value, list):
                raise TerminalError(f"{system}: filter.domain must be a Tryton domain (a list), not {value!r}")
            clauses.extend(value)
        elif isinstance(value, list):
            clauses.append([name, "in", value])
        elif isinstance(value, Mapping) and len(value) == 1:
            ((operator, operand),) = value.items()
            clauses.append([name, str(operator), operand])
        else:
            clauses.append([name, "=", value])
    return clauses


# -- what an entity is and where its changes show ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    """A model whose rows' write/create dates are changes of the entity's records.

    ``link`` is the field that points at the entity's record (``id`` on the entity's own model); it
    may be a many-valued field (a template's ``products``). ``full_only`` sources count only on a
    read without a cursor (every product has a stock level, moved or not).
    """

    model: str
    link: str = "id"
    domain: tuple[Any, ...] = ()
    full_only: bool = False


@dataclass(frozen=True, slots=True)
class _Entity:
    model: str
    sources: tuple[_Source, ...]
    domain: tuple[Any, ...] = ()  # always applies to the entity's model
    with_inactive: bool = False  # deactivated records are read too (a discontinued product)


_GOODS: Final = (("type", "=", "goods"),)
_PRODUCT_SOURCES = (_Source("product.product"), _Source("product.template", "products"))
_ENTITIES: Final[dict[str, _Entity]] = {
    "products": _Entity("product.product", _PRODUCT_SOURCES, with_inactive=True),
    "prices": _Entity("product.product", _PRODUCT_SOURCES, with_inactive=True),
    "stock": _Entity(
        "product.product",
        (_Source("stock.move", "product"), _Source("product.product", domain=_GOODS, full_only=True)),
        domain=_GOODS,
    ),
    "parties": _Entity(
        "party.party",
        (
            _Source("party.party"),
            _Source("party.address", "party"),
            _Source("party.contact_mechanism", "party"),
            _Source("party.identifier", "party"),
        ),
        with_inactive=True,
    ),
    "sales": _Entity("sale.sale", (_Source("sale.sale"), _Source("sale.line", "sale"))),
    "shipments": _Entity("stock.shipment.out", (_Source("stock.shipment.out"),)),
    "invoices": _Entity(
        "account.invoice", (_Source("account.invoice", domain=(("type", "=", "out"),)),), domain=(("type", "=", "out"),)
    ),
}

_PARTY_FIELDS: Final = [
    "code",
    "name",
    "active",
    "contact_mechanisms.type",
    "contact_mechanisms.value",
    "identifiers.type",
    "identifiers.code",
    "addresses.party_name",
    "addresses.street",
    "addresses.postal_code",
    "addresses.city",
    "addresses.country.code",
    "addresses.active",
]


@dataclass(slots=True)
class _Session:
    header: str
    user_id: int
    context: dict[str, Any]


Sales = list[dict[str, Any]]


def _sorted_sales(sales: Sales) -> tuple[Sales, Sales, Sales]:
    """(settled, open, cancelled) sales, each oldest first: settled is past quotation (confirmed,
    processing, done), open is draft or quotation."""
    opened = [s for s in sales if s.get("state") in _OPEN_SALE_STATES]
    cancelled = [s for s in sales if s.get("state") == "cancelled"]
    settled = [s for s in sales if s not in opened and s not in cancelled]
    return settled, opened, cancelled


def _sale_receipt(sale: Mapping[str, Any]) -> str:
    return f"sale {sale['id']} {sale.get('number') or '-'} {sale.get('state')}"


class _SessionExpired(Exception):
    """Tryton answered 401 to a call made with a session: it expired or the server forgot it."""


class TrytonConnection(Source, Target, Caller, Checker, ExistenceChecker):
    """An open connection to one Tryton database: a pooled client, a session and a few cached look-ups.

    What flows may name is declared once, in the dispatch tables at the end of the class: ``READS``
    (source.read), ``WRITES`` (target.write) and ``CALLS`` (source.call); the connector kind derives its
    operations from them.
    """

    def __init__(
        self,
        options: TrytonOptions,
        context: ConnectContext,
        *,
        transport: Transport | None = None,
    ) -> None:
        self.options = options
        self.context = context
        self.system = context.system
        base = options.url.rstrip("/")
        self.rpc_url = f"{base}/{quote(options.database, safe='')}/rpc/"
        # Tryton serves few requests at once (a worker per request): 4 connections unless limits say otherwise
        self.http = Session.for_system("tryton", options, context, url=base, connections=4, transport=transport)
        self.log, self.timeout = self.http.logger, self.http.timeout
        self._sessions: TokenCache[_Session] = TokenCache(self._login)  # the login, kept until Tryton refuses it
        self._lookups: dict[tuple[str, str], int] = {}
        self._company_info: tuple[int, int, str] | None = None
        self._warehouse_list: list[tuple[int, str]] | None = None
        self.logins = 0  # how many times this connection logged in (a renewed session counts)
        self._remember_secret(options.auth.session.password)

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> TrytonConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- the Connection contract --------------------------------------------------------------
    async def read(
        self,
        entity: str,
        *,
        since: str | None = None,
        cursor_field: str | None = None,
        page_size: int = 100,
        filter: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[list[Any]]:
        """Records of ``entity`` whose latest change is at or after ``since``, oldest change first.

        Two steps, so the order is exact even when ``write_date`` is empty (a record never modified)
        or the change is in a related row (a template, an address): first the ids and change times
        of what changed (keyset pages of ids, so concurrent edits cannot shift a page), then the
        records themselves, ``page_size`` at a time, in the order of their latest change.
        """
        spec = self.READS.get(entity)
        if spec is None:
            raise self._unknown("read", entity, self.READS)
        if cursor_field not in (None, "write_date"):
            raise TerminalError(
                f"{self.system}: Tryton records are read by their latest change; use `cursor: write_date` "
                f"(not '{cursor_field}')"
            )
        moment = _parse_since(since, self.system) if since else None
        extra = _domain_from_filter(filter, self.system)
        changed = await self._changed(spec, moment)
        size = max(1, page_size)
        for start in range(0, len(changed), size):
            chunk = changed[start : start + size]
            records = await self._shape(entity, spec, [record_id for _, record_id in chunk], extra)
            page: list[Any] = []
            for stamp, record_id in chunk:
                for record in records.get(record_id, []):
                    record["write_date"] = _stamp(stamp)
                    page.append(record)
            if page:
                yield page

    def check(self, entity: str, record: Any) -> None:
        """Before a write: a record of the wrong shape is terminal and never sent."""
        if entity not in self.WRITES:
            raise self._unknown("write", entity, self.WRITES)
        if entity == "parties":
            self._check_party(record, "the party")
        elif entity == "sales":
            self._check_sale(record)
        else:
            self._check_product(record)

    async def write(self, entity: str, record: Any, *, key: Any, mode: str, idempotency_key: str) -> str:
        """Create or complete one record; returns ``party <id>``, ``sale <id> <number> <state>`` or ``product <id>``.

        Tryton keeps no idempotency keys, so each entity is matched by its business key instead
        (a party's VAT code or email, a sale's reference, a product's code): a write that comes
        again finds what the first one made. ``key`` and ``mode`` change nothing: parties and
        products are always upserted, a sale is created once.
        """
        self.check(entity, record)
        return await self.WRITES[entity](self, record)

    async def exists(self, entity: str, record: Any, *, key: Any) -> bool | None:
        """Whether Tryton has the record already (the ExistenceChecker role, for create-only fields).

        Called by a worker before writing to a target with ``create_only`` or ``update_only`` fields; it
        asks what a write matches by, one search each: ``parties`` by VAT code, else email; ``products`` by
        code (deactivated ones count: a write would reactivate, not create them). ``sales``: None (a sale
        is created once and never updated; the runtime's ledger answers).
        """
        if entity == "parties":
            self._check_party(record, "the party")
            return await self._find_party(record) is not None
        if entity == "products":
            self._check_product(record)
            rows = await self._search_read(
                "product.product",
                [["code", "=", _text(record.get("code"))]],
                ["id"],
                context={"active_test": False},
                limit=1,
            )
            return bool(rows)
        return None

    async def call(self, operation: str, request: Any, *, timeout: float) -> Any:
        """``price``, ``stock`` or ``party`` (see the package doc); answers within ``timeout`` or fails."""
        handler = self.CALLS.get(operation)
        if handler is None:
            raise self._unknown("call", operation, self.CALLS)
        if not isinstance(request, Mapping):
            raise TerminalError(f"{self.system}: '{operation}' needs an object, not {type(request).__name__}")
        try:
            return await asyncio.wait_for(handler(self, request), timeout=timeout)
        except TimeoutError:
            raise TransientError(f"{self.system}: '{operation}' got no answer within {timeout:g}s") from None

    # -- JSON-RPC -------------------------------------------------------------------------------
    async def rpc(
        self, method: str, *params: Any, context: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """One ``model.*`` call with the session's context (updated by ``context``) as the last parameter.

        An expired session is renewed once and the call sent again (Tryton refused it before
        running it, so sending it again is safe).
        """
        for attempt in (1, 2):
            session = await self._sessions.get()
            merged = {**session.context, **(context or {})}
            try:
                return await self._post(method, [*params, merged], session=session, timeout=timeout)
            except _SessionExpired:
                self._sessions.forget(session)
                if attempt == 2:
                    raise TerminalError(
                        f"{self.system}: Tryton refused a freshly opened session for {method} (401); "
                        "check that the user is active and may use the API"
                    ) from None
                self.log.debug("%s: session expired; logging in again", self.system)
        raise AssertionError("unreachable")

    async def _login(self) -> Token[_Session]:
        auth = self.options.auth.session
        result = await self._post(
            "common.db.login",
            [auth.login, {"password": auth.password}, self.options.language],
            session=None,
            sensitive=True,
        )
        if not (isinstance(result, list) and len(result) >= 2 and isinstance(result[0], int)):
            raise TerminalError(f"{self.system}: Tryton's login answer is not [user id, session]: {type(result)}")
        user_id, token = result[0], str(result[1])
        self._remember_secret(token)
        header = "Session " + base64.b64encode(f"{auth.login}:{user_id}:{token}".encode()).decode("ascii")
        self._remember_secret(header)
        session = _Session(header=header, user_id=user_id, context={})
        try:
            preferences = await self._post("model.res.user.get_preferences", [True, {}], session=session)
        except _SessionExpired:
            raise TerminalError(
                f"{self.system}: Tryton refused the session it had just opened for user '{auth.login}' (401)"
            ) from None
        if not isinstance(preferences, dict):
            raise TerminalError(f"{self.system}: Tryton's user preferences are not an object")
        # what Tryton's own client sends back as the context of every call (less the display locale)
        session.context = {k: v for k, v in preferences.items() if k != "locale"}
        self.logins += 1
        self.log.debug("%s: logged in as %s (user %s)", self.system, auth.login, user_id)
        return Token(session)  # Tryton says nothing of its lifetime: kept until a call is answered 401

    async def _post(
        self,
        method: str,
        params: list[Any],
        *,
        session: _Session | None,
        timeout: float | None = None,
        sensitive: bool = False,
    ) -> Any:
        """Send one JSON-RPC request; translate every failure; return its result."""
        where = f"{self.system}: {method}"
        headers = {"Authorization": session.header} if session is not None else None
        try:
            payload = {"id": 1, "method": method, "params": to_tryton(params)}
        except (TypeError, ValueError) as exc:
            raise TerminalError(f"{where}: the request is not JSON: {exc}") from exc
        response = await self.http.send(
            "POST",
            self.rpc_url,
            json=payload,
            headers=headers,
            timeout=timeout,
            what=method,
            sensitive=sensitive,
            authorize=False,
        )
        self._raise_for_status(method, response, session)
        try:
            answer = json.loads(response.content, object_hook=from_tryton)
        except ValueError:
            raise TerminalError(
                f"{where}: the answer is not JSON ({response.header('Content-Type') or 'no content type'}): "
                + self._mask(server_message(None, response.text))
            ) from None
        if not isinstance(answer, dict):
            raise TerminalError(f"{where}: the answer is not a JSON-RPC object")
        if answer.get("error") is not None:
            raise self._rpc_error(method, answer["error"])
        return answer.get("result")

    def _raise_for_status(self, method: str, response: Response, session: _Session | None) -> None:
        status = response.status
        if 200 <= status < 300:
            return
        where = f"{self.system}: {method} -> {status} {response.reason}"
        if status == 401:
            if session is not None:
                raise _SessionExpired()
            raise TerminalError(
                f"{self.system}: Tryton refused the login of user '{self.options.auth.session.login}' "
                f"on database '{self.options.database}' (401); check the login and password",
                status=401,
            )
        if status == 403:
            raise TerminalError(
                f"{where}: Tryton does not let this user call {method} over RPC (no such method, or no access)",
                status=403,
            )
        if status == 404:
            raise TerminalError(
                f"{where}: no database '{self.options.database}' at {self.options.url} "
                "(check `database`, and that the server was started with it)",
                status=404,
            )
        raise self.http.error(response, method)

    def _rpc_error(self, method: str, error: Any) -> SeamlineError:
        """Tryton's ``error`` member as one of our errors, with Tryton's own words."""
        where = f"{self.system}: {method}"
        kind = error[0] if isinstance(error, list) and error else error
        detail = error[1] if isinstance(error, list) and len(error) > 1 else None
        if kind == "UserError" and isinstance(detail, list) and detail:
            message = _text(detail[0])
            description = _text(detail[1]) if len(detail) > 1 else ""
            text = f"{where}: Tryton refused it: {message}" + (f" ({description})" if description else "")
            return TerminalError(self._mask(text))
        if kind == "UserWarning" and isinstance(detail, list) and len(detail) > 1:
            description = _text(detail[2]) if len(detail) > 2 else ""
            text = f"{where}: Tryton stopped on a warning: {_text(detail[1])}" + (
                f" ({description})" if description else ""
            )
            return TerminalError(self._mask(text + f" [warning '{_text(detail[0])}'; a Tryton user must accept it]"))
        if kind == "ConcurrencyException":
            return TransientError(f"{where}: someone else changed the record meanwhile: {_text(detail)}")
        if kind == "LoginException":
            return TerminalError(f"{where}: Tryton asks for more to log in: {_text(detail)}")
        text = _text(kind)
        if _TRANSIENT_TEXT.search(text):
            return TransientError(f"{where}: Tryton's database is busy: {self._mask(text)}")
        if text.startswith("'") and text.endswith("'") and "." in text:
            return TerminalError(f"{where}: Tryton has no model {text} (is its module activated?)")
        return TerminalError(self._mask(f"{where}: Tryton failed: {text or repr(error)}"))

    # -- small look-ups, cached per connection ---------------------------------------------------
    async def _search_read(
        self,
        model: str,
        domain: Sequence[Any],
        fields: Sequence[str],
        *,
        limit: int | None = None,
        order: Sequence[Sequence[str]] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        rows = await self.rpc(
            f"model.{model}.search_read",
            list(domain),
            0,
            limit,
            [list(o) for o in order] if order else None,
            list(fields),
            context=context,
        )
        if not isinstance(rows, list):
            raise TerminalError(f"{self.system}: {model}.search_read did not answer a list")
        return [row for row in rows if isinstance(row, dict)]

    async def _lookup_id(self, model: str, field: str, value: str, what: str) -> int:
        """The id of the ``model`` record whose ``field`` is ``value`` (cached), or a TerminalError."""
        cache_key = (model, f"{field}={value}")
        found = self._lookups.get(cache_key)
        if found is not None:
            return found
        rows = await self._search_read(model, [[field, "=", value]], ["id"], limit=1)
        if not rows:
            raise TerminalError(f"{self.system}: there is no {what} '{value}' in Tryton ({model}.{field})")
        self._lookups[cache_key] = rows[0]["id"]
        return int(rows[0]["id"])

    async def _company(self) -> tuple[int, int, str]:
        """The session's company id, its currency id and currency code."""
        if self._company_info is not None:
            return self._company_info
        session = await self._sessions.get()
        company = session.context.get("company")
        if not isinstance(company, int):
            raise TerminalError(
                f"{self.system}: the Tryton user '{self.options.auth.session.login}' has no current company; "
                "set one on the user"
            )
        rows = await self.rpc("model.company.company.read", [company], ["currency.code"])
        currency = _dotted(rows[0], "currency.id") if rows else None
        code = _dotted(rows[0], "currency.code") if rows else None
        if not isinstance(currency, int) or not isinstance(code, str):
            raise TerminalError(f"{self.system}: Tryton's company {company} has no currency")
        self._company_info = (company, currency, code)
        return self._company_info

    async def _warehouses(self) -> list[tuple[int, str]]:
        """(id, code) of the warehouse named in the options, or of every warehouse."""
        if self._warehouse_list is not None:
            return self._warehouse_list
        domain: list[Any] = [["type", "=", "warehouse"]]
        if self.options.warehouse:
            domain.append(["code", "=", self.options.warehouse])
        rows = await self._search_read("stock.location", domain, ["code"], order=[["id", "ASC"]])
        if not rows:
            where = f"with code '{self.options.warehouse}'" if self.options.warehouse else "at all"
            raise TerminalError(f"{self.system}: Tryton has no warehouse {where} (stock.location of type warehouse)")
        self._warehouse_list = [(int(r["id"]), _text(r.get("code")) or str(r["id"])) for r in rows]
        return self._warehouse_list

    # -- reading: what changed, then the records -------------------------------------------------
    async def _changed(self, entity: _Entity, since: datetime | None) -> list[tuple[datetime, int]]:
        """(latest change, id) of every record of ``entity`` changed at or after ``since``, oldest first."""
        latest: dict[int, datetime] = {}
        context = {"active_test": False} if entity.with_inactive else None
        for source in entity.sources:
            if source.full_only and since is not None:
                continue
            domain: list[Any] = list(source.domain)
            if since is not None:
                domain.append(["OR", ["write_date", ">=", since], ["create_date", ">=", since]])
            fields = ["write_date", "create_date"] + ([] if source.link == "id" else [source.link])
            async for row in self._scan(source.model, domain, fields, context):
                stamps = [d for d in (row.get("write_date"), row.get("create_date")) if isinstance(d, datetime)]
                if not stamps:
                    continue
                stamp = max(stamps)
                link = row.get(source.link)
                for target in link if isinstance(link, list) else [link]:
                    if isinstance(target, int) and (target not in latest or latest[target] < stamp):
                        latest[target] = stamp
        return sorted((stamp, record_id) for record_id, stamp in latest.items())

    async def _scan(
        self, model: str, domain: list[Any], fields: list[str], context: Mapping[str, Any] | None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row of ``model`` matching ``domain``, in pages of ids after the last one seen."""
        last = 0
        while True:
            rows = await self._search_read(
                model, [*domain, ["id", ">", last]], fields, limit=SCAN_PAGE, order=[["id", "ASC"]], context=context
            )
            for row in rows:
                yield row
            if len(rows) < SCAN_PAGE:
                return
            last = int(rows[-1]["id"])

    async def _shape(
        self, entity: str, spec: _Entity, ids: list[int], extra: list[Any]
    ) -> dict[int, list[dict[str, Any]]]:
        """The records of ``ids`` as the package doc shows them (stock gives one per warehouse)."""
        domain = [["id", "in", ids], *spec.domain, *extra]
        context = {"active_test": False} if spec.with_inactive else None
        if entity in ("products", "prices"):
            return {k: [v] for k, v in (await self._products(domain, context, prices_only=entity == "prices")).items()}
        if entity == "stock":
            return await self._stock(domain)
        if entity == "parties":
            rows = await self._search_read("party.party", domain, _PARTY_FIELDS, context=context)
            return {int(r["id"]): [self._party_record(r)] for r in rows}
        if entity == "sales":
            return {k: [v] for k, v in (await self._sales(domain)).items()}
        if entity == "shipments":
            return {k: [v] for k, v in (await self._shipments(domain)).items()}
        return {k: [v] for k, v in (await self._invoices(domain)).items()}

    async def _products(
        self, domain: list[Any], context: Mapping[str, Any] | None, *, prices_only: bool
    ) -> dict[int, dict[str, Any]]:
        fields = ["code", "name", "active", "template.active", "salable", "type", "list_price_used"]
        fields += ["default_uom.name", "description"]
        rows = await self._search_read("product.product", domain, fields, context=context)
        _, _, currency = await self._company()
        records: dict[int, dict[str, Any]] = {}
        for row in rows:
            active = bool(row.get("active")) and bool(_dotted(row, "template.active"))
            price = _plain(row.get("list_price_used"))
            if prices_only:
                records[int(row["id"])] = {
                    "id": row["id"],
                    "code": row.get("code"),
                    "list_price": price,
                    "currency": currency,
                    "active": active,
                }
                continue
            records[int(row["id"])] = {
                "id": row["id"],
                "code": row.get("code"),
                "name": row.get("name"),
                "description": row.get("description"),
                "type": row.get("type"),
                "salable": bool(row.get("salable")),
                "active": active,
                "discontinued": not active,
                "list_price": price,
                "currency": currency,
                "unit": _dotted(row, "default_uom.name"),
            }
        return records

    async def _stock(self, domain: list[Any]) -> dict[int, list[dict[str, Any]]]:
        records: dict[int, list[dict[str, Any]]] = {}
        for warehouse_id, warehouse_code in await self._warehouses():
            rows = await self._search_read(
                "product.product",
                domain,
                ["code", "quantity", "forecast_quantity"],
                context={"locations": [warehouse_id], "active_test": False},
            )
            for row in rows:
                records.setdefault(int(row["id"]), []).append(
                    {
                        "product_id": row["id"],
                        "code": row.get("code"),
                        "warehouse": warehouse_code,
                        "quantity": _plain(row.get("quantity")),
                        "forecast_quantity": _plain(row.get("forecast_quantity")),
                    }
                )
        return records

    def _party_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        mechanisms = _many(row, "contact_mechanisms")
        emails = [_text(m.get("value")) for m in mechanisms if m.get("type") == "email" and m.get("value")]
        phones = [_text(m.get("value")) for m in mechanisms if m.get("type") in ("phone", "mobile") and m.get("value")]
        identifiers = [
            {"type": i.get("type"), "code": i.get("code")} for i in _many(row, "identifiers") if i.get("code")
        ]
        vat = next((i["code"] for i in identifiers if i["type"] == self.options.vat_type), None)
        addresses = [
            {
                "id": a.get("id"),
                "name": a.get("party_name"),
                "street": a.get("street"),
                "postal_code": a.get("postal_code"),
                "city": a.get("city"),
                "country": _dotted(a, "country.code"),
            }
            for a in _many(row, "addresses")
            if a.get("active", True)
        ]
        return {
            "id": row.get("id"),
            "code": row.get("code"),
            "name": row.get("name"),
            "active": bool(row.get("active")),
            "email": emails[0] if emails else None,
            "emails": emails,
            "phone": phones[0] if phones else None,
            "phones": phones,
            "vat": vat,
            "identifiers": identifiers,
            "addresses": addresses,
        }

    async def _sales(self, domain: list[Any]) -> dict[int, dict[str, Any]]:
        fields = ["number", "reference", "state", "shipment_state", "invoice_state", "sale_date", "description"]
        fields += ["party.code", "party.name", "currency.code", "untaxed_amount", "tax_amount", "total_amount"]
        fields += ["lines.type", "lines.product.code", "lines.quantity", "lines.unit_price", "lines.amount"]
        fields += ["lines.description", "shipments.number", "shipments.state", "invoices.number", "invoices.state"]
        rows = await self._search_read("sale.sale", domain, fields)
        return {
            int(row["id"]): {
                "id": row["id"],
                "number": row.get("number"),
                "reference": row.get("reference"),
                "state": row.get("state"),
                "shipment_state": row.get("shipment_state"),
                "invoice_state": row.get("invoice_state"),
                "sale_date": _plain(row.get("sale_date")),
                "description": row.get("description"),
                "party": {"code": _dotted(row, "party.code"), "name": _dotted(row, "party.name")},
                "currency": _dotted(row, "currency.code"),
                "untaxed_amount": _plain(row.get("untaxed_amount")),
                "tax_amount": _plain(row.get("tax_amount")),
                "total_amount": _plain(row.get("total_amount")),
                "lines": [
                    {
                        "code": _dotted(line, "product.code"),
                        "description": line.get("description"),
                        "quantity": _plain(line.get("quantity")),
                        "unit_price": _plain(line.get("unit_price")),
                        "amount": _plain(line.get("amount")),
                    }
                    for line in sorted(_many(row, "lines"), key=lambda line: int(line.get("id") or 0))
                    if line.get("type") == "line"
                ],
                "shipments": [{"number": s.get("number"), "state": s.get("state")} for s in _many(row, "shipments")],
                "invoices": [{"number": i.get("number"), "state": i.get("state")} for i in _many(row, "invoices")],
            }
            for row in rows
        }

    async def _shipments(self, domain: list[Any]) -> dict[int, dict[str, Any]]:
        fields = ["number", "state", "reference", "planned_date", "effective_date", "customer.code", "customer.name"]
        fields += ["warehouse.code", "outgoing_moves.product.code", "outgoing_moves.quantity", "outgoing_moves.state"]
        rows = await self._search_read("stock.shipment.out", domain, fields)
        ids = [int(row["id"]) for row in rows]
        sales: dict[int, list[dict[str, Any]]] = {}
        if ids:
            for sale in await self._search_read(
                "sale.sale", [["shipments", "in", ids]], ["number", "reference", "shipments"]
            ):
                for shipment_id in sale.get("shipments") or []:
                    sales.setdefault(shipment_id, []).append(
                        {"number": sale.get("number"), "reference": sale.get("reference")}
                    )
        records: dict[int, dict[str, Any]] = {}
        for row in rows:
            linked = sales.get(int(row["id"]), [])
            records[int(row["id"])] = {
                "id": row["id"],
                "number": row.get("number"),
                "state": row.get("state"),
                "reference": row.get("reference") or next((s["reference"] for s in linked if s["reference"]), None),
                "planned_date": _plain(row.get("planned_date")),
                "effective_date": _plain(row.get("effective_date")),
                "customer": {"code": _dotted(row, "customer.code"), "name": _dotted(row, "customer.name")},
                "warehouse": _dotted(row, "warehouse.code"),
                "sales": linked,
                "lines": [
                    {"code": _dotted(m, "product.code"), "quantity": _plain(m.get("quantity")), "state": m.get("state")}
                    for m in _many(row, "outgoing_moves")
                ],
            }
        return records

    async def _invoices(self, domain: list[Any]) -> dict[int, dict[str, Any]]:
        fields = ["number", "state", "type", "invoice_date", "reference", "party.code", "party.name", "currency.code"]
        fields += ["untaxed_amount", "tax_amount", "total_amount", "amount_to_pay", "sales.number", "sales.reference"]
        rows = await self._search_read("account.invoice", domain, fields)
        records: dict[int, dict[str, Any]] = {}
        for row in rows:
            linked = [{"number": s.get("number"), "reference": s.get("reference")} for s in _many(row, "sales")]
            records[int(row["id"])] = {
                "id": row["id"],
                "number": row.get("number"),
                "state": row.get("state"),
                "type": row.get("type"),
                "invoice_date": _plain(row.get("invoice_date")),
                "reference": row.get("reference") or next((s["reference"] for s in linked if s["reference"]), None),
                "party": {"code": _dotted(row, "party.code"), "name": _dotted(row, "party.name")},
                "currency": _dotted(row, "currency.code"),
                "untaxed_amount": _plain(row.get("untaxed_amount")),
                "tax_amount": _plain(row.get("tax_amount")),
                "total_amount": _plain(row.get("total_amount")),
                "amount_to_pay": _plain(row.get("amount_to_pay")),
                "sales": linked,
            }
        return records

    # -- writing: parties ------------------------------------------------------------------------
    def _check_party(self, record: Any, what: str) -> None:
        if not isinstance(record, Mapping):
            raise TerminalError(f"{self.system}: {what} must be an object, not {type(record).__name__}")
        if not _text(record.get("name")):
            raise TerminalError(f"{self.system}: {what} has no name")
        if not _text(record.get("email")) and not _text(record.get("vat")):
            raise TerminalError(f"{self.system}: {what} has neither an email nor a vat to be matched by")
        address = record.get("address")
        if address is not None and not isinstance(address, Mapping):
            raise TerminalError(f"{self.system}: {what}'s address must be an object, not {type(address).__name__}")

    async def _find_party(self, record: Mapping[str, Any]) -> int | None:
        """The party with the record's VAT code, else with its email; the oldest when several match."""
        vat = _text(record.get("vat"))
        if vat:
            rows = await self._search_read(
                "party.identifier",
                [["OR", ["code", "=", vat], ["code_compact", "=", _compact(vat)]]],
                ["party"],
                order=[["party", "ASC"]],
                limit=1,
            )
            if rows and isinstance(rows[0].get("party"), int):
                return int(rows[0]["party"])
        email = _text(record.get("email"))
        if email:
            rows = await self._search_read(
                "party.contact_mechanism",
                [["type", "=", "email"], ["value", "ilike", _like_escape(email)]],
                ["party"],
                order=[["party", "ASC"]],
                limit=1,
            )
            if rows and isinstance(rows[0].get("party"), int):
                return int(rows[0]["party"])
        return None

    async def _address_values(self, address: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if _text(address.get("name")):
            values["party_name"] = _text(address.get("name"))  # the name on the label, when not the party's
        for name in ("street", "postal_code", "city"):
            if _text(address.get(name)):
                values[name] = _text(address.get(name))
        country = _text(address.get("country"))
        if country:
            values["country"] = await self._lookup_id("country.country", "code", country.upper(), "country")
        return values

    @staticmethod
    def _same_address(existing: Mapping[str, Any], wanted: Mapping[str, Any], country: str) -> bool:
        def norm(value: Any) -> str:
            return " ".join(_text(value).lower().split())

        return all(norm(existing.get(n)) == norm(wanted.get(n)) for n in ("street", "postal_code", "city")) and (
            not country or norm(existing.get("country")) == norm(country)
        )

    async def _upsert_party(self, record: Mapping[str, Any]) -> int:
        """Create the party, or complete the matching one with what it lacks; returns its id."""
        party_id = await self._find_party(record)
        name, email, vat, phone = (_text(record.get(n)) for n in ("name", "email", "vat", "phone"))
        address = record.get("address") if isinstance(record.get("address"), Mapping) else None
        if party_id is None:
            values: dict[str, Any] = {"name": name}
            mechanisms = [{"type": "email", "value": email}] if email else []
            mechanisms += [{"type": "phone", "value": phone}] if phone else []
            if mechanisms:
                values["contact_mechanisms"] = [["create", mechanisms]]
            if vat:
                values["identifiers"] = [["create", [{"type": self.options.vat_type, "code": vat}]]]
            if address is not None:
                values["addresses"] = [["create", [await self._address_values(address)]]]
            created = await self.rpc("model.party.party.create", [values])
            return int(created[0])
        rows = await self._search_read("party.party", [["id", "=", party_id]], _PARTY_FIELDS)
        current = self._party_record(rows[0]) if rows else {}
        changes: dict[str, Any] = {}
        if name and current.get("name") != name:
            changes["name"] = name
        new_mechanisms = []
        if email and email.lower() not in {e.lower() for e in current.get("emails", [])}:
            new_mechanisms.append({"type": "email", "value": email})
        if phone and phone not in current.get("phones", []):
            new_mechanisms.append({"type": "phone", "value": phone})
        if new_mechanisms:
            changes["contact_mechanisms"] = [["create", new_mechanisms]]
        codes = {_compact(_text(i.get("code"))) for i in current.get("identifiers", [])}
        if vat and _compact(vat) not in codes:
            changes["identifiers"] = [["create", [{"type": self.options.vat_type, "code": vat}]]]
        if address is not None and not any(
            self._same_address(a, address, _text(address.get("country"))) for a in current.get("addresses", [])
        ):
            changes["addresses"] = [["create", [await self._address_values(address)]]]
        if changes:  # an unchanged party keeps its write_date: reading it back does not echo our own write
            await self.rpc("model.party.party.write", [party_id], changes)
        return party_id

    async def _party_addresses(self, party_id: int) -> list[dict[str, Any]]:
        rows = await self._search_read(
            "party.address",
            [["party", "=", party_id]],
            ["street", "postal_code", "city", "country.code"],
            order=[["sequence", "ASC"], ["id", "ASC"]],
        )
        return [{**r, "country": _dotted(r, "country.code")} for r in rows]

    async def _address_for(self, party_id: int, wanted: Mapping[str, Any] | None) -> int | None:
        """The party's address matching ``wanted`` (added when missing), or its first address, or None."""
        addresses = await self._party_addresses(party_id)
        if wanted is None:
            return int(addresses[0]["id"]) if addresses else None
        country = _text(wanted.get("country"))
        for existing in addresses:
            if self._same_address(existing, wanted, country):
                return int(existing["id"])
        values = await self._address_values(wanted)
        await self.rpc("model.party.party.write", [party_id], {"addresses": [["create", [values]]]})
        for existing in await self._party_addresses(party_id):
            if self._same_address(existing, wanted, country):
                return int(existing["id"])
        raise TerminalError(f"{self.system}: the address added to party {party_id} cannot be found again")

    # -- writing: sales ----------------------------------------------------------------------------
    def _check_sale(self, record: Any) -> None:
        if not isinstance(record, Mapping):
            raise TerminalError(f"{self.system}: a sale must be an object, not {type(record).__name__}")
        if not _text(record.get("reference")):
            raise TerminalError(f"{self.system}: the sale has no reference (the shop's order number keeps it unique)")
        party = record.get("party")
        if isinstance(party, Mapping):
            self._check_party(party, "the sale's party")
        elif not _text(party):
            raise TerminalError(f"{self.system}: the sale has no party (a party object, or an existing party's code)")
        lines = record.get("lines")
        if not isinstance(lines, list) or not lines:
            raise TerminalError(f"{self.system}: the sale has no lines")
        for n, line in enumerate(lines, 1):
            if not isinstance(line, Mapping) or not _text(line.get("code")):
                raise TerminalError(f"{self.system}: sale line {n} has no product code (`code`)")
            if _decimal(line.get("quantity"), f"{self.system}: sale line {n}'s quantity") <= 0:
                raise TerminalError(f"{self.system}: sale line {n}'s quantity must be above zero")
            if line.get("unit_price") is not None:
                _decimal(line.get("unit_price"), f"{self.system}: sale line {n}'s unit_price")

    async def _write_sale(self, record: Mapping[str, Any]) -> str:
        """Create the quotation (or take up the one an earlier attempt left), then quote and confirm it.

        Tryton keeps no key of its own for a sale, so its ``reference`` (the shop's order number) is the
        key: a sale of that reference that is past quotation is the one, and nothing is written; an open
        one (draft or quotation: an earlier attempt stopped before confirm) is taken up; a cancelled one,
        alone, was cancelled in the ERP and is not made again. Only when there is none is a sale created.
        Each RPC call is its own transaction, so a sale created by an attempt that died right after is
        found by the next. An attempt abandoned while its create was still running (a timeout) may commit
        it after the next attempt looked: the rules below make the two converge on one sale, never two
        confirmed ones: the oldest open sale is the one taken up, and the other open ones are cancelled.
        """
        reference = _text(record.get("reference"))
        sales = await self._sales_by_reference(reference)
        settled, opened, cancelled = _sorted_sales(sales)
        if settled:
            await self._cancel_duplicates(reference, opened, settled[0])
            return _sale_receipt(settled[0])
        if cancelled and not opened:
            return _sale_receipt(cancelled[0])
        values = await self._sale_values(record)
        if opened:
            sale_id = await self._take_up(reference, opened, values)
        else:
            created = await self.rpc("model.sale.sale.create", [values])
            sale_id = int(created[0])
            settled, opened, _cancelled = _sorted_sales(await self._sales_by_reference(reference))
            kept = settled[0] if settled else opened[0] if opened else {"id": sale_id}
            if int(kept["id"]) != sale_id:  # an abandoned attempt's sale committed meanwhile: that one is kept
                await self._cancel_duplicates(reference, [s for s in opened if int(s["id"]) == sale_id], kept)
                if settled:
                    return _sale_receipt(settled[0])
                sale_id = await self._take_up(reference, [s for s in opened if int(s["id"]) != sale_id], values)
        for button in ("quote", "confirm"):
            try:
                await self.rpc(f"model.sale.sale.{button}", [sale_id])
            except TerminalError as exc:
                raise TerminalError(
                    f"{exc} [sale '{reference}' is left as Tryton sale {sale_id}, not confirmed; "
                    "writing the order again after a fix takes it up]"
                ) from exc
        rows = await self.rpc("model.sale.sale.read", [sale_id], ["number", "state"])
        row = rows[0] if rows else {}
        return f"sale {sale_id} {row.get('number') or '-'} {row.get('state')}"

    async def _sales_by_reference(self, reference: str) -> list[dict[str, Any]]:
        """The sales with this reference, oldest first (normally one; more only after a race, see above)."""
        return await self._search_read(
            "sale.sale", [["reference", "=", reference]], ["state", "number"], order=[["id", "ASC"]], limit=20
        )

    async def _take_up(self, reference: str, opened: list[dict[str, Any]], values: dict[str, Any]) -> int:
        """Replace the oldest open sale's header and lines with ``values`` (back to draft first); the other
        open ones are cancelled. Returns the sale's id."""
        sale = opened[0]
        sale_id = int(sale["id"])
        await self._cancel_duplicates(reference, opened[1:], sale)
        if sale.get("state") == "quotation":
            await self.rpc("model.sale.sale.draft", [sale_id])
        old_lines = await self.rpc("model.sale.sale.read", [sale_id], ["lines"])
        line_ids = old_lines[0].get("lines") if old_lines else []
        lines = values.pop("lines")
        values["lines"] = ([["delete", line_ids]] if line_ids else []) + lines
        await self.rpc("model.sale.sale.write", [sale_id], values)
        return sale_id

    async def _cancel_duplicates(
        self, reference: str, duplicates: list[dict[str, Any]], kept: Mapping[str, Any]
    ) -> None:
        """Cancel open sales that repeat ``kept`` (drafts or quotations of the same reference: nothing
        shipped or invoiced hangs on them), so that the ERP shows one sale per order."""
        ids = [int(s["id"]) for s in duplicates if s.get("state") in _OPEN_SALE_STATES and s["id"] != kept["id"]]
        if not ids:
            return
        self.log.warning(
            "%s: sale '%s' exists more than once (a create still running when the write was sent again); "
            "keeping sale %s, cancelling the open duplicate(s) %s",
            self.system,
            reference,
            kept["id"],
            ids,
        )
        await self.rpc("model.sale.sale.cancel", ids)

    async def _sale_values(self, record: Mapping[str, Any]) -> dict[str, Any]:
        company, company_currency, company_code = await self._company()
        party_value = record.get("party")
        if isinstance(party_value, Mapping):
            party_id = await self._upsert_party(party_value)
            party_address = party_value.get("address") if isinstance(party_value.get("address"), Mapping) else None
        else:
            party_id = await self._lookup_id("party.party", "code", _text(party_value), "party with code")
            party_address = None
        shipment = record.get("shipment_address")
        invoice = record.get("invoice_address")
        shipment_id = await self._address_for(party_id, shipment if isinstance(shipment, Mapping) else party_address)
        invoice_id = await self._address_for(party_id, invoice if isinstance(invoice, Mapping) else party_address)
        currency_code = _text(record.get("currency")).upper() or company_code
        currency = (
            company_currency
            if currency_code == company_code
            else await self._lookup_id("currency.currency", "code", currency_code, "currency")
        )
        values: dict[str, Any] = {
            "company": company,
            "party": party_id,
            "reference": _text(record.get("reference")),
            "currency": currency,
            "warehouse": await self._sale_warehouse(),
            "payment_term": await self._payment_term(party_id),
        }
        # Tryton's client fills these by on_change; over RPC nobody does, and quote refuses a sale without them
        if invoice_id is not None:
            values["invoice_address"] = invoice_id
        if shipment_id is not None:
            values["shipment_address"] = shipment_id
        for name in ("description", "comment"):
            if _text(record.get(name)):
                values[name] = _text(record.get(name))
        if record.get("sale_date"):
            try:
                values["sale_date"] = date.fromisoformat(_text(record.get("sale_date"))[:10])
            except ValueError:
                raise TerminalError(
                    f"{self.system}: the sale's sale_date '{record.get('sale_date')}' is not a date"
                ) from None
        values["lines"] = [["create", await self._sale_lines(record["lines"], party_id, currency)]]
        return values

    async def _sale_warehouse(self) -> int:
        warehouses = await self._warehouses()
        if len(warehouses) > 1:
            codes = ", ".join(code for _, code in warehouses)
            raise TerminalError(
                f"{self.system}: Tryton has several warehouses ({codes}); set `warehouse` on the system"
            )
        return warehouses[0][0]

    async def _payment_term(self, party_id: int) -> int | None:
        rows = await self.rpc("model.party.party.read", [party_id], ["customer_payment_term"])
        term = rows[0].get("customer_payment_term") if rows else None
        if isinstance(term, int):
            return term
        if self.options.payment_term:
            return await self._lookup_id(
                "account.invoice.payment_term", "name", self.options.payment_term, "payment term"
            )
        terms = await self._search_read("account.invoice.payment_term", [], ["id"], order=[["id", "ASC"]], limit=1)
        return int(terms[0]["id"]) if terms else None

    async def _sale_lines(self, lines: list[Any], party_id: int, currency: int) -> list[dict[str, Any]]:
        codes = sorted({_text(line["code"]) for line in lines})
        rows = await self._search_read("product.product", [["code", "in", codes]], ["code", "sale_uom", "default_uom"])
        products = {_text(r.get("code")): r for r in rows}
        missing = [code for code in codes if code not in products]
        if missing:
            raise TerminalError(
                f"{self.system}: no active product with code {', '.join(repr(c) for c in missing)} in Tryton"
            )
        values = []
        for line in lines:
            product = products[_text(line["code"])]
            quantity = _decimal(line["quantity"], "quantity")
            unit = product.get("sale_uom") or product.get("default_uom")
            if line.get("unit_price") is not None:
                price = _decimal(line["unit_price"], "unit_price")
            else:
                price = await self._sale_price(int(product["id"]), party_id, quantity, currency)
            entry: dict[str, Any] = {
                "type": "line",
                "product": product["id"],
                "quantity": float(quantity),
                "unit": unit,
                "unit_price": price,
            }
            if _text(line.get("description")):
                entry["description"] = _text(line.get("description"))
            values.append(entry)
        return values

    async def _sale_price(self, product_id: int, party_id: int | None, quantity: Decimal, currency: int) -> Decimal:
        """Tryton's sale price, as a sale line computes it (the party's price list applies when installed)."""
        context: dict[str, Any] = {"quantity": float(quantity), "currency": currency}
        if party_id is not None:
            context["customer"] = party_id
        rows = await self.rpc("model.product.product.read", [product_id], ["sale_price_uom"], context=context)
        price = rows[0].get("sale_price_uom") if rows else None
        if not isinstance(price, Decimal):
            raise TerminalError(f"{self.system}: Tryton has no sale price for product {product_id}")
        return price

    # -- writing: products ------------------------------------------------------------------------
    def _check_product(self, record: Any) -> None:
        if not isinstance(record, Mapping):
            raise TerminalError(f"{self.system}: a product must be an object, not {type(record).__name__}")
        if not _text(record.get("code")):
            raise TerminalError(f"{self.system}: the product has no code")
        if record.get("list_price") is not None:
            _decimal(record.get("list_price"), f"{self.system}: the product's list_price")

    async def _upsert_product(self, record: Mapping[str, Any]) -> int:
        code = _text(record.get("code"))
        rows = await self._search_read(
            "product.product",
            [["code", "=", code]],
            ["template", "name", "list_price_used", "active", "template.active", "salable"],
            context={"active_test": False},
            order=[["id", "ASC"]],
            limit=1,
        )
        wanted: dict[str, Any] = {}
        if _text(record.get("name")):
            wanted["name"] = _text(record.get("name"))
        if record.get("list_price") is not None:
            wanted["list_price"] = _decimal(record.get("list_price"), "list_price")
        if isinstance(record.get("salable"), bool):
            wanted["salable"] = record["salable"]
        if isinstance(record.get("active"), bool):
            wanted["active"] = record["active"]
        if rows:
            row = rows[0]
            current = {
                "name": row.get("name"),
                "list_price": row.get("list_price_used"),
                "salable": bool(row.get("salable")),
                "active": bool(_dotted(row, "template.active")),
            }
            changes = {k: v for k, v in wanted.items() if current.get(k) != v}
            if changes:
                await self.rpc(
                    "model.product.template.write", [int(row["template"])], changes, context={"active_test": False}
                )
            return int(row["id"])
        if "name" not in wanted:
            raise TerminalError(f"{self.system}: product '{code}' is new to Tryton and the record has no name")
        unit = await self._lookup_id("product.uom", "name", _text(record.get("unit")) or "Unit", "unit of measure")
        values: dict[str, Any] = {
            "code": code,
            "type": _text(record.get("type")) or "goods",
            "default_uom": unit,
            "sale_uom": unit,
            "salable": True,
            "list_price": Decimal("0"),
            **wanted,
            "products": [["create", [{}]]],
        }
        category = await self._product_category(_text(record.get("account_category")))
        if category is not None:
            values["account_category"] = category
        created = await self.rpc("model.product.template.create", [values])
        template_id = int(created[0])
        products = await self.rpc("model.product.template.read", [template_id], ["products"])
        return int(products[0]["products"][0])

    async def _product_category(self, name: str) -> int | None:
        wanted = name or self.options.product_category
        if wanted:
            return await self._lookup_id("product.category", "name", wanted, "product category")
        rows = await self._search_read("product.category", [["accounting", "=", True]], ["id"], limit=2)
        return int(rows[0]["id"]) if len(rows) == 1 else None

    # -- calls ------------------------------------------------------------------------------------
    def _codes(self, request: Mapping[str, Any], operation: str) -> list[str]:
        codes = request.get("codes")
        if isinstance(codes, list) and codes and all(_text(c) for c in codes):
            return [_text(c) for c in codes]
        if _text(request.get("code")):
            return [_text(request.get("code"))]
        raise TerminalError(f"{self.system}: '{operation}' needs `code` (a product code) or `codes` (a list)")

    async def _products_by_code(self, codes: Iterable[str]) -> dict[str, int]:
        wanted = sorted(set(codes))
        rows = await self._search_read("product.product", [["code", "in", wanted]], ["code"])
        found = {_text(r.get("code")): int(r["id"]) for r in rows}
        missing = [c for c in wanted if c not in found]
        if missing:
            raise TerminalError(f"{self.system}: no active product with code {', '.join(map(repr, missing))}")
        return found

    async def _call_price(self, request: Mapping[str, Any]) -> Any:
        """{code|codes, quantity?, party?: {vat|email} or code, currency?} -> {code, quantity, unit_price, currency}."""
        codes = self._codes(request, "price")
        quantity = _decimal(request.get("quantity", 1), "quantity")
        party_id: int | None = None
        party = request.get("party")
        if isinstance(party, Mapping):
            party_id = await self._find_party(party)
        elif _text(party):
            party_id = await self._lookup_id("party.party", "code", _text(party), "party with code")
        _, company_currency, company_code = await self._company()
        currency_code = _text(request.get("currency")).upper() or company_code
        currency = (
            company_currency
            if currency_code == company_code
            else await self._lookup_id("currency.currency", "code", currency_code, "currency")
        )
        products = await self._products_by_code(codes)
        prices = [
            {
                "code": code,
                "quantity": _plain(quantity),
                "unit_price": _plain(await self._sale_price(products[code], party_id, quantity, currency)),
                "currency": currency_code,
                "party_found": party_id is not None,
            }
            for code in codes
        ]
        return prices if isinstance(request.get("codes"), list) else prices[0]

    async def _call_stock(self, request: Mapping[str, Any]) -> Any:
        """{code|codes} -> [{code, warehouse, quantity, forecast_quantity}] (one per warehouse)."""
        codes = self._codes(request, "stock")
        products = await self._products_by_code(codes)
        by_id = await self._stock([["id", "in", sorted(products.values())]])
        return [row for code in codes for row in by_id.get(products[code], [])]

    async def _call_party(self, request: Mapping[str, Any]) -> Any:
        """{vat|email|code} -> the party as ``read: parties`` gives it, or None when there is none."""
        party_id: int | None = None
        if _text(request.get("code")):
            rows = await self._search_read("party.party", [["code", "=", _text(request.get("code"))]], ["id"], limit=1)
            party_id = int(rows[0]["id"]) if rows else None
        elif _text(request.get("vat")) or _text(request.get("email")):
            party_id = await self._find_party(request)
        else:
            raise TerminalError(f"{self.system}: 'party' needs `vat`, `email` or `code`")
        if party_id is None:
            return None
        rows = await self._search_read("party.party", [["id", "=", party_id]], _PARTY_FIELDS)
        return self._party_record(rows[0]) if rows else None

    # -- errors and secrets --------------------------------------------------------------------
    def _unknown(self, use: str, name: str, known: Iterable[str]) -> TerminalError:
        names = sorted(known)
        near = closest(name, names)
        hint = f" — did you mean '{near}'?" if near else ""
        return TerminalError(f"{self.system}: Tryton cannot {use} '{name}'{hint} (it can {use}: {', '.join(names)})")

    def _remember_secret(self, value: str) -> None:
        self.http.remember_secret(value)

    def _mask(self, text: str) -> str:
        return self.http.mask(text)

    async def _write_party(self, record: Mapping[str, Any]) -> str:
        return f"party {await self._upsert_party(record)}"

    async def _write_product(self, record: Mapping[str, Any]) -> str:
        return f"product {await self._upsert_product(record)}"

    # -- what flows may name: source.read, target.write, source.call (the kind derives its operations) ----
    READS: ClassVar[Mapping[str, _Entity]] = _ENTITIES
    WRITES: ClassVar[Mapping[str, Callable[[TrytonConnection, Mapping[str, Any]], Awaitable[str]]]] = {
        "parties": _write_party,
        "sales": _write_sale,
        "products": _write_product,
    }
    CALLS: ClassVar[Mapping[str, Callable[[TrytonConnection, Mapping[str, Any]], Awaitable[Any]]]] = {
        "price": _call_price,
        "stock": _call_stock,
        "party": _call_party,
    }
