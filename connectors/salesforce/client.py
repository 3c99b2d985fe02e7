"""The salesforce connector's connection: REST sObjects over one HTTP kit session, OAuth 2.0 client credentials.

Who calls what is documented on :class:`engine.connector.Connection`. How an org's answers are
translated, where they enter (no library exception ever leaves this module)::

    timeout, connection refused, reset or dropped          TransientError
    408, 425, 429, 5xx                                     TransientError  (Retry-After -> retry_after)
    REQUEST_LIMIT_EXCEEDED (403), UNABLE_TO_LOCK_ROW,      TransientError  (the org is busy or its API
    SERVER_UNAVAILABLE, QUERY_TIMEOUT, INVALID_QUERY_LOCATOR                allowance is used up for now)
    401 INVALID_SESSION_ID                                 a new token is fetched once and the request sent
                                                           again; a second 401 is a TerminalError
    300 (several records have the external id)             TerminalError   naming them
    other 4xx (REQUIRED_FIELD_MISSING, INVALID_FIELD, …)   TerminalError   quoting errorCode, message, fields
    token request: 400 invalid_client / invalid_grant      TerminalError   (check client_id and client_secret)

Every write is safe to send again, so the kind declares no ``once_only`` write: an upsert by external
id (``PATCH``) updates what an earlier attempt created, ``update`` only updates, and ``delete`` of
what is gone answers "already absent". ``mode: create`` is a ``POST`` that carries the external id:
sent again, it is refused with ``DUPLICATE_VALUE`` when the field is marked Unique in the org (then
dead-lettered, though it took effect), else it makes a second record. The contract names once-only
writes by entity, not by mode, so this cannot be declared; use upsert, the default, unless the org must
refuse an existing record.
``exists`` (for a target's create-only fields) asks the org by external id.

The connector never retries on its own (the runtime owns retries, backoff and the breaker); the one
exception is the single token refresh on a 401. The access token and the client secret never appear
in errors or logs: they are masked, and registered with :attr:`ConnectContext.mask`.

Salesforce gives no token lifetime, so the token is kept until the org answers 401. API calls go to
the options' ``url``; the token answer's ``instance_url`` must be that same server (a mismatch is a
TerminalError saying which url to set), so credentials only ever go to the declared host.

With ``composite`` set, concurrent upserts of one entity are sent together as one
``PATCH /composite/sobjects/<Object>/<field>`` (allOrNone false) and each write gets its own record's
result. An external id with a ``/`` is always upserted that way: Salesforce cannot take it in a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Final
from urllib.parse import quote

from connectors.salesforce import SOBJECTS, SalesforceOptions
from engine.connector import (
    Checker,
    ConnectContext,
    ExistenceChecker,
    Source,
    Target,
    closest,
    parse_duration,
)
from engine.errors import SeamlineError, TerminalError, TransientError
from engine.kit.http.auth import oauth2_client_credentials
from engine.kit.http.errors import server_message, status_error, transient_status
from engine.kit.http.session import NO_BODY, Response, Session, Transport
from engine.kit.http.urls import origin

__all__ = ["SalesforceConnection", "SalesforceError", "salesforce_errors", "soql_datetime", "soql_literal"]


MASK: Final = "***"
TRANSIENT_CODES: Final = frozenset(
    {"REQUEST_LIMIT_EXCEEDED", "UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT", "INVALID_QUERY_LOCATOR"}
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)?$")
_SOQL_ESCAPES: Final = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}

# Standard fields a read selects when the options name none (contracts-magento-erp.md §C.6). Fields that
# exist only in some orgs (CurrencyIsoCode with multi-currency, *CountryCode with State and Country
# picklists) are left out: selecting a field the org lacks fails the whole query.
DEFAULT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "accounts": (
        "Id",
        "Name",
        "AccountNumber",
        "Type",
        "Industry",
        "ParentId",
        "BillingStreet",
        "BillingCity",
        "BillingState",
        "BillingPostalCode",
        "BillingCountry",
        "ShippingStreet",
        "ShippingCity",
        "ShippingState",
        "ShippingPostalCode",
        "ShippingCountry",
        "Phone",
        "Website",
        "OwnerId",
        "CreatedDate",
        "LastModifiedDate",
        "SystemModstamp",
    ),
    "contacts": (
        "Id",
        "AccountId",
        "FirstName",
        "LastName",
        "Email",
        "Phone",
        "MobilePhone",
        "Title",
        "Department",
        "MailingStreet",
        "MailingCity",
        "MailingState",
        "MailingPostalCode",
        "MailingCountry",
        "HasOptedOutOfEmail",
        "OwnerId",
        "CreatedDate",
        "LastModifiedDate",
        "SystemModstamp",
    ),
}


# -- small pure helpers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SalesforceError:
    """One entry of Salesforce's error list: ``{"message", "errorCode" (or "statusCode"), "fields"}``."""

    code: str
    message: str
    fields: tuple[str, ...] = ()

    def render(self) -> str:
        text = f"{self.code}: {self.message}" if self.code else self.message
        return text + (f" (fields: {', '.join(self.fields)})" if self.fields else "")


def salesforce_errors(body: Any) -> list[SalesforceError]:
    """The errors in an answer: the REST list shape, a collection result's ``errors``, or OAuth's ``error``."""
    entries: list[Any]
    if isinstance(body, list):
        entries = body
    elif isinstance(body, dict) and isinstance(body.get("errors"), list):
        entries = body["errors"]
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        description = body.get("error_description")
        return [SalesforceError(body["error"], description if isinstance(description, str) else "")]
    else:
        return []
    found: list[SalesforceError] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        code = entry.get("errorCode", entry.get("statusCode", ""))
        message = entry.get("message", "")
        fields = entry.get("fields")
        found.append(
            SalesforceError(
                str(code or ""),
                str(message or ""),
                tuple(str(f) for f in fields) if isinstance(fields, list) else (),
            )
        )
    return found


def soql_literal(value: Any) -> str:
    """A value as a SOQL literal: strings quoted and escaped, datetimes and dates bare, null, booleans."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    return "'" + "".join(_SOQL_ESCAPES.get(c, c) for c in text) + "'"


def soql_datetime(text: str) -> str:
    """A cursor value as a SOQL datetime literal in UTC, whole seconds (rounded down, so >= misses nothing).

    Takes what cursors hold: ``2024-01-31T10:00:00.000+0000`` (as Salesforce returns it), any ISO 8601
    time with or without a zone (UTC assumed), or a date (its midnight, UTC). ValueError otherwise.
    """
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is not a date or time a SOQL cursor can start from") from None
    return soql_literal(moment)


def _clone(error: SeamlineError) -> SeamlineError:
    """A fresh exception of the same kind: one batch failure goes to several waiting writes."""
    if isinstance(error, TransientError):
        return TransientError(str(error), retry_after=error.retry_after, status=error.status)
    if isinstance(error, TerminalError):
        return TerminalError(str(error), status=error.status)
    return TerminalError(str(error))


def _plain(record: Any) -> Any:
    """A query record without Salesforce's ``attributes`` (also inside related records)."""
    if isinstance(record, dict):
        return {k: _plain(v) for k, v in record.items() if k != "attributes"}
    return record


# -- the connection ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    value: str
    body: dict[str, Any]
    future: asyncio.Future[str]


@dataclass(slots=True)
class _Batch:
    items: list[_Pending] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SalesforceConnection(Source, Target, Checker, ExistenceChecker):
    """An open connection to one Salesforce org: a pooled client, its session token, its sObjects."""

    # What flows may name, once: source.read (entity -> the fields a read selects by default) and
    # target.write (entity -> its sObject). The connector kind derives its operations from these.
    READS: ClassVar[Mapping[str, tuple[str, ...]]] = DEFAULT_FIELDS
    WRITES: ClassVar[Mapping[str, str]] = SOBJECTS

    def __init__(
        self,
        options: SalesforceOptions,
        context: ConnectContext,
        *,
        transport: Transport | None = None,
    ) -> None:
        self.options = options
        self.context = context
        self.system = context.system
        self.api = f"/services/data/{options.api_version}"
        self.version = float(options.api_version[1:])
        self.http = Session.for_system("salesforce", options, context, transport=transport, describe=self._describe)
        self.log, self.timeout = self.http.logger, self.http.timeout
        auth = options.auth
        self.http.use(
            oauth2_client_credentials(
                self.http,
                token_url=auth.token_url,
                client_id=auth.client_id,
                client_secret=auth.client_secret,
                scope=auth.scope,
                what="token request",
                refused_hint="check client_id and client_secret, and that the connected app enables the client "
                "credentials flow with a run-as user",
                accepted=self._check_instance,
                credential="token",
                hint="check the connected app's client credentials flow user, its profile and its OAuth scopes",
            )
        )
        self._batches: dict[str, _Batch] = {}  # entity -> the batch still taking writes
        self._in_flight: dict[tuple[str, str], _Batch] = {}  # (entity, external id) -> its batch
        self._flushes: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        """Cancel batches not sent yet (their writes get a TransientError) and close the pool."""
        for task in list(self._flushes):
            task.cancel()
        for task in list(self._flushes):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.aclose()

    async def __aenter__(self) -> SalesforceConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- the Connection contract --------------------------------------------------------------
    def check(self, entity: str, record: Any) -> None:
        """Before a write: the entity is one Salesforce takes and the record is a JSON object."""
        self._sobject(entity, "write")
        if not isinstance(record, dict):
            raise TerminalError(
                f"{self.system}: a {entity} record must be a JSON object of Salesforce fields, "
                f"not {type(record).__name__}"
            )

    async def write(self, entity: str, record: Any, *, key: Any, mode: str, idempotency_key: str) -> str:
        """Upsert (or create, update, delete) one record by its external id; returns ``"<Object> <Id>"``.

        The upsert is idempotent by itself: the same external id updates the record it created.
        """
        sobject = self._sobject(entity, "write")
        self.check(entity, record)
        field_name = self.options.external_id_for(entity)
        value, body = self._split(entity, record, key, field_name)
        what = f"{mode} {sobject} {field_name}={value}"
        if mode == "upsert" and ("/" in value or self.options.composite is not None):
            if self.options.composite is None:
                return await self._upsert_collection(entity, sobject, field_name, [(value, body)], what)
            return await self._batched(entity, value, body)
        url = f"{self.api}/sobjects/{sobject}/{field_name}/{quote(value, safe='')}"
        if mode in ("upsert", "update"):
            params = None
            if mode == "update":
                if self.version < 61.0:
                    raise TerminalError(
                        f"{self.system}: mode update needs api_version v61.0 or later (updateOnly); "
                        f"this system uses {self.options.api_version}"
                    )
                params = [("updateOnly", "true")]
            response = await self._call("PATCH", url, params=params, body=body, what=what)
            return self._receipt(sobject, response, what)
        if mode == "create":
            created = {field_name: value, **body}
            response = await self._call("POST", f"{self.api}/sobjects/{sobject}", body=created, what=what)
            return self._receipt(sobject, response, what)
        if mode == "delete":
            response = await self._call("DELETE", url, what=what, missing_ok=True)
            gone = "deleted" if response.status < 300 else "already absent"
            return f"{sobject} {field_name}={value} {gone}"
        raise TerminalError(f"{self.system}: unknown write mode '{mode}'; use upsert, create, update or delete")

    async def exists(self, entity: str, record: Any, *, key: Any) -> bool | None:
        """Whether the org has the record already, by its external id (the ExistenceChecker role).

        Called by a worker before writing to a target with ``create_only`` or ``update_only`` fields.
        ``GET /sobjects/<Object>/<field>/<value>?fields=Id`` (Salesforce REST API Developer Guide, "sObject
        Rows by External ID"): 200, it exists; 404 ``NOT_FOUND``, it does not; 300 (several records have
        the value) is the TerminalError the write would raise too. An external id with a ``/`` cannot go in
        a URL: it is looked up with ``SELECT Id FROM <Object> WHERE <field> = '<value>' LIMIT 1`` instead.
        """
        sobject = self._sobject(entity, "write")
        self.check(entity, record)
        field_name = self.options.external_id_for(entity)
        value, _body = self._split(entity, record, key, field_name)
        what = f"find {sobject} {field_name}={value}"
        if "/" in value:
            soql = f"SELECT Id FROM {sobject} WHERE {field_name} = {soql_literal(value)} LIMIT 1"
            body = self._json(await self._call("GET", f"{self.api}/query", params=[("q", soql)], what=what), what)
            records = body.get("records") if isinstance(body, dict) else None
            return isinstance(records, list) and len(records) > 0
        url = f"{self.api}/sobjects/{sobject}/{field_name}/{quote(value, safe='')}"
        response = await self._call("GET", url, params=[("fields", "Id")], what=what, missing_ok=True)
        return response.status != 404

    async def read(
        self,
        entity: str,
        *,
        since: str | None = None,
        cursor_field: str | None = None,
        page_size: int = 2000,
        filter: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[list[Any]]:
        """Pages of ``entity`` changed at or after ``since``, through SOQL and ``nextRecordsUrl``.

        Records come without ``attributes``; empty pages are not yielded.
        """
        sobject = self._sobject(entity, "read")
        soql = self._soql(entity, sobject, since, cursor_field, filter)
        batch = max(200, min(2000, page_size))  # the org's bounds for batchSize
        headers = {"Sforce-Query-Options": f"batchSize={batch}"}
        target = f"{self.api}/query"
        params: list[tuple[str, str]] | None = [("q", soql)]
        followed: set[str] = set()
        what = f"query {sobject}"
        while True:
            response = await self._call("GET", target, params=params, headers=headers, what=what)
            body = self._json(response, what)
            records = body.get("records") if isinstance(body, dict) else None
            if not isinstance(records, list):
                raise TerminalError(f"{self.system}: {what}: the answer has no records list")
            if records:
                yield [_plain(r) for r in records]
            link = body.get("nextRecordsUrl")
            if body.get("done", True) is True or not isinstance(link, str) or not link:
                return
            if link in followed or not link.startswith("/services/data/"):
                raise TerminalError(f"{self.system}: {what}: the org sent an unusable next page link {link!r}")
            followed.add(link)
            target, params = link, None

    # -- records --------------------------------------------------------------------------------
    def _sobject(self, entity: str, use: str) -> str:
        known = sorted(self.WRITES if use == "write" else self.READS)
        if entity not in known:
            near = closest(entity, known)
            hint = f" — did you mean '{near}'?" if near else ""
            raise TerminalError(f"{self.system}: salesforce cannot {use} '{entity}'{hint} (it can: {', '.join(known)})")
        return self.WRITES[entity]

    def _split(self, entity: str, record: dict[str, Any], key: Any, field_name: str) -> tuple[str, dict[str, Any]]:
        """The external id value and the body without it (the URL carries it; Salesforce refuses it twice)."""
        if isinstance(key, list | tuple):
            if len(key) != 1:
                raise TerminalError(
                    f"{self.system}: {entity} upsert on one external id field ({field_name}); "
                    f"target.key names {len(key)} fields"
                )
            key = key[0]
        in_record = next((v for k, v in record.items() if k.lower() == field_name.lower()), None)
        value = in_record if key in (None, "") else key
        if value in (None, "") or isinstance(value, bool | dict | list):
            raise TerminalError(
                f"{self.system}: writing {entity}: no usable external id value ({value!r}); set target.key to the "
                f"field that holds it, or give the record a '{field_name}'"
            )
        text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        if in_record not in (None, "") and str(in_record) != text:
            raise TerminalError(
                f"{self.system}: writing {entity}: the key says {field_name}={text} but the record has "
                f"{field_name}={in_record}; make them agree"
            )
        body = {k: v for k, v in record.items() if k.lower() != field_name.lower() and k != "attributes"}
        return text, body

    def _receipt(self, sobject: str, response: Response, what: str) -> str:
        body = self._json(response, what, allow_empty=True)
        record_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(record_id, str) or not record_id:
            raise TerminalError(f"{self.system}: {what}: the org answered {response.status} without an id")
        created = body.get("created") if isinstance(body, dict) else None
        self.log.debug("%s: %s -> %s %s", self.system, what, "created" if created else "written", record_id)
        return f"{sobject} {record_id}"

    def _soql(
        self, entity: str, sobject: str, since: str | None, cursor_field: str | None, filter: Mapping[str, Any] | None
    ) -> str:
        cursor = cursor_field or "SystemModstamp"
        names = [cursor, *(filter or {})]
        for name in names:
            if name != "where" and not _NAME.match(name):
                raise TerminalError(f"{self.system}: reading {entity}: '{name}' is not a Salesforce field name")
        selected = self._select(entity, cursor)
        clauses: list[str] = []
        if since:
            try:
                clauses.append(f"{cursor} >= {soql_datetime(since)}")
            except ValueError as exc:
                raise TerminalError(f"{self.system}: reading {entity}: {exc}") from None
        for name, value in (filter or {}).items():
            if name == "where":
                clauses.append(f"({value})")
            elif isinstance(value, list | tuple):
                clauses.append(f"{name} IN ({', '.join(soql_literal(v) for v in value)})")
            else:
                clauses.append(f"{name} = {soql_literal(value)}")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return f"SELECT {', '.join(selected)} FROM {sobject}{where} ORDER BY {cursor} ASC, Id ASC"

    def _select(self, entity: str, cursor: str) -> list[str]:
        configured = next((names for name, names in self.options.fields.items() if name == entity), None)
        names: list[str] = list(configured) if configured else list(DEFAULT_FIELDS[entity])
        if not configured:
            names.append(self.options.external_id_for(entity))
            if entity == "contacts":
                names.append(f"Account.{self.options.external_id_for('accounts')}")
        selected: list[str] = []
        for name in ["Id", *names, cursor]:
            if name.lower() not in {s.lower() for s in selected}:
                selected.append(name)
        return selected

    # -- sObject collections (composite) -------------------------------------------------------
    async def _batched(self, entity: str, value: str, body: dict[str, Any]) -> str:
        """Join (or open) this entity's batch; writes of one external id never share or overtake a batch."""
        composite = self.options.composite
        assert composite is not None
        slot = (entity, value.lower())
        while slot in self._in_flight:
            await self._in_flight[slot].done.wait()
        batch = self._batches.get(entity)
        if batch is None:
            batch = self._batches[entity] = _Batch()
            task = asyncio.get_running_loop().create_task(self._flush_later(entity, batch, composite.linger))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        pending = _Pending(value, body, asyncio.get_running_loop().create_future())
        batch.items.append(pending)
        self._in_flight[slot] = batch
        if len(batch.items) >= composite.max_records:
            self._batches.pop(entity, None)
            batch.full.set()
        return await pending.future

    async def _flush_later(self, entity: str, batch: _Batch, linger: str) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.full.wait(), parse_duration(linger))
            if self._batches.get(entity) is batch:
                del self._batches[entity]
            waiting = [p for p in batch.items if not p.future.done()]
            if waiting:
                sobject = self.WRITES[entity]
                field_name = self.options.external_id_for(entity)
                what = f"upsert {len(waiting)} {sobject} by {field_name} (composite)"
                await self._upsert_collection(
                    entity, sobject, field_name, [(p.value, p.body) for p in waiting], what, waiting
                )
        except SeamlineError as exc:
            for pending in batch.items:
                if not pending.future.done():
                    pending.future.set_exception(_clone(exc))
        except Exception as exc:  # a bug must not leave writes waiting forever
            failure = TerminalError(f"{self.system}: the batch failed unexpectedly: {exc!r}")
            for pending in batch.items:
                if not pending.future.done():
                    pending.future.set_exception(_clone(failure))
        except asyncio.CancelledError:
            closed = TransientError(f"{self.system}: the connection closed before this write's batch was sent")
            for pending in batch.items:
                if not pending.future.done():
                    pending.future.set_exception(_clone(closed))
            raise
        finally:
            if self._batches.get(entity) is batch:
                del self._batches[entity]
            for pending in batch.items:
                if self._in_flight.get((entity, pending.value.lower())) is batch:
                    del self._in_flight[(entity, pending.value.lower())]
            batch.done.set()

    async def _upsert_collection(
        self,
        entity: str,
        sobject: str,
        field_name: str,
        items: list[tuple[str, dict[str, Any]]],
        what: str,
        waiting: list[_Pending] | None = None,
    ) -> str:
        """One sObject Collections upsert; results go to ``waiting`` (a batch) or, for one record, are returned."""
        records = [{"attributes": {"type": sobject}, field_name: value, **body} for value, body in items]
        url = f"{self.api}/composite/sobjects/{sobject}/{field_name}"
        response = await self._call("PATCH", url, body={"allOrNone": False, "records": records}, what=what)
        results = self._json(response, what)
        if not isinstance(results, list) or len(results) != len(items):
            count = len(results) if isinstance(results, list) else "no list of"
            raise TerminalError(f"{self.system}: {what}: the org answered {count} results for {len(items)} records")
        outcomes: list[str | SeamlineError] = []
        for (value, _body), result in zip(items, results, strict=True):
            outcomes.append(self._collection_outcome(sobject, field_name, value, result))
        if waiting is None:
            outcome = outcomes[0]
            if isinstance(outcome, SeamlineError):
                raise outcome
            return outcome
        for pending, outcome in zip(waiting, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, SeamlineError):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        return ""

    def _collection_outcome(self, sobject: str, field_name: str, value: str, result: Any) -> str | SeamlineError:
        what = f"upsert {sobject} {field_name}={value}"
        if isinstance(result, dict) and result.get("success") is True and isinstance(result.get("id"), str):
            return f"{sobject} {result['id']}"
        errors = salesforce_errors(result)
        text = self._mask(f"{self.system}: {what} -> " + ("; ".join(e.render() for e in errors) or "refused"))
        if {e.code for e in errors} & TRANSIENT_CODES:
            return TransientError(text)
        return TerminalError(text, status=400)

    # -- requests -------------------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        target: str,
        *,
        what: str,
        params: list[tuple[str, str]] | None = None,
        body: Any = NO_BODY,
        headers: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> Response:
        """Send one API request with the session token; a 401 fetches a new token once (the kit's session).
        Returns a 2xx answer (or a 404 when ``missing_ok``); anything else is raised as the module doc says."""
        response = await self.http.send(method, target, params=params, json=body, headers=headers, what=what)
        if missing_ok and response.status == 404 and not self._names_no_external_id(response):
            return response
        self._raise_for_status(response, what)
        return response

    def _raise_for_status(self, response: Response, what: str) -> None:
        status = response.status
        if 200 <= status < 300:
            return
        text = self._mask(f"{self.system}: {what} -> {status}: {self._describe(response)}")
        codes = {e.code for e in salesforce_errors(self._body(response))}
        if "REQUEST_LIMIT_EXCEEDED" in codes:
            usage = response.header("Sforce-Limit-Info")
            text += f" (the org's API allowance is used up for now{f'; {usage}' if usage else ''})"
        if status == 404 and self._names_no_external_id(response):
            text += (
                " (set external_id_field, or external_id_fields for this entity, to a field marked External ID "
                "on this object)"
            )
        if status == 300:
            raise TerminalError(
                f"{text} — several records have this external id; make the field unique in the org", status=status
            )
        raise status_error(
            text, status, response.header, transient=transient_status(status) or bool(codes & TRANSIENT_CODES)
        )

    def _names_no_external_id(self, response: Response) -> bool:
        """A 404 that says the external id field is wrong, not that the record is missing."""
        return any("external ID field" in e.message for e in salesforce_errors(self._body(response)))

    # -- the session token ------------------------------------------------------------------------
    def _check_instance(self, answer: dict[str, Any]) -> None:
        """The token answer's instance_url must be this system's url: credentials only go where the spec says."""
        instance = answer.get("instance_url")
        if not isinstance(instance, str) or not instance:
            return
        given = origin(instance)
        if not given[1]:
            raise TerminalError(f"{self.system}: the token answer's instance_url {instance!r} is not a URL")
        if given != origin(self.http.base_url):
            raise TerminalError(
                f"{self.system}: the org lives at {instance} (the token answer's instance_url), "
                f"but this system's url is {self.options.url}; set url to {instance}"
            )

    # -- bodies, secrets ------------------------------------------------------------------------
    def _body(self, response: Response) -> Any:
        try:
            return json.loads(response.content) if response.content.strip() else None
        except ValueError:
            return None

    def _json(self, response: Response, what: str, *, allow_empty: bool = False) -> Any:
        if not response.content.strip():
            if allow_empty:
                return None
            raise TerminalError(f"{self.system}: {what}: empty answer ({response.status})")
        return self.http.json(response, what)

    def _describe(self, response: Response) -> str:
        """The org's own words: each error's code, message and fields; else the start of the answer."""
        body = self._body(response)
        errors = salesforce_errors(body)
        if errors:
            return self._mask("; ".join(e.render() for e in errors))
        if response.status == 300 and isinstance(body, list):
            return "matches " + ", ".join(str(u) for u in body[:5])
        return self._mask(server_message(body, response.text) or response.reason)

    def _mask(self, text: str) -> str:
        return self.http.mask(text)
