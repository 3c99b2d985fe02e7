"""A fake Salesforce org over its REST API: a real HTTP server for tests, crash tests and demos.

::

    with FakeSalesforce(port=0, clients={"seamline": "s3cret"}) as org:    # .url is http://127.0.0.1:<port>
        org.seed("Account", [{"Name": "Acme", "Seamline_Id__c": "A-1"}])
        org.fail_next(2, status=503, only="/services/data/")
        org.expire_tokens()                                              # next call: 401 INVALID_SESSION_ID
        ...                                                              # point a salesforce connector at org.url
        org.writes(); org.applied_count("Account")                       # the write log; writes that changed data

    seamline fake salesforce --port 8083 --client-id seamline --client-secret s3cret \
        --field Account.ERP_Customer_Number__c:string:external

The shapes follow ../shared/reference/contracts-magento-erp.md §C.6 and Salesforce's REST API guide
(sObject rows, sObject rows by external id, query, composite, sObject collections). What it serves:

* ``POST /services/oauth2/token`` — OAuth 2.0 client credentials (form fields, or HTTP Basic for the
  client): ``{access_token, instance_url, id, token_type, issued_at, signature, scope}``; no
  ``expires_in`` (a session lasts until the org says it is over: ``token_ttl`` or :meth:`expire_tokens`).
  Bad credentials: 400 ``{"error": "invalid_client", "error_description": "invalid client credentials"}``.
* Under ``/services/data/vNN.N`` (a bearer token, else 401 ``INVALID_SESSION_ID``):

  - ``PATCH /sobjects/{Object}/{ExternalIdField}/{value}`` upsert: 201 ``{id, success, errors, created: true}``;
    an update is 200 ``{…, created: false}`` (v46.0 and later) or 204 (earlier); several matches 300;
    ``?updateOnly=true`` answers 404 instead of creating. The body must not carry ``Id`` or the
    external id field (the URL says it).
  - ``POST /sobjects/{Object}`` create (201), ``GET|PATCH|DELETE /sobjects/{Object}/{id}`` (PATCH and
    DELETE answer 204), ``GET|DELETE /sobjects/{Object}/{field}/{value}``, ``GET /sobjects/{Object}/describe``.
  - ``GET /query?q=<SOQL>`` and ``GET /query/<locator>``: ``{totalSize, done, nextRecordsUrl?, records}``,
    each record with ``attributes {type, url}``; the batch size comes from ``Sforce-Query-Options:
    batchSize=N`` (200..2000, default 2000) capped by ``max_batch_size``.
  - ``POST /composite/sobjects`` (create) and ``PATCH /composite/sobjects/{Object}/{ExternalIdField}``
    (upsert): up to 200 records, 200 with one ``{id, success, errors[, created]}`` per record (errors
    as ``{statusCode, message, fields}``); ``allOrNone`` rolls all back when one fails, the others
    saying ``ALL_OR_NONE_OPERATION_ROLLED_BACK``.
  - ``POST /composite``: up to 25 subrequests with ``@{ref.path}`` references; ``allOrNone`` rolls back
    and answers the others ``PROCESSING_HALTED``.

Errors are Salesforce's: a JSON list of ``{"message", "errorCode", "fields"}``. Each sObject declares a
small field list (name, type, length, required, read-only, restricted picklist values, reference
target and relationship name, external id) derived from §C.6, plus ``Seamline_Id__c`` as a unique,
case-insensitive external id on every object (``extra_fields`` adds more). Writes are checked the way
the org does: an unknown field is ``INVALID_FIELD`` ("No such column …"), a read-only one
``INVALID_FIELD_FOR_INSERT_UPDATE``, a missing required one ``REQUIRED_FIELD_MISSING`` (with
``fields``), a long string ``STRING_TOO_LONG``, a bad picklist value
``INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST``, a bad id ``MALFORMED_ID``, an id of nothing
``INVALID_CROSS_REFERENCE_KEY``, a value of the wrong JSON type ``JSON_PARSER_ERROR``. A reference may
name its record by external id through the relationship (``"Account": {"Seamline_Id__c": "A-1"}``
sets ``AccountId``); an unknown one is ``INVALID_FIELD`` "Foreign key external ID: … not found …".

SOQL: ``SELECT f, Rel.f FROM Object [WHERE …] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], …]
[LIMIT n] [OFFSET n]`` with ``= != <> < <= > >= LIKE IN NOT IN``, ``AND OR NOT`` and parentheses;
literals typed as SOQL types them (a datetime is unquoted; a quoted one is ``INVALID_FIELD``).

Limits and faults, applied in this order: ``drop_next`` closes the socket unanswered, ``latency``
waits, ``fail_next`` answers N requests (optionally only those whose path starts with ``only``) with a
status and a Salesforce error body (``REQUEST_LIMIT_EXCEEDED`` for 403, ``SERVER_UNAVAILABLE`` for
503, ``UNKNOWN_EXCEPTION`` for 500, or ``error_code``), ``error_rate`` answers that share of requests
with ``error_status`` (seeded). Every API answer carries ``Sforce-Limit-Info: api-usage=n/N``; past
``api_limit`` calls the org answers 403 ``REQUEST_LIMIT_EXCEEDED``.

The write log (:meth:`FakeSalesforce.writes`) has one entry per record a write touched or refused;
:meth:`FakeSalesforce.applied_count` counts the writes that changed stored data (an upsert that sets
the values already there changes nothing). :meth:`FakeSalesforce.requests` lists every request.
``/__fake/`` is an admin API for other processes (never faulted, never authenticated): ``GET log``,
``GET requests``, ``GET records?object=``, ``POST reset``, ``POST faults``, ``POST expire-tokens``,
``POST seed {object, records}``, ``GET health``. The state lives in memory: :meth:`FakeSalesforce.stop`
then :meth:`FakeSalesforce.start` serve it again on the same port.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import hashlib
import hmac
import json
import random
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from engine.fakeserver import ServedFake, TrackingHTTPServer, listen, serve_until_signalled

__all__ = ["FakeSalesforce", "SObjectField", "main"]

_API = re.compile(r"^/services/data/v(?P<version>\d{2,3}\.\d)(?P<rest>/.*)?$")
_ID = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_NOT_FOUND = "The requested resource does not exist"
_ORG_ID = "00D5g000004ORGxEAG"
_USER_ID = "0055g00000FAKEuAAA"
_SYSTEM_FIELDS = frozenset(
    {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "CreatedById", "LastModifiedById"}
)
_TEXT_TYPES = frozenset({"string", "textarea", "email", "phone", "url", "picklist"})
_NUMBER_TYPES = frozenset({"int", "double", "currency", "percent"})
COLLECTION_LIMIT = 200
COMPOSITE_LIMIT = 25


# -- the declared sObjects ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SObjectField:
    """One field of a fake sObject, as describe would tell it.

    ``type``: id, string, textarea, email, phone, url, picklist, reference, date, datetime, boolean,
    int, double, currency, percent, autonumber. ``references`` names the sObject a reference points
    at (None: only the id's shape is checked) and ``relationship`` the name a write may use to give
    that record by external id (``Account`` for ``AccountId``). ``values`` makes a picklist restricted.
    """

    name: str
    type: str = "string"
    length: int | None = None
    required: bool = False
    read_only: bool = False
    references: str | None = None
    relationship: str | None = None
    values: tuple[str, ...] = ()
    external_id: bool = False
    label: str = ""

    @property
    def title(self) -> str:
        """How Salesforce names the field in messages: its label."""
        if self.label:
            return self.label
        base = self.name[:-2] if self.type == "reference" and self.name.endswith("Id") else self.name
        return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", base) + (" ID" if base != self.name else "")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.title,
            "type": self.type,
            "length": self.length or 0,
            "nillable": not self.required,
            "createable": not self.read_only,
            "updateable": not self.read_only,
            "externalId": self.external_id,
            "referenceTo": [self.references] if self.references else [],
            "relationshipName": self.relationship,
            "restrictedPicklist": bool(self.values),
            "picklistValues": [{"value": v, "label": v, "active": True} for v in self.values],
        }


def _address(prefix: str) -> list[SObjectField]:
    return [
        SObjectField(f"{prefix}Street", "textarea", 255),
        SObjectField(f"{prefix}City", "string", 40),
        SObjectField(f"{prefix}State", "string", 80),
        SObjectField(f"{prefix}PostalCode", "string", 20),
        SObjectField(f"{prefix}Country", "string", 80),
        SObjectField(f"{prefix}CountryCode", "string", 10),  # State and Country picklists on
    ]


def _system() -> list[SObjectField]:
    return [
        SObjectField("Id", "id", 18, read_only=True),
        SObjectField("OwnerId", "reference", 18, relationship="Owner"),
        SObjectField("CreatedDate", "datetime", read_only=True),
        SObjectField("CreatedById", "reference", 18, read_only=True),
        SObjectField("LastModifiedDate", "datetime", read_only=True),
        SObjectField("LastModifiedById", "reference", 18, read_only=True),
        SObjectField("SystemModstamp", "datetime", read_only=True),
        SObjectField("IsDeleted", "boolean", read_only=True),
        SObjectField("Seamline_Id__c", "string", 255, external_id=True, label="Seamline Id"),
    ]


STAGES = (
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
)

# Field lists derived from contracts-magento-erp.md §C.6 (Salesforce field and object reference).
OBJECTS: dict[str, list[SObjectField]] = {
    "Account": [
        *_system(),
        SObjectField("Name", "string", 255, required=True, label="Account Name"),
        SObjectField("AccountNumber", "string", 40),
        SObjectField("Type", "picklist", 255),
        SObjectField("Industry", "picklist", 255),
        SObjectField("ParentId", "reference", 18, references="Account", relationship="Parent"),
        *_address("Billing"),
        *_address("Shipping"),
        SObjectField("Phone", "phone", 40),
        SObjectField("Website", "url", 255),
        SObjectField("AnnualRevenue", "currency"),
        SObjectField("NumberOfEmployees", "int"),
        SObjectField("CurrencyIsoCode", "picklist", 3),
        SObjectField("Description", "textarea", 32000),
    ],
    "Contact": [
        *_system(),
        SObjectField("AccountId", "reference", 18, references="Account", relationship="Account"),
        SObjectField("Name", "string", 121, read_only=True, label="Full Name"),
        SObjectField("FirstName", "string", 40),
        SObjectField("LastName", "string", 80, required=True),
        SObjectField("Email", "email", 80),
        SObjectField("Phone", "phone", 40),
        SObjectField("MobilePhone", "phone", 40),
        SObjectField("Title", "string", 128),
        SObjectField("Department", "string", 80),
        *_address("Mailing"),
        SObjectField("HasOptedOutOfEmail", "boolean"),
        SObjectField("CurrencyIsoCode", "picklist", 3),
        SObjectField("Description", "textarea", 32000),
    ],
    "Opportunity": [
        *_system(),
        SObjectField("AccountId", "reference", 18, references="Account", relationship="Account"),
        SObjectField("Name", "string", 120, required=True),
        SObjectField("StageName", "picklist", 255, required=True, values=STAGES, label="Stage"),
        SObjectField("CloseDate", "date", required=True, label="Close Date"),
        SObjectField("Amount", "currency"),
        SObjectField("Probability", "percent"),
        SObjectField("Type", "picklist", 255),
        SObjectField("LeadSource", "picklist", 255),
        SObjectField("ForecastCategoryName", "picklist", 255),
        SObjectField("IsClosed", "boolean", read_only=True),
        SObjectField("IsWon", "boolean", read_only=True),
        SObjectField("Pricebook2Id", "reference", 18, relationship="Pricebook2"),
        SObjectField("NextStep", "string", 255),
        SObjectField("CurrencyIsoCode", "picklist", 3),
        SObjectField("Description", "textarea", 32000),
    ],
    "Order": [
        *_system(),
        SObjectField("AccountId", "reference", 18, required=True, references="Account", relationship="Account"),
        SObjectField("EffectiveDate", "date", required=True, label="Order Start Date"),
        SObjectField("Status", "picklist", 40, required=True, values=("Draft", "Activated")),
        SObjectField("StatusCode", "picklist", 40, read_only=True),
        SObjectField("OrderNumber", "autonumber", 30, read_only=True),
        SObjectField("Pricebook2Id", "reference", 18, relationship="Pricebook2"),
        SObjectField("ContractId", "reference", 18, relationship="Contract"),
        SObjectField("PoNumber", "string", 80),
        SObjectField("PoDate", "date"),
        SObjectField("Type", "picklist", 255),
        SObjectField("TotalAmount", "currency", read_only=True),
        *_address("Billing"),
        *_address("Shipping"),
        SObjectField("BillToContactId", "reference", 18, references="Contact", relationship="BillToContact"),
        SObjectField("ShipToContactId", "reference", 18, references="Contact", relationship="ShipToContact"),
        SObjectField("ActivatedDate", "datetime", read_only=True),
        SObjectField("CurrencyIsoCode", "picklist", 3),
        SObjectField("Description", "textarea", 32000),
    ],
}
PREFIXES = {"Account": "001", "Contact": "003", "Opportunity": "006", "Order": "801"}


@dataclass(slots=True)
class _SObject:
    name: str
    prefix: str
    fields: dict[str, SObjectField]
    by_lower: dict[str, str]
    relationships: dict[str, SObjectField]

    @classmethod
    def build(cls, name: str, prefix: str, fields: Iterable[SObjectField]) -> _SObject:
        declared = {f.name: f for f in fields}
        return cls(
            name=name,
            prefix=prefix,
            fields=declared,
            by_lower={n.lower(): n for n in declared},
            relationships={f.relationship.lower(): f for f in declared.values() if f.relationship},
        )

    def field(self, name: str) -> SObjectField | None:
        canonical = self.by_lower.get(name.lower())
        return self.fields[canonical] if canonical is not None else None


# -- errors and small helpers ------------------------------------------------------------------------


def _err(code: str, message: str, fields: Iterable[str] = ()) -> dict[str, Any]:
    return {"message": message, "errorCode": code, "fields": list(fields)}


class _Fail(Exception):
    """Raised inside a handler to answer at once with Salesforce's error list."""

    def __init__(self, status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors
        self.headers = headers or {}


def _fail(status: int, code: str, message: str, fields: Iterable[str] = ()) -> _Fail:
    return _Fail(status, [_err(code, message, fields)])


@dataclass(slots=True)
class _Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _id18(id15: str) -> str:
    """The case-safe 18-character form of a 15-character id (Salesforce's checksum suffix)."""
    suffix = ""
    for chunk in range(3):
        bits = 0
        for position in range(5):
            if "A" <= id15[chunk * 5 + position] <= "Z":
                bits |= 1 << position
        suffix += _SUFFIX[bits]
    return id15 + suffix


def _make_id(prefix: str, number: int) -> str:
    digits = ""
    for _ in range(7):
        number, rest = divmod(number, 62)
        digits = _B62[rest] + digits
    return _id18(f"{prefix}5g000{digits}")


def _normal_id(value: str) -> str:
    return _id18(value) if len(value) == 15 else value


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _parse_datetime(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _token_name(value: Any) -> str:
    """The JSON token a Jackson error names for a value of the wrong kind."""
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, dict):
        return "START_OBJECT"
    if isinstance(value, list):
        return "START_ARRAY"
    if isinstance(value, int):
        return "VALUE_NUMBER_INT"
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT"
    return "VALUE_STRING"


def _parser_error(kind: str, value: Any) -> dict[str, Any]:
    shown = value if isinstance(value, str | int | float) and not isinstance(value, bool) else _token_name(value)
    return _err(
        "JSON_PARSER_ERROR",
        f"Cannot deserialize instance of {kind} from {_token_name(value)} value {shown} "
        "or request may be missing a required field",
    )


# -- SOQL ------------------------------------------------------------------------------------------

_SOQL_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:?\d{2}))
      | (?P<date>\d{4}-\d{2}-\d{2})
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}

Predicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class _Literal:
    kind: str  # string, datetime, date, number, boolean, null
    value: Any


@dataclass(slots=True)
class _Query:
    sobject: str
    fields: list[str]
    where: Predicate | None
    order: list[tuple[str, bool, bool]]  # (field, descending, nulls_last)
    limit: int | None
    offset: int


class _Soql:
    """A small recursive-descent parser for the SOQL subset the module docstring lists."""

    def __init__(self, text: str, resolve: Callable[[str, str], tuple[SObjectField, str] | None]) -> None:
        self.text = text
        self.resolve = resolve
        self.tokens: list[tuple[str, str]] = []
        position = 0
        stripped = text.rstrip()
        while position < len(stripped):
            match = _SOQL_TOKEN.match(stripped, position)
            if match is None or match.end() == position:
                raise self._malformed(f"unexpected token: '{stripped[position:].split()[0]}'")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.at = 0
        self.sobject = ""

    def _malformed(self, message: str) -> _Fail:
        return _Fail(400, [{"message": message, "errorCode": "MALFORMED_QUERY"}])

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _keyword(self, *words: str) -> bool:
        """Consume ``words`` (keywords, any case) when they come next."""
        ahead = self.tokens[self.at : self.at + len(words)]
        if len(ahead) == len(words) and all(
            k == "word" and t.upper() == w for (k, t), w in zip(ahead, words, strict=True)
        ):
            self.at += len(words)
            return True
        return False

    def _expect_keyword(self, word: str) -> None:
        if not self._keyword(word):
            found = self._peek()
            raise self._malformed(f"unexpected token: '{found[1] if found else '<EOF>'}', expected {word}")

    def _take(self, kind: str) -> str:
        token = self._peek()
        if token is None or token[0] != kind:
            raise self._malformed(f"unexpected token: '{token[1] if token else '<EOF>'}'")
        self.at += 1
        return token[1]

    def _punct(self, char: str) -> bool:
        token = self._peek()
        if token == ("punct", char):
            self.at += 1
            return True
        return False

    def parse(self) -> _Query:
        self._expect_keyword("SELECT")
        names = [self._take("word")]
        while self._punct(","):
            names.append(self._take("word"))
        self._expect_keyword("FROM")
        self.sobject = self._take("word")
        for name in names:
            self._field(name)
        where = self._expression() if self._keyword("WHERE") else None
        order: list[tuple[str, bool, bool]] = []
        if self._keyword("ORDER", "BY"):
            while True:
                name = self._take("word")
                self._field(name)
                descending = self._keyword("DESC")
                if not descending:
                    self._keyword("ASC")
                nulls_last = descending
                if self._keyword("NULLS", "FIRST"):
                    nulls_last = False
                elif self._keyword("NULLS", "LAST"):
                    nulls_last = True
                order.append((name, descending, nulls_last))
                if not self._punct(","):
                    break
        limit = int(self._take("number")) if self._keyword("LIMIT") else None
        offset = int(self._take("number")) if self._keyword("OFFSET") else 0
        if self._peek() is not None:
            raise self._malformed(f"unexpected token: '{self.tokens[self.at][1]}'")
        return _Query(self.sobject, names, where, order, limit, offset)

    def _field(self, name: str) -> SObjectField:
        found = self.resolve(self.sobject, name)
        if found is None:
            raise _Fail(
                400,
                [
                    {
                        "message": f"No such column '{name}' on entity '{self.sobject}'. If you are attempting to use "
                        "a custom field, be sure to append the '__c' after the custom field name.",
                        "errorCode": "INVALID_FIELD",
                    }
                ],
            )
        return found[0]

    def _expression(self) -> Predicate:
        terms = [self._conjunction()]
        while self._keyword("OR"):
            terms.append(self._conjunction())
        if len(terms) == 1:
            return terms[0]
        return lambda record: any(term(record) for term in terms)

    def _conjunction(self) -> Predicate:
        factors = [self._factor()]
        while self._keyword("AND"):
            factors.append(self._factor())
        if len(factors) == 1:
            return factors[0]
        return lambda record: all(factor(record) for factor in factors)

    def _factor(self) -> Predicate:
        if self._keyword("NOT"):
            inner = self._factor()
            return lambda record: not inner(record)
        if self._punct("("):
            inner = self._expression()
            if not self._punct(")"):
                raise self._malformed("unexpected token: missing ')'")
            return inner
        return self._comparison()

    def _comparison(self) -> Predicate:
        name = self._take("word")
        spec = self._field(name)
        getter = self._getter(name)
        negate = self._keyword("NOT", "IN")
        if negate or self._keyword("IN"):
            if not self._punct("("):
                raise self._malformed("unexpected token: expected '(' after IN")
            values = [self._literal(spec)]
            while self._punct(","):
                values.append(self._literal(spec))
            if not self._punct(")"):
                raise self._malformed("unexpected token: missing ')'")

            def inside(record: dict[str, Any]) -> bool:
                actual = getter(record)
                if actual is None:
                    return negate
                return any(_soql_compare(actual, v, spec) == 0 for v in values) != negate

            return inside
        if self._keyword("LIKE"):
            literal = self._literal(spec)
            pattern = re.compile(
                "^"
                + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in str(literal.value))
                + "$",
                re.IGNORECASE | re.DOTALL,
            )
            return lambda record: getter(record) is not None and pattern.match(str(getter(record))) is not None
        op = self._take("op")
        literal = self._literal(spec)
        checks: dict[str, Callable[[int], bool]] = {
            "=": lambda c: c == 0,
            "!=": lambda c: c != 0,
            "<>": lambda c: c != 0,
            "<": lambda c: c < 0,
            "<=": lambda c: c <= 0,
            ">": lambda c: c > 0,
            ">=": lambda c: c >= 0,
        }
        check = checks[op]
        if literal.kind == "null":
            if op not in ("=", "!=", "<>"):
                raise self._malformed(f"unexpected token: 'null' after {op}")
            wanted_null = op == "="
            return lambda record: (getter(record) is None) == wanted_null

        def compare(record: dict[str, Any]) -> bool:
            result = _soql_compare(getter(record), literal, spec)
            if result is None:
                return op in ("!=", "<>")
            return check(result)

        return compare

    def _getter(self, name: str) -> Callable[[dict[str, Any]], Any]:
        found = self.resolve(self.sobject, name)
        assert found is not None
        path = found[1]
        return lambda record: record.get(path)

    def _literal(self, spec: SObjectField) -> _Literal:
        token = self._peek()
        if token is None:
            raise self._malformed("unexpected token: '<EOF>'")
        kind, text = token
        self.at += 1
        if kind == "word" and text.lower() in ("true", "false"):
            literal = _Literal("boolean", text.lower() == "true")
        elif kind == "word" and text.lower() == "null":
            return _Literal("null", None)
        elif kind == "string":
            body = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])
            literal = _Literal("string", body)
        elif kind == "datetime":
            literal = _Literal("datetime", _parse_datetime(text))
        elif kind == "date":
            literal = _Literal("date", date.fromisoformat(text))
        elif kind == "number":
            literal = _Literal("number", float(text))
        else:
            raise self._malformed(f"unexpected token: '{text}'")
        expected = {"datetime": "datetime", "date": "date", "boolean": "boolean"}.get(spec.type)
        if expected is None:
            expected = "number" if spec.type in _NUMBER_TYPES else "string"
        if literal.kind != expected:
            soql_type = {"datetime": "dateTime", "number": "double"}.get(expected, expected)
            quoted = "should be enclosed in quotes" if expected == "string" else "should not be enclosed in quotes"
            raise _Fail(
                400,
                [
                    {
                        "message": f"value of filter criterion for field '{spec.name}' must be of type {soql_type} "
                        f"and {quoted}",
                        "errorCode": "INVALID_FIELD",
                    }
                ],
            )
        return literal


def _soql_compare(actual: Any, literal: _Literal, spec: SObjectField) -> int | None:
    """-1/0/1 comparing a stored value with a literal the way SOQL does (text without case); None: no value."""
    if actual is None:
        return None
    left: Any
    right: Any = literal.value
    if literal.kind == "datetime":
        left = _parse_datetime(str(actual))
    elif literal.kind == "date":
        left = date.fromisoformat(str(actual)[:10])
    elif literal.kind == "number":
        left = float(actual)
    elif literal.kind == "boolean":
        left = bool(actual)
    else:
        left, right = str(actual).lower(), str(right).lower()
    if left is None:
        return None
    return int(left > right) - int(left < right)


# -- the HTTP server ---------------------------------------------------------------------------------


class _Server(TrackingHTTPServer):
    fake: FakeSalesforce

    def __init__(self, address: tuple[str, int], fake: FakeSalesforce) -> None:
        super().__init__(address, _RequestHandler, fake)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout, a closed pool) is part of the tests, not a fault of the fake.
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "seamline-fake-salesforce/0.1"
    timeout = 30
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the logs they need
        return

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        response = self.server.fake.handle(self.command, self.path, dict(self.headers.items()), raw)
        if response is None:  # drop the connection without answering
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = b"" if response.body is None else json.dumps(response.body, separators=(",", ":")).encode()
        self.send_response(response.status)
        headers = (
            {"Content-Type": "application/json;charset=UTF-8", **response.headers} if payload else response.headers
        )
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


@dataclass(slots=True)
class _Faults:
    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    fail_next: int = 0
    fail_status: int = 503
    fail_code: str | None = None
    fail_message: str | None = None
    fail_retry_after: str | None = None
    fail_only: str = ""
    drop_next: int = 0
    max_batch_size: int = 2000
    api_limit: int = 15000

    def as_json(self) -> dict[str, Any]:
        return {
            "latency": self.latency,
            "error_rate": self.error_rate,
            "error_status": self.error_status,
            "fail_next": {
                "count": self.fail_next,
                "status": self.fail_status,
                "error_code": self.fail_code,
                "message": self.fail_message,
                "retry_after": self.fail_retry_after,
                "only": self.fail_only,
            },
            "drop_next": self.drop_next,
            "max_batch_size": self.max_batch_size,
            "api_limit": self.api_limit,
        }


@dataclass(slots=True)
class _Request:
    method: str
    version: float
    version_text: str
    segments: list[str]
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    base_url: str


class FakeSalesforce(ServedFake):
    """See the module docstring. ``port=0`` picks a free port; :attr:`url` says which.

    ``clients`` maps connected-app client ids to their secrets; ``token_ttl`` (seconds) ends sessions
    on their own (None: only :meth:`expire_tokens` does); ``extra_fields`` adds fields to an sObject
    (``{"Account": [SObjectField("ERP_Number__c", external_id=True)]}``); ``clock`` gives the time
    written into CreatedDate / LastModifiedDate / SystemModstamp (each stamp is at least 1 ms after
    the previous one, as the org's are distinct per change).
    """

    thread_name = "fake-salesforce"

    def _make_server(self) -> TrackingHTTPServer:
        return _Server((self.host, self.port), self)

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        clients: Mapping[str, str] | None = None,
        token_ttl: float | None = None,
        extra_fields: Mapping[str, Iterable[SObjectField]] | None = None,
        clock: Callable[[], datetime] | None = None,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.clients = dict(clients if clients is not None else {"seamline": "seamline-secret"})
        self.token_ttl = token_ttl
        self.clock = clock or (lambda: datetime.now(UTC))
        self._seed = seed
        extra = {name: list(fields) for name, fields in (extra_fields or {}).items()}
        unknown = set(extra) - set(OBJECTS)
        if unknown:
            raise ValueError(f"extra_fields names unknown sObjects {sorted(unknown)}; known: {sorted(OBJECTS)}")
        self.objects = {
            name: _SObject.build(name, PREFIXES[name], [*fields, *extra.get(name, [])])
            for name, fields in OBJECTS.items()
        }
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._clear()

    @property
    def token_url(self) -> str:
        return f"{self.url}/services/oauth2/token"

    # -- state ----------------------------------------------------------------------------------
    def _clear(self) -> None:
        self._records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.objects}
        self._tokens: dict[str, float] = {}
        self._locators: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self._log: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._next_number = 1
        self._order_number = 100
        self._api_usage = 0
        self._last_stamp: datetime | None = None
        self._faults = _Faults()
        self._random = random.Random(self._seed)

    def reset(self) -> None:
        """Forget every record, token, query locator, log entry and fault."""
        with self._lock:
            self._clear()

    def issue_token(self) -> str:
        """A fresh access token, as the token endpoint would give."""
        with self._lock:
            token = f"{_ORG_ID[:15]}!{secrets.token_urlsafe(40)}"
            self._tokens[token] = float("inf") if self.token_ttl is None else time.monotonic() + self.token_ttl
            return token

    def issued_tokens(self) -> list[str]:
        """The access tokens still valid (for tests that check a token never leaks)."""
        with self._lock:
            now = time.monotonic()
            return [token for token, expires in self._tokens.items() if expires > now]

    def expire_tokens(self) -> None:
        """End every session: the next API call with any issued token answers 401 INVALID_SESSION_ID."""
        with self._lock:
            self._tokens.clear()

    def expire_query_locators(self) -> None:
        """Forget open query cursors: following a nextRecordsUrl answers 400 INVALID_QUERY_LOCATOR."""
        with self._lock:
            self._locators.clear()

    def reset_api_usage(self) -> None:
        with self._lock:
            self._api_usage = 0

    @property
    def api_usage(self) -> int:
        return self._api_usage

    def seed(self, sobject: str, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Store records as if written (not logged, not validated); returns their ids.

        System fields given (``SystemModstamp``, ``CreatedDate``) are kept, so a test can lay out a
        cursor; missing ones are filled in.
        """
        with self._lock:
            spec = self._object(sobject)
            ids: list[str] = []
            for given in records:
                record = {_canonical(spec, k): v for k, v in copy.deepcopy(dict(given)).items()}
                stamp = _stamp(self._now())
                record_id = _normal_id(str(record.get("Id") or self._new_id(spec)))
                stored = {
                    "Id": record_id,
                    "OwnerId": _USER_ID,
                    "CreatedDate": stamp,
                    "CreatedById": _USER_ID,
                    "LastModifiedDate": stamp,
                    "LastModifiedById": _USER_ID,
                    "SystemModstamp": stamp,
                    "IsDeleted": False,
                    **record,
                }
                stored["Id"] = record_id
                self._derive(spec, stored, created=True)
                self._records[spec.name][record_id] = stored
                ids.append(record_id)
            return ids

    def records(self, sobject: str) -> list[dict[str, Any]]:
        """The stored records of one sObject, oldest first (copies)."""
        with self._lock:
            return copy.deepcopy(list(self._records[self._object(sobject).name].values()))

    def find(self, sobject: str, field_name: str, value: Any) -> dict[str, Any] | None:
        """The record whose ``field_name`` equals ``value`` (external ids without case), or None."""
        with self._lock:
            spec = self._object(sobject)
            matches = self._matches(spec, field_name, value)
            return copy.deepcopy(matches[0]) if matches else None

    def writes(self, sobject: str = "") -> list[dict[str, Any]]:
        """The write log, oldest first: one entry per record a write touched or refused.

        Keys: seq, method, path, object, id, external_id, status, created, applied (it changed stored
        data), errors, body, via (``rest``, ``composite/sobjects`` or ``composite``).
        """
        with self._lock:
            return copy.deepcopy([e for e in self._log if not sobject or e["object"] == sobject])

    def applied_count(self, sobject: str = "") -> int:
        """Writes that changed stored data (a rewrite of the same values, or a refused write, does not count)."""
        with self._lock:
            return sum(1 for e in self._log if e["applied"] and (not sobject or e["object"] == sobject))

    def requests(self) -> list[dict[str, Any]]:
        """Every request, oldest first: method, path, status, and whether it carried a token."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def token_requests(self) -> int:
        with self._lock:
            return sum(1 for r in self._requests if r["path"] == "/services/oauth2/token")

    # -- faults ---------------------------------------------------------------------------------
    def configure(self, **knobs: Any) -> None:
        """Set knobs: latency (s), error_rate (0..1), error_status, drop_next (count), max_batch_size,
        api_limit, fail_next ({count, status, error_code, message, retry_after, only} or a count)."""
        with self._lock:
            faults = self._faults
            for name, value in knobs.items():
                if name == "fail_next":
                    spec = value if isinstance(value, dict) else {"count": value}
                    faults.fail_next = int(spec.get("count", 1))
                    faults.fail_status = int(spec.get("status", 503))
                    faults.fail_code = spec.get("error_code")
                    faults.fail_message = spec.get("message")
                    after = spec.get("retry_after")
                    faults.fail_retry_after = None if after is None else str(after)
                    faults.fail_only = str(spec.get("only") or "")
                elif name in ("latency", "error_rate"):
                    setattr(faults, name, float(value))
                elif name in ("error_status", "drop_next", "max_batch_size", "api_limit"):
                    setattr(faults, name, int(value))
                else:
                    raise ValueError(
                        f"unknown knob {name!r}; known: api_limit, drop_next, error_rate, error_status, fail_next, "
                        "latency, max_batch_size"
                    )

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return self._faults.as_json()

    def fail_next(
        self,
        count: int = 1,
        status: int = 503,
        *,
        error_code: str | None = None,
        message: str | None = None,
        retry_after: str | None = None,
        only: str = "",
    ) -> None:
        """Answer the next ``count`` requests (whose path starts with ``only``) with ``status``."""
        self.configure(
            fail_next={
                "count": count,
                "status": status,
                "error_code": error_code,
                "message": message,
                "retry_after": retry_after,
                "only": only,
            }
        )

    def drop_next(self, count: int = 1) -> None:
        self.configure(drop_next=count)

    def _fault_errors(self, status: int, code: str | None, message: str | None) -> list[dict[str, Any]]:
        defaults = {
            400: ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Injected validation failure"),
            401: ("INVALID_SESSION_ID", "Session expired or invalid"),
            403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
            404: ("NOT_FOUND", _NOT_FOUND),
            500: (
                "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please include this ErrorId if you contact support: "
                f"{self._random.randint(10**8, 10**9)}-{self._random.randint(10**4, 10**5)} "
                f"({self._random.randint(-(10**9), 10**9)})",
            ),
            503: ("SERVER_UNAVAILABLE", "Server temporarily unavailable; try again later"),
        }
        default_code, default_message = defaults.get(status, ("UNKNOWN_EXCEPTION", f"Injected error {status}"))
        return [_err(code or default_code, message or default_message)]

    # -- the request path -----------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: Mapping[str, str], raw: bytes) -> _Response | None:
        """Answer one request; None means: drop the connection without answering."""
        lowered = {k.lower(): v for k, v in headers.items()}
        parts = urlsplit(target)
        if parts.path.startswith("/__fake/"):
            with self._lock:
                return self._admin(method, parts.path, dict(parse_qsl(parts.query)), raw)
        with self._lock:
            faults = self._faults
            if faults.drop_next > 0:
                faults.drop_next -= 1
                return None
            latency = faults.latency
        if latency > 0:
            time.sleep(latency)
        with self._lock:
            response = self._faulted(parts.path)
            if response is None:
                try:
                    response = self._dispatch(method, parts.path, parts.query, lowered, raw)
                except _Fail as failure:
                    response = _Response(failure.status, failure.errors, failure.headers)
            if parts.path.startswith("/services/data/") and response.status != 401:
                limit = f"api-usage={self._api_usage}/{faults.api_limit}"
                response.headers = {**response.headers, "Sforce-Limit-Info": limit}
            self._requests.append(
                {
                    "method": method,
                    "path": parts.path,
                    "status": response.status,
                    "bearer": lowered.get("authorization", "").lower().startswith(("bearer ", "oauth ")),
                }
            )
            return response

    def _faulted(self, path: str) -> _Response | None:
        faults = self._faults
        if faults.fail_next > 0 and path.startswith(faults.fail_only):
            faults.fail_next -= 1
            headers = {"Retry-After": faults.fail_retry_after} if faults.fail_retry_after is not None else {}
            return _Response(
                faults.fail_status,
                self._fault_errors(faults.fail_status, faults.fail_code, faults.fail_message),
                headers,
            )
        if faults.error_rate > 0 and self._random.random() < faults.error_rate:
            return _Response(faults.error_status, self._fault_errors(faults.error_status, None, None))
        return None

    def _dispatch(self, method: str, path: str, query: str, headers: dict[str, str], raw: bytes) -> _Response:
        base_url = f"http://{headers.get('host') or f'{self.host}:{self.port}'}"
        if path.rstrip("/") == "/services/oauth2/token":
            if method != "POST":
                raise _fail(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are POST")
            return self._token(raw, headers, base_url)
        match = _API.match(path)
        if match is None:
            raise _fail(404, "NOT_FOUND", _NOT_FOUND)
        version = float(match.group("version"))
        if version < 20.0:
            raise _fail(404, "NOT_FOUND", _NOT_FOUND)
        self._authenticate(headers.get("authorization", ""))
        self._api_usage += 1
        if self._api_usage > self._faults.api_limit:
            raise _fail(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        body: Any = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise _Fail(400, [_err("JSON_PARSER_ERROR", f"Unexpected character: {exc}")]) from exc
        request = _Request(
            method=method,
            version=version,
            version_text=f"v{match.group('version')}",
            segments=[unquote(s) for s in (match.group("rest") or "").strip("/").split("/") if s],
            query=dict(parse_qsl(query, keep_blank_values=True)),
            headers=headers,
            body=body,
            base_url=base_url,
        )
        return self._route(request, via="rest")

    def _route(self, request: _Request, *, via: str) -> _Response:
        segments = request.segments
        method = request.method
        if not segments:
            if method == "GET":
                v = request.version_text
                return _Response(
                    200,
                    {
                        n: f"/services/data/{v}/{n}"
                        for n in ("sobjects", "query", "composite", "limits", "queryAll", "search")
                    },
                )
            raise _fail(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,HEAD")
        head, rest = segments[0], segments[1:]
        if head == "sobjects" and rest:
            return self._sobjects(request, rest, via)
        if head == "query" and method == "GET":
            return self._query(request, rest)
        if head == "composite" and via == "rest":
            if rest[:1] == ["sobjects"]:
                return self._collection(request, rest[1:])
            if not rest and method == "POST":
                return self._composite(request)
        raise _fail(404, "NOT_FOUND", _NOT_FOUND)

    # -- auth -----------------------------------------------------------------------------------
    def _token(self, raw: bytes, headers: dict[str, str], base_url: str) -> _Response:
        form = dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and credentials:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                client_id, _, client_secret = base64.b64decode(credentials).decode().partition(":")
                form.setdefault("client_id", unquote(client_id))
                form.setdefault("client_secret", unquote(client_secret))
        if form.get("grant_type") != "client_credentials":
            return _Response(400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"})
        client_id = form.get("client_id", "")
        if client_id not in self.clients:
            return _Response(400, {"error": "invalid_client_id", "error_description": "client identifier invalid"})
        if not hmac.compare_digest(form.get("client_secret", ""), self.clients[client_id]):
            return _Response(400, {"error": "invalid_client", "error_description": "invalid client credentials"})
        token = self.issue_token()
        issued = str(int(time.time() * 1000))
        identity = f"{base_url}/id/{_ORG_ID}/{_USER_ID}"
        digest = hmac.new(self.clients[client_id].encode(), (identity + issued).encode(), hashlib.sha256).digest()
        return _Response(
            200,
            {
                "access_token": token,
                "signature": base64.b64encode(digest).decode(),
                "scope": "api",
                "instance_url": base_url,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued,
            },
        )

    def _authenticate(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        expires = self._tokens.get(token.strip()) if scheme.lower() in ("bearer", "oauth") else None
        if expires is None or time.monotonic() >= expires:
            if expires is not None:
                del self._tokens[token.strip()]
            raise _fail(401, "INVALID_SESSION_ID", "Session expired or invalid")

    # -- sObject rows ---------------------------------------------------------------------------
    def _object(self, name: str) -> _SObject:
        for spec in self.objects.values():
            if spec.name.lower() == name.lower():
                return spec
        raise _fail(404, "NOT_FOUND", _NOT_FOUND)

    def _sobjects(self, request: _Request, rest: list[str], via: str) -> _Response:
        spec = self._object(rest[0])
        method = request.method
        if len(rest) == 1:
            if method == "POST":
                return self._create(request, spec, via)
            if method == "GET":
                return _Response(200, {"objectDescribe": {"name": spec.name, "keyPrefix": spec.prefix}})
            raise _fail(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are HEAD,GET,POST")
        if len(rest) == 2 and rest[1] == "describe" and method == "GET":
            return _Response(
                200,
                {"name": spec.name, "keyPrefix": spec.prefix, "fields": [f.describe() for f in spec.fields.values()]},
            )
        if len(rest) == 2:
            record = self._records[spec.name].get(_normal_id(rest[1])) if _ID.match(rest[1]) else None
            if record is None:
                raise _fail(404, "NOT_FOUND", _NOT_FOUND)
            return self._row(request, spec, record, via)
        if len(rest) == 3:
            field_spec = spec.field(rest[1])
            if method == "POST" and rest[1] == "Id":
                return self._create(request, spec, via)
            if field_spec is None or not (field_spec.external_id or field_spec.name == "Id"):
                raise _fail(
                    404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {rest[1]}"
                )
            if method == "PATCH" and field_spec.external_id:
                return self._upsert(request, spec, field_spec, rest[2], via)
            # GET (or DELETE) of sObject Rows by External ID, as Salesforce's REST API Developer Guide gives
            # them: the record (with `attributes`; `?fields=` picks its fields), 404 NOT_FOUND when none has
            # the value, 300 with the matching records' URLs when several do.
            matches = self._matches(spec, field_spec.name, rest[2])
            if len(matches) > 1:
                return self._multiple(request, spec, matches)
            if not matches:
                raise _fail(404, "NOT_FOUND", _NOT_FOUND)
            return self._row(request, spec, matches[0], via)
        raise _fail(404, "NOT_FOUND", _NOT_FOUND)

    def _row(self, request: _Request, spec: _SObject, record: dict[str, Any], via: str) -> _Response:
        method = request.method
        path = f"/services/data/{request.version_text}/sobjects/{spec.name}/{record['Id']}"
        if method == "GET":
            wanted = [n for n in request.query.get("fields", "").split(",") if n.strip()]
            return _Response(200, self._view(spec, record, request.version_text, wanted or None))
        if method == "PATCH":
            body = self._body_object(request.body)
            status, _result = self._write(spec, record, body, method, path, via, external=None)
            return _Response(status)
        if method == "DELETE":
            del self._records[spec.name][record["Id"]]
            self._append_log(method, path, spec.name, record["Id"], None, 204, created=False, applied=True, via=via)
            return _Response(204)
        raise _fail(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are HEAD,GET,PATCH,DELETE")

    def _multiple(self, request: _Request, spec: _SObject, matches: list[dict[str, Any]]) -> _Response:
        urls = [f"/services/data/{request.version_text}/sobjects/{spec.name}/{m['Id']}" for m in matches]
        return _Response(300, urls)

    def _create(self, request: _Request, spec: _SObject, via: str) -> _Response:
        body = self._body_object(request.body)
        path = f"/services/data/{request.version_text}/sobjects/{spec.name}"
        _status, result = self._write(spec, None, body, "POST", path, via, external=None)
        return _Response(201, {"id": result["Id"], "success": True, "errors": []})

    def _upsert(self, request: _Request, spec: _SObject, field_spec: SObjectField, value: str, via: str) -> _Response:
        body = self._body_object(request.body)
        path = f"/services/data/{request.version_text}/sobjects/{spec.name}/{field_spec.name}/{value}"
        in_body = [k for k in body if k.lower() in ("id", field_spec.name.lower())]
        if in_body:
            self._append_log(
                "PATCH", path, spec.name, None, value, 400, created=False, applied=False, via=via, body=body
            )
            raise _fail(
                400,
                "INVALID_FIELD",
                f"{', '.join(in_body)} can't be in the request body of an upsert by {field_spec.name}: "
                "the URL gives the external id",
                in_body,
            )
        matches = self._matches(spec, field_spec.name, value)
        if len(matches) > 1:
            return self._multiple(request, spec, matches)
        if not matches and request.query.get("updateOnly", "").lower() == "true":
            self._append_log(
                "PATCH", path, spec.name, None, value, 404, created=False, applied=False, via=via, body=body
            )
            raise _fail(404, "NOT_FOUND", _NOT_FOUND)
        existing = matches[0] if matches else None
        _status, result = self._write(spec, existing, body, "PATCH", path, via, external=(field_spec.name, value))
        created = existing is None
        if not created and request.version < 46.0:
            return _Response(204)
        answer: dict[str, Any] = {"id": result["Id"], "success": True, "errors": []}
        if request.version >= 46.0:
            answer["created"] = created
        return _Response(201 if created else 200, answer)

    def _body_object(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _Fail(400, [_parser_error(f"SObject from {_token_name(body)}", body)])
        return body

    def _matches(self, spec: _SObject, field_name: str, value: Any) -> list[dict[str, Any]]:
        field_spec = spec.field(field_name)
        name = field_spec.name if field_spec else field_name
        if name == "Id":
            found = self._records[spec.name].get(_normal_id(str(value)))
            return [found] if found is not None else []
        wanted = str(value).lower()
        return [
            r for r in self._records[spec.name].values() if r.get(name) is not None and str(r[name]).lower() == wanted
        ]

    # -- writing --------------------------------------------------------------------------------
    def _write(
        self,
        spec: _SObject,
        existing: dict[str, Any] | None,
        body: dict[str, Any],
        method: str,
        path: str,
        via: str,
        *,
        external: tuple[str, str] | None,
    ) -> tuple[int, dict[str, Any]]:
        """Validate and apply one record's write; log it either way. Returns (status, stored record)."""
        record_id = existing["Id"] if existing is not None else None
        external_value = external[1] if external else None
        try:
            values = self._validate(spec, body, creating=existing is None, existing=existing)
        except _Fail as failure:
            self._append_log(
                method,
                path,
                spec.name,
                record_id,
                external_value,
                failure.status,
                created=False,
                applied=False,
                via=via,
                body=body,
                errors=failure.errors,
            )
            raise
        if external is not None and existing is None:  # a match keeps its stored spelling of the id
            values[external[0]] = external[1]
        duplicate = self._duplicate(spec, values, record_id)
        if duplicate is not None:
            self._append_log(
                method,
                path,
                spec.name,
                record_id,
                external_value,
                400,
                created=False,
                applied=False,
                via=via,
                body=body,
                errors=duplicate.errors,
            )
            raise duplicate
        stamp = _stamp(self._now())
        before: dict[str, Any] = {}
        if existing is None:
            stored: dict[str, Any] = {
                "Id": self._new_id(spec),
                "OwnerId": _USER_ID,
                "CreatedDate": stamp,
                "CreatedById": _USER_ID,
                "IsDeleted": False,
            }
        else:
            stored = existing
            before = {k: v for k, v in stored.items() if k not in _SYSTEM_FIELDS}
        stored.update(values)
        # Like the org, any update moves the modification stamps, even one that sets the same values.
        stored.update(LastModifiedDate=stamp, LastModifiedById=_USER_ID, SystemModstamp=stamp)
        self._derive(spec, stored, created=existing is None)
        applied = existing is None or before != {k: v for k, v in stored.items() if k not in _SYSTEM_FIELDS}
        self._records[spec.name][stored["Id"]] = stored
        status = 201 if existing is None else 200
        self._append_log(
            method,
            path,
            spec.name,
            stored["Id"],
            external_value,
            status,
            created=existing is None,
            applied=applied,
            via=via,
            body=body,
        )
        return status, stored

    def _duplicate(self, spec: _SObject, values: dict[str, Any], record_id: str | None) -> _Fail | None:
        """External ids are unique (without case): a second record may not take one (DUPLICATE_VALUE)."""
        for name, value in values.items():
            field_spec = spec.fields.get(name)
            if field_spec is None or not field_spec.external_id or value in (None, ""):
                continue
            for other in self._matches(spec, name, value):
                if other["Id"] != record_id:
                    return _fail(
                        400,
                        "DUPLICATE_VALUE",
                        f"duplicate value found: {name} duplicates value on record with id: {other['Id']}",
                        [name],
                    )
        return None

    def _validate(
        self, spec: _SObject, body: dict[str, Any], *, creating: bool, existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The values a write sets, checked and resolved; raises _Fail with the org's errors."""
        values: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        read_only: list[str] = []
        for name, value in body.items():
            if name == "attributes":
                continue
            field_spec = spec.field(name)
            if field_spec is None:
                relation = spec.relationships.get(name.lower())
                if relation is None:
                    raise _fail(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {spec.name}")
                resolved = self._by_relationship(spec, relation, value)
                values[relation.name] = resolved
                continue
            if field_spec.read_only:
                read_only.append(field_spec.name)
                continue
            try:
                values[field_spec.name] = self._coerce(field_spec, value)
            except _Fail as failure:
                errors.extend(failure.errors)
        if read_only:
            raise _fail(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(read_only)}. Please check the security settings of this "
                "field and verify that it is read/write for your profile or permission set.",
                read_only,
            )
        if errors:
            raise _Fail(400, errors)
        merged = {**(existing or {}), **values}
        missing = [
            f.name
            for f in spec.fields.values()
            if f.required and (creating or f.name in values) and merged.get(f.name) in (None, "")
        ]
        if missing:
            raise _fail(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing)
        return values

    def _by_relationship(self, spec: _SObject, relation: SObjectField, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _Fail(400, [_parser_error(f"{relation.references or 'SObject'} from {_token_name(value)}", value)])
        keys = [k for k in value if k != "attributes"]
        if relation.references is None:
            raise _fail(
                400,
                "INVALID_FIELD",
                f"This fake does not model {relation.relationship} records; give {relation.name} as an id",
                [relation.name],
            )
        if len(keys) != 1:
            raise _fail(
                400,
                "INVALID_FIELD",
                f"The relationship {relation.relationship} needs exactly one external id field to find the "
                f"{relation.references}; found {len(keys)}",
                [relation.name],
            )
        target = self.objects[relation.references]
        key = keys[0]
        key_spec = target.field(key)
        if key_spec is None or not (key_spec.external_id or key_spec.name == "Id"):
            raise _fail(
                400,
                "INVALID_FIELD",
                f"Field {key} is not an external id or indexed field on {target.name}",
                [relation.name],
            )
        matches = self._matches(target, key_spec.name, value[key])
        if not matches:
            raise _fail(
                400,
                "INVALID_FIELD",
                f"Foreign key external ID: {value[key]} not found for field {key_spec.name} in entity {target.name}",
            )
        if len(matches) > 1:
            raise _fail(
                400,
                "INVALID_FIELD",
                f"Foreign key external ID: {value[key]} matches more than one {target.name} on {key_spec.name}",
            )
        found: str = matches[0]["Id"]
        return found

    def _coerce(self, spec: SObjectField, value: Any) -> Any:
        """A field's value as the org stores it, or _Fail naming what is wrong."""
        if value is None:
            return None
        kind = spec.type
        if kind in _TEXT_TYPES or kind == "reference":
            if isinstance(value, bool | dict | list):
                raise _Fail(400, [_parser_error("string", value)])
            text = str(value)
            if kind == "reference":
                return self._reference(spec, text)
            if spec.length and len(text) > spec.length:
                raise _fail(
                    400,
                    "STRING_TOO_LONG",
                    f"{spec.title}: data value too large: {text[:80]} (max length={spec.length})",
                    [spec.name],
                )
            if kind == "email" and text and not _EMAIL.match(text):
                raise _fail(400, "INVALID_EMAIL_ADDRESS", f"{spec.title}: invalid email address: {text}", [spec.name])
            if spec.values and text not in spec.values:
                raise _fail(
                    400,
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{spec.title}: bad value for restricted picklist field: {text}",
                    [spec.name],
                )
            return text
        if kind in _NUMBER_TYPES:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise _Fail(400, [_parser_error("double" if kind != "int" else "int", value)])
            try:
                number = float(value)
            except ValueError:
                raise _Fail(400, [_parser_error("double" if kind != "int" else "int", value)]) from None
            if kind == "int":
                if number != int(number):
                    raise _Fail(400, [_parser_error("int", value)])
                return int(number)
            return number
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise _Fail(400, [_parser_error("boolean", value)])
        if kind == "date":
            if not isinstance(value, str) or not _DATE.match(value):
                raise _Fail(400, [_parser_error("date", value)])
            try:
                return date.fromisoformat(value).isoformat()
            except ValueError:
                raise _Fail(400, [_parser_error("date", value)]) from None
        if kind == "datetime":
            moment = _parse_datetime(value) if isinstance(value, str) else None
            if moment is None:
                raise _Fail(400, [_parser_error("datetime", value)])
            return _stamp(moment)
        return value

    def _reference(self, spec: SObjectField, text: str) -> str:
        if not _ID.match(text):
            raise _fail(400, "MALFORMED_ID", f"{spec.title}: id value of incorrect type: {text}", [spec.name])
        record_id = _normal_id(text)
        if spec.references is None:
            return record_id
        target = self.objects[spec.references]
        if not record_id.startswith(target.prefix):
            raise _fail(
                400, "FIELD_INTEGRITY_EXCEPTION", f"{spec.title}: id value of incorrect type: {text}", [spec.name]
            )
        if record_id not in self._records[target.name]:
            raise _fail(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [spec.name])
        return record_id

    def _derive(self, spec: _SObject, record: dict[str, Any], *, created: bool) -> None:
        """Fields the org computes: a contact's Name, an opportunity's IsClosed/IsWon, an order's number."""
        if spec.name == "Contact":
            record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)
        elif spec.name == "Opportunity":
            stage = record.get("StageName")
            record["IsClosed"] = stage in ("Closed Won", "Closed Lost")
            record["IsWon"] = stage == "Closed Won"
        elif spec.name == "Order":
            if created and not record.get("OrderNumber"):
                record["OrderNumber"] = f"{self._order_number:08d}"
                self._order_number += 1
            record.setdefault("TotalAmount", 0.0)
            record["StatusCode"] = record.get("Status") or "Draft"
            if record.get("Status") == "Activated" and not record.get("ActivatedDate"):
                record["ActivatedDate"] = record.get("LastModifiedDate")

    def _new_id(self, spec: _SObject) -> str:
        number = self._next_number
        self._next_number += 1
        return _make_id(spec.prefix, number)

    def _now(self) -> datetime:
        moment = self.clock().astimezone(UTC)
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        if self._last_stamp is not None and moment <= self._last_stamp:
            moment = self._last_stamp + timedelta(milliseconds=1)
        self._last_stamp = moment
        return moment

    def _append_log(
        self,
        method: str,
        path: str,
        sobject: str,
        record_id: str | None,
        external_id: str | None,
        status: int,
        *,
        created: bool,
        applied: bool,
        via: str,
        body: Any = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        self._log.append(
            {
                "seq": len(self._log) + 1,
                "method": method,
                "path": path,
                "object": sobject,
                "id": record_id,
                "external_id": external_id,
                "status": status,
                "created": created,
                "applied": applied,
                "errors": copy.deepcopy(errors or []),
                "body": copy.deepcopy(body),
                "via": via,
                "rolled_back": False,
                "at": time.time(),
            }
        )

    def _view(
        self, spec: _SObject, record: dict[str, Any], version: str, wanted: list[str] | None = None
    ) -> dict[str, Any]:
        names = list(spec.fields) if wanted is None else wanted
        view: dict[str, Any] = {
            "attributes": {"type": spec.name, "url": f"/services/data/{version}/sobjects/{spec.name}/{record['Id']}"}
        }
        for name in names:
            field_spec = spec.field(name)
            if field_spec is None:
                raise _fail(400, "INVALID_FIELD", f"No such column '{name}' on entity '{spec.name}'")
            view[field_spec.name] = copy.deepcopy(record.get(field_spec.name))
        return view

    # -- SOQL -----------------------------------------------------------------------------------
    def _resolve(self, sobject: str, path: str) -> tuple[SObjectField, str] | None:
        """A SELECT/WHERE name: ``Field`` or ``Relationship.Field`` (one level)."""
        try:
            spec = self._object(sobject)
        except _Fail:
            message = (
                f"sObject type '{sobject}' is not supported. If you are attempting to use a custom object, be sure "
                "to append the '__c' after the entity name."
            )
            raise _Fail(400, [{"message": message, "errorCode": "INVALID_TYPE"}]) from None
        if "." not in path:
            found = spec.field(path)
            return (found, found.name) if found is not None else None
        relation_name, _, target_field = path.partition(".")
        relation = spec.relationships.get(relation_name.lower())
        if relation is None or relation.references is None or "." in target_field:
            return None
        found = self.objects[relation.references].field(target_field)
        if found is None:
            return None
        return found, f"{relation.relationship}.{found.name}"

    def _flatten(self, spec: _SObject, record: dict[str, Any]) -> dict[str, Any]:
        """The record with ``Relationship.Field`` keys for every reference, for filtering and sorting."""
        flat = dict(record)
        for relation in spec.relationships.values():
            if relation.references is None:
                continue
            target = self._records[relation.references].get(record.get(relation.name) or "")
            for name, value in (target or {}).items():
                flat[f"{relation.relationship}.{name}"] = value
        return flat

    def _query(self, request: _Request, rest: list[str]) -> _Response:
        version = request.version_text
        if rest:
            locator_id, _, start_text = rest[0].rpartition("-")
            entry = self._locators.get(locator_id)
            if entry is None or not start_text.isdigit():
                raise _Fail(400, [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}])
            return self._query_page(version, locator_id, entry[1], int(start_text), self._batch_size(request))
        text = request.query.get("q", "")
        if not text.strip():
            raise _Fail(400, [{"message": "A query string has to be specified", "errorCode": "MALFORMED_QUERY"}])
        parsed = _Soql(text, self._resolve).parse()
        spec = self._object(parsed.sobject)
        rows = [self._flatten(spec, r) for r in self._records[spec.name].values()]
        if parsed.where is not None:
            rows = [r for r in rows if parsed.where(r)]
        for name, descending, nulls_last in reversed(parsed.order):
            path = self._resolve(spec.name, name)
            assert path is not None
            key = path[1]
            present = [r for r in rows if r.get(key) is not None]
            absent = [r for r in rows if r.get(key) is None]
            present.sort(key=lambda r: _sort_key(r[key]), reverse=descending)
            rows = present + absent if nulls_last else absent + present
        rows = rows[parsed.offset :]
        if parsed.limit is not None:
            rows = rows[: parsed.limit]
        shaped = [self._shape(spec, row, parsed.fields, version) for row in rows]
        locator_id = f"01g5g{secrets.token_hex(5)}"
        self._locators[locator_id] = (spec.name, shaped)
        return self._query_page(version, locator_id, shaped, 0, self._batch_size(request))

    def _batch_size(self, request: _Request) -> int:
        size = 2000
        options = request.headers.get("sforce-query-options", "")
        for part in options.split(","):
            name, _, value = part.partition("=")
            if name.strip().lower() == "batchsize" and value.strip().isdigit():
                size = min(2000, max(200, int(value)))
        return max(1, min(size, self._faults.max_batch_size))

    def _query_page(
        self, version: str, locator_id: str, rows: list[dict[str, Any]], start: int, size: int
    ) -> _Response:
        page = rows[start : start + size]
        end = start + len(page)
        body: dict[str, Any] = {"totalSize": len(rows), "done": end >= len(rows), "records": copy.deepcopy(page)}
        if end < len(rows):
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator_id}-{end}"
        else:
            self._locators.pop(locator_id, None)
        return _Response(200, body)

    def _shape(self, spec: _SObject, row: dict[str, Any], fields: list[str], version: str) -> dict[str, Any]:
        shaped: dict[str, Any] = {
            "attributes": {"type": spec.name, "url": f"/services/data/{version}/sobjects/{spec.name}/{row['Id']}"}
        }
        for name in fields:
            found = self._resolve(spec.name, name)
            assert found is not None
            path = found[1]
            if "." not in path:
                shaped[path] = copy.deepcopy(row.get(path))
                continue
            relationship, _, target_field = path.partition(".")
            relation = spec.relationships[relationship.lower()]
            assert relation.references is not None
            target_id = row.get(relation.name)
            if target_id is None or target_id not in self._records[relation.references]:
                shaped[relationship] = None
                continue
            nested = shaped.get(relationship)
            if not isinstance(nested, dict):
                nested = {
                    "attributes": {
                        "type": relation.references,
                        "url": f"/services/data/{version}/sobjects/{relation.references}/{target_id}",
                    }
                }
                shaped[relationship] = nested
            nested[target_field] = copy.deepcopy(row.get(path))
        return shaped

    # -- sObject collections --------------------------------------------------------------------
    def _collection(self, request: _Request, rest: list[str]) -> _Response:
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise _Fail(400, [_err("JSON_PARSER_ERROR", "The request body needs a records list")])
        records: list[Any] = body["records"]
        if len(records) > COLLECTION_LIMIT:
            raise _fail(
                400,
                "EXCEEDED_ID_LIMIT",
                f"record limit reached. cannot submit more than {COLLECTION_LIMIT} records into this call",
            )
        all_or_none = bool(body.get("allOrNone", False))
        operation: Callable[[Any], dict[str, Any]]
        if request.method == "POST" and not rest:

            def operation(item: Any) -> dict[str, Any]:
                return self._collection_create(request, item)

        elif request.method == "PATCH" and len(rest) == 2:
            if request.version < 46.0:
                raise _fail(404, "NOT_FOUND", _NOT_FOUND)
            spec = self._object(rest[0])
            field_spec = spec.field(rest[1])
            if field_spec is None or not field_spec.external_id:
                raise _fail(
                    404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {rest[1]}"
                )
            seen: dict[str, int] = {}
            for item in records:
                if isinstance(item, dict) and item.get(field_spec.name) is not None:
                    value = str(item[field_spec.name]).lower()
                    seen[value] = seen.get(value, 0) + 1
            duplicated = {value for value, count in seen.items() if count > 1}
            upsert_spec, upsert_field = spec, field_spec

            def operation(item: Any) -> dict[str, Any]:
                return self._collection_upsert(request, upsert_spec, upsert_field, item, duplicated)

        else:
            raise _fail(404, "NOT_FOUND", _NOT_FOUND)
        snapshot = self._snapshot() if all_or_none else None
        results = [operation(item) for item in records]
        if snapshot is not None and not all(result["success"] for result in results):
            self._restore(snapshot)
            rolled = {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the request was using "
                "AllOrNone header",
                "fields": [],
            }
            results = [r if not r["success"] else {"id": None, "success": False, "errors": [rolled]} for r in results]
        return _Response(200, results)

    def _collection_create(self, request: _Request, item: Any) -> dict[str, Any]:
        try:
            spec = self._collection_type(item, None)
            path = f"/services/data/{request.version_text}/composite/sobjects"
            _status, stored = self._write(spec, None, item, "POST", path, "composite/sobjects", external=None)
        except _Fail as failure:
            return {"success": False, "errors": _as_status(failure.errors)}
        return {"id": stored["Id"], "success": True, "errors": []}

    def _collection_upsert(
        self, request: _Request, spec: _SObject, field_spec: SObjectField, item: Any, duplicated: set[str]
    ) -> dict[str, Any]:
        path = f"/services/data/{request.version_text}/composite/sobjects/{spec.name}/{field_spec.name}"
        try:
            self._collection_type(item, spec)
            value = item.get(field_spec.name)
            if value in (None, ""):
                raise _fail(
                    400,
                    "MISSING_ARGUMENT",
                    f"{field_spec.name} not specified",
                    [field_spec.name],
                )
            if str(value).lower() in duplicated:
                raise _fail(
                    400, "DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}", [field_spec.name]
                )
            rest = {k: v for k, v in item.items() if k != field_spec.name}
            matches = self._matches(spec, field_spec.name, value)
            if len(matches) > 1:
                raise _fail(
                    300,
                    "DUPLICATE_EXTERNAL_ID",
                    f"{field_spec.name}: more than one record found for external id field: "
                    f"[{', '.join(m['Id'] for m in matches)}]",
                    [field_spec.name],
                )
            existing = matches[0] if matches else None
            _status, stored = self._write(
                spec, existing, rest, "PATCH", path, "composite/sobjects", external=(field_spec.name, str(value))
            )
        except _Fail as failure:
            return {"success": False, "errors": _as_status(failure.errors)}
        return {"id": stored["Id"], "success": True, "errors": [], "created": existing is None}

    def _collection_type(self, item: Any, expected: _SObject | None) -> _SObject:
        attributes = item.get("attributes") if isinstance(item, dict) else None
        name = attributes.get("type") if isinstance(attributes, dict) else None
        if not isinstance(name, str):
            raise _fail(400, "INVALID_TYPE", "Must send a concrete entity type.")
        spec = self._object(name)
        if expected is not None and spec.name != expected.name:
            raise _fail(400, "INVALID_TYPE", f"The record type {spec.name} does not match the URL's {expected.name}")
        return spec

    def _snapshot(self) -> tuple[Any, ...]:
        return (copy.deepcopy(self._records), len(self._log), self._next_number, self._order_number)

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        records, log_length, next_number, order_number = snapshot
        self._records = records
        for entry in self._log[log_length:]:  # rolled back: logged, but nothing stayed applied
            if entry["applied"]:
                entry["applied"] = False
                entry["rolled_back"] = True
        self._next_number = next_number
        self._order_number = order_number

    # -- composite ------------------------------------------------------------------------------
    def _composite(self, request: _Request) -> _Response:
        body = request.body
        subrequests = body.get("compositeRequest") if isinstance(body, dict) else None
        if not isinstance(subrequests, list) or not subrequests:
            raise _Fail(400, [_err("JSON_PARSER_ERROR", "The request body needs a compositeRequest list")])
        if len(subrequests) > COMPOSITE_LIMIT:
            raise _fail(
                400, "INVALID_BATCH_REQUEST", f"A composite request can hold at most {COMPOSITE_LIMIT} subrequests"
            )
        assert isinstance(body, dict)
        all_or_none = bool(body.get("allOrNone", False))
        snapshot = self._snapshot() if all_or_none else None
        results: dict[str, Any] = {}
        answers: list[dict[str, Any]] = []
        failed = False
        halted = [
            _err(
                "PROCESSING_HALTED",
                "The transaction was rolled back since another operation in the same transaction failed.",
            )
        ]
        for sub in subrequests:
            reference = str(sub.get("referenceId", "")) if isinstance(sub, dict) else ""
            if failed and all_or_none:
                answers.append({"body": halted, "httpHeaders": {}, "httpStatusCode": 400, "referenceId": reference})
                continue
            answer = self._subrequest(request, sub, results)
            answers.append({**answer, "referenceId": reference})
            if 200 <= answer["httpStatusCode"] < 300:
                results[reference] = answer["body"]
            else:
                failed = True
        if snapshot is not None and failed:
            self._restore(snapshot)
            answers = [
                a if a["httpStatusCode"] >= 300 else {**a, "body": halted, "httpHeaders": {}, "httpStatusCode": 400}
                for a in answers
            ]
        return _Response(200, {"compositeResponse": answers})

    def _subrequest(self, request: _Request, sub: Any, results: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(sub, dict) or not isinstance(sub.get("url"), str) or not isinstance(sub.get("method"), str):
            errors = [_err("JSON_PARSER_ERROR", "A subrequest needs method, url and referenceId")]
            return {"body": errors, "httpHeaders": {}, "httpStatusCode": 400}
        try:
            url = _substitute(sub["url"], results)
            body = _substitute(sub.get("body"), results)
            parts = urlsplit(url)
            match = _API.match(parts.path)
            if match is None:
                raise _fail(404, "NOT_FOUND", _NOT_FOUND)
            inner = _Request(
                method=sub["method"].upper(),
                version=float(match.group("version")),
                version_text=f"v{match.group('version')}",
                segments=[unquote(s) for s in (match.group("rest") or "").strip("/").split("/") if s],
                query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                headers={k.lower(): str(v) for k, v in (sub.get("httpHeaders") or {}).items()},
                body=body,
                base_url=request.base_url,
            )
            response = self._route(inner, via="composite")
        except _Fail as failure:
            return {"body": failure.errors, "httpHeaders": {}, "httpStatusCode": failure.status}
        headers: dict[str, str] = {}
        if response.status == 201 and isinstance(response.body, dict) and response.body.get("id"):
            headers["Location"] = (
                f"/services/data/{inner.version_text}/sobjects/{inner.segments[1]}/{response.body['id']}"
            )
        return {"body": response.body, "httpHeaders": headers, "httpStatusCode": response.status}

    # -- admin ----------------------------------------------------------------------------------
    def _admin(self, method: str, path: str, query: dict[str, str], raw: bytes) -> _Response:
        what = path[len("/__fake/") :].strip("/")
        try:
            data: Any = json.loads(raw) if raw.strip() else {}
            if what == "health":
                return _Response(200, {"ok": True})
            if what == "log":
                return _Response(200, self.writes(query.get("object", "")))
            if what == "requests":
                return _Response(200, self.requests())
            if what == "records":
                return _Response(200, self.records(query["object"]))
            if what == "reset" and method == "POST":
                self.reset()
                return _Response(200, {"ok": True})
            if what == "expire-tokens" and method == "POST":
                self.expire_tokens()
                return _Response(200, {"ok": True})
            if what == "faults":
                if method == "POST":
                    self.configure(**data)
                return _Response(200, self.faults())
            if what == "seed" and method == "POST":
                return _Response(200, {"ids": self.seed(str(data["object"]), list(data.get("records", [])))})
        except (ValueError, KeyError, TypeError, _Fail) as exc:
            return _Response(400, [_err("FAKE_ADMIN", f"Bad admin request: {exc!r}")])
        return _Response(404, [_err("NOT_FOUND", f"No admin endpoint {method} {path}")])


_REFERENCE = re.compile(r"@\{([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])*)\}")


def _substitute(value: Any, results: Mapping[str, Any]) -> Any:
    """``@{ref.path}`` in a subrequest's url or body, from the earlier subrequests' answers."""
    if isinstance(value, dict):
        return {k: _substitute(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, results) for v in value]
    if not isinstance(value, str):
        return value

    def fill(match: re.Match[str]) -> str:
        reference, path = match.group(1), match.group(2)
        if reference not in results:
            raise _fail(
                400,
                "PROCESSING_HALTED",
                f"Invalid reference specified. No value for {reference}{path} found in {reference}. "
                f"Provided referenceId ({reference}) must be a successful earlier subrequest",
            )
        current: Any = results[reference]
        for step in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
            name, index = step
            try:
                current = current[int(index)] if index else current[name]
            except (KeyError, IndexError, TypeError):
                raise _fail(
                    400,
                    "PROCESSING_HALTED",
                    f"Invalid reference specified. No value for {reference}{path} found in {reference}.",
                ) from None
        return str(current)

    return _REFERENCE.sub(fill, value)


def _canonical(spec: _SObject, name: str) -> str:
    found = spec.field(name)
    return found.name if found is not None else name


def _as_status(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Collection results spell the code ``statusCode``, not ``errorCode``."""
    return [{"statusCode": e["errorCode"], "message": e["message"], "fields": e.get("fields", [])} for e in errors]


def _sort_key(value: Any) -> Any:
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int | float):
        return (0, value)
    text = str(value)
    moment = _parse_datetime(text) if "T" in text else None
    return (1, moment.isoformat()) if moment is not None else (2, text.lower())


def _extra_fields(specs: Iterable[str]) -> dict[str, list[SObjectField]]:
    """``Account.ERP_Number__c:string:external`` -> {"Account": [SObjectField(...)]} (the CLI's --field)."""
    extra: dict[str, list[SObjectField]] = {}
    types = {"id", "string", "textarea", "email", "phone", "url", "picklist", "reference", "date", "datetime"}
    types |= {"boolean"} | _NUMBER_TYPES
    for spec in specs:
        name, *rest = spec.split(":")
        sobject, _, field_name = name.partition(".")
        kind = rest[0] if rest else "string"
        if sobject not in OBJECTS or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", field_name) or kind not in types:
            raise ValueError(
                f"--field {spec!r}: write OBJECT.NAME[:TYPE][:external] with OBJECT one of {', '.join(OBJECTS)} "
                f"and TYPE one of {', '.join(sorted(types))}"
            )
        external = rest[1:] == ["external"]
        length = 255 if kind in _TEXT_TYPES else None
        extra.setdefault(sobject, []).append(SObjectField(field_name, kind, length, external_id=external))
    return extra


CREDENTIALS_HELP = """\
credentials (what a spec's auth for this system says, OAuth 2.0 client credentials):
  auth: { token_url: <url>/services/oauth2/token, client_id: seamline, client_secret: seamline-secret }
  (--client-id and --client-secret change them; the banner prints the token url)

admin API (no credentials, never faulted): GET /__fake/log (the write log), GET /__fake/requests,
GET /__fake/records?object=, GET /__fake/health, POST /__fake/faults, POST /__fake/expire-tokens,
POST /__fake/seed {"object", "records"}, POST /__fake/reset.
"""


def _banner(fake: FakeSalesforce, clients: dict[str, str]) -> str:
    """What a spec needs to reach the org: its URL, token URL, client id and secret, and its write log."""
    lines = [f"fake salesforce on {fake.url} (token url {fake.token_url})"]
    for client_id, secret in clients.items():
        lines += [f"  client id: {client_id}", f"  client secret: {secret}"]
    lines.append(f"  token url: {fake.token_url}")
    lines.append(f"  write log: GET {fake.url}/__fake/log")
    lines.append("stop with Ctrl-C")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``seamline fake salesforce --port 8083``: serve until SIGINT/SIGTERM (the banner says how to reach it)."""
    parser = argparse.ArgumentParser(
        prog="seamline fake salesforce",
        description=__doc__.split("\n")[0],
        epilog=CREDENTIALS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8083, help="port to listen on (default: %(default)s)")
    parser.add_argument("--client-id", default="seamline", help="the connected app's client id (default: seamline)")
    parser.add_argument(
        "--client-secret", default="seamline-secret", help="its client secret (default: seamline-secret)"
    )
    parser.add_argument(
        "--token-ttl", type=float, default=None, help="seconds a session lasts (default: until expired)"
    )
    parser.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="OBJECT.NAME[:TYPE][:external]",
        help="add a custom field, e.g. Account.ERP_Customer_Number__c:string:external (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        extra = _extra_fields(args.field)
    except ValueError as exc:
        parser.error(str(exc))
    clients = {args.client_id: args.client_secret}
    fake = FakeSalesforce(
        port=args.port,
        host=args.host,
        clients=clients,
        token_ttl=args.token_ttl,
        extra_fields=extra,
    )
    refused = listen(fake)
    if refused is not None:
        print(refused, file=sys.stderr)
        return 1
    return serve_until_signalled(fake, lambda: _banner(fake, clients))


if __name__ == "__main__":
    raise SystemExit(main())
