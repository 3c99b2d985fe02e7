"""The http connector against its fake, over real loopback HTTP: auth, pagination, writes, errors, logs.

Nothing of ours is mocked: each test starts :class:`FakeHttpServer` on a free port and drives
:class:`HttpConnection` at it. Server-side checks (OAuth 1.0a signatures, OAuth2 tokens) are small
independent implementations written here, not calls back into the connector.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

import httpx
import pytest

from connectors.http import CONNECTOR, HttpOptions
from connectors.http.client import HttpConnection, oauth1_authorization, oauth1_base_string, server_message
from connectors.http.fake import FakeHttpServer, FakeRequest, FakeResponse
from engine.connector import ConnectContext, roles_of
from engine.errors import TerminalError, TransientError

T = TypeVar("T")

ENDPOINTS: dict[str, Any] = {
    "items": {"path": "/items"},
    "items-page": {"path": "/items", "pagination": {"style": "page"}},
    "items-offset": {"path": "/items", "pagination": {"style": "offset", "size_param": "limit"}},
    "items-next": {"path": "/items", "pagination": {"style": "next-link"}},
    "items-cursor": {"path": "/items", "pagination": {"style": "cursor"}},
    "items-odata": {"path": "/items", "pagination": {"style": "odata"}},
    "items-magento": {"path": "/items", "pagination": {"style": "magento"}},
    "products": {"path": "/products/{sku}", "method": "PUT"},
    "orders": {"path": "/orders", "method": "POST"},
    "source-items": {"path": "/stock/{source.code}/{sku}", "method": "PATCH"},
    "remove": {"path": "/products/{sku}", "method": "DELETE"},
    "answer": {"path": "/answer", "method": "POST"},
    "price": {"path": "/prices/{sku}"},
    "quote": {"path": "/quotes", "method": "POST"},
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def options(url: str, **extra: Any) -> HttpOptions:
    return HttpOptions.model_validate({"connector": "http", "url": url, "endpoints": ENDPOINTS, **extra})


def connection(url: str, masked: list[str] | None = None, **extra: Any) -> HttpConnection:
    mask: Callable[[str], None] = masked.append if masked is not None else (lambda _v: None)
    return HttpConnection(options(url, **extra), ConnectContext(system="erp", client="acme", mask=mask))


async def read_all(conn: HttpConnection, entity: str, **kwargs: Any) -> list[list[Any]]:
    return [page async for page in conn.read(entity, **kwargs)]


def with_conn(url: str, action: Callable[[HttpConnection], Awaitable[T]], **extra: Any) -> T:
    async def scenario() -> T:
        async with connection(url, **extra) as conn:
            return await action(conn)

    return run(scenario())


def seed_items(fake: FakeHttpServer, count: int) -> None:
    fake.seed("/items", [{"id": i, "updated_at": f"2024-01-{i:02d}T00:00:00Z"} for i in range(1, count + 1)])


def ids(pages: list[list[Any]]) -> list[int]:
    return [record["id"] for page in pages for record in page]


# -- wiring -------------------------------------------------------------------------------------


def test_the_kind_is_runnable_and_connect_opens_an_http_connection(fake: FakeHttpServer) -> None:
    assert CONNECTOR.runnable
    conn = CONNECTOR.open(options(fake.url), ConnectContext(system="erp", client="acme"))
    assert isinstance(conn, HttpConnection)
    run(conn.close())


def test_an_http_system_is_read_written_and_called_but_has_no_queue(fake: FakeHttpServer) -> None:
    """No consume() that only says "cannot": the kind is no Consumer, so `validate` refuses a queue trigger on it."""

    async def roles(conn: HttpConnection) -> frozenset[str]:
        return roles_of(conn)

    assert with_conn(fake.url, roles) == {"read", "write", "call"}
    assert not CONNECTOR.consumes


# -- auth -------------------------------------------------------------------------------------


AUTH_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "bearer": ({"bearer": {"token": "tok-secret-123"}}, {"bearer": "tok-secret-123"}),
    "basic": ({"basic": {"username": "api", "password": "pw-secret-456"}}, {"basic": ("api", "pw-secret-456")}),
    "api_key": (
        {"api_key": {"header": "X-Api-Token", "key": "key-secret-789"}},
        {"api_key": ("X-Api-Token", "key-secret-789")},
    ),
}


@pytest.mark.parametrize("scheme", sorted(AUTH_CASES))
def test_static_auth_schemes_are_accepted_and_a_wrong_one_is_a_terminal_401(fake: FakeHttpServer, scheme: str) -> None:
    spec_auth, server_auth = AUTH_CASES[scheme]
    seed_items(fake, 3)
    fake.require_auth(**server_auth)
    pages = with_conn(fake.url, lambda c: read_all(c, "items"), auth=spec_auth)
    assert ids(pages) == [1, 2, 3]

    secret_field = {"bearer": "token", "basic": "password", "api_key": "key"}[scheme]
    wrong = {scheme: {**spec_auth[scheme], secret_field: "wrong-value"}}
    with pytest.raises(TerminalError) as caught:
        with_conn(fake.url, lambda c: read_all(c, "items"), auth=wrong)
    assert caught.value.status == 401
    assert "The consumer isn't authorized to access /items." in str(caught.value)


class TokenServer:
    """A tiny OAuth2 client-credentials server on the fake: issues tok-1, tok-2…; revocable."""

    def __init__(self, fake: FakeHttpServer, *, expires_in: int = 3600) -> None:
        self.issued: list[str] = []
        self.valid: set[str] = set()
        self.expires_in = expires_in
        self.refuse_all = False
        fake.route("POST", "/oauth/token", self.token)
        fake.intercept = self.check

    def token(self, request: FakeRequest) -> FakeResponse:
        form = dict(parse_qsl(request.body.decode()))
        if form != {"grant_type": "client_credentials", "client_id": "seamline", "client_secret": "cs-secret-000"}:
            return FakeResponse(401, {"error": "invalid_client", "error_description": "unknown client"})
        token = f"tok-{len(self.issued) + 1}-abcdef"
        self.issued.append(token)
        self.valid.add(token)
        return FakeResponse(200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in})

    def check(self, request: FakeRequest) -> FakeResponse | None:
        if request.path == "/oauth/token":
            return None
        given = (request.header("Authorization") or "").removeprefix("Bearer ")
        if self.refuse_all or given not in self.valid:
            return FakeResponse(401, {"message": "The access token is invalid or has expired."})
        return None


def oauth2_auth(fake: FakeHttpServer, secret: str = "cs-secret-000") -> dict[str, Any]:
    return {"oauth2": {"token_url": f"{fake.url}/oauth/token", "client_id": "seamline", "client_secret": secret}}


def test_oauth2_token_is_fetched_once_cached_and_refreshed_once_on_a_401(fake: FakeHttpServer) -> None:
    seed_items(fake, 2)
    tokens = TokenServer(fake)
    masked: list[str] = []

    async def scenario() -> None:
        async with connection(fake.url, masked, auth=oauth2_auth(fake)) as conn:
            assert ids(await read_all(conn, "items")) == [1, 2]
            assert ids(await read_all(conn, "items")) == [1, 2]
            assert tokens.issued == ["tok-1-abcdef"]  # cached
            tokens.valid.clear()  # the server revokes it: the next request gets a 401, then a new token
            assert ids(await read_all(conn, "items")) == [1, 2]
            assert tokens.issued == ["tok-1-abcdef", "tok-2-abcdef"]
            tokens.refuse_all = True
            with pytest.raises(TerminalError, match="401 even with a freshly fetched OAuth2 token") as caught:
                await read_all(conn, "items")
            assert caught.value.status == 401
            assert len(tokens.issued) == 3  # one refresh, not a loop

    run(scenario())
    assert "tok-1-abcdef" in masked and "tok-2-abcdef" in masked  # fetched tokens are registered for masking


def test_oauth2_token_without_lifetime_left_is_fetched_again(fake: FakeHttpServer) -> None:
    seed_items(fake, 1)
    tokens = TokenServer(fake, expires_in=0)

    async def scenario() -> None:
        async with connection(fake.url, auth=oauth2_auth(fake)) as conn:
            await read_all(conn, "items")
            await read_all(conn, "items")

    run(scenario())
    assert len(tokens.issued) == 2


def test_oauth2_refused_client_credentials_are_terminal_and_quote_the_server(fake: FakeHttpServer) -> None:
    TokenServer(fake)
    with pytest.raises(TerminalError, match="invalid_client: unknown client") as caught:
        with_conn(fake.url, lambda c: read_all(c, "items"), auth=oauth2_auth(fake, secret="cs-wrong-111"))
    assert "cs-wrong-111" not in str(caught.value)


def test_oauth2_token_endpoint_down_is_transient(fake: FakeHttpServer) -> None:
    TokenServer(fake)
    fake.fail_next(1, status=503, retry_after="4")
    with pytest.raises(TransientError) as caught:
        with_conn(fake.url, lambda c: read_all(c, "items"), auth=oauth2_auth(fake))
    assert caught.value.retry_after == 4.0


# OAuth 1.0a, verified server-side by an implementation written independently of the connector's.

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def rfc3986(text: str) -> str:
    return "".join(chr(b) if b in UNRESERVED else f"%{b:02X}" for b in text.encode())


class OAuth1Verifier:
    def __init__(self, consumer_secret: str, token_secret: str) -> None:
        self.key = f"{rfc3986(consumer_secret)}&{rfc3986(token_secret)}".encode()
        self.nonces: set[str] = set()
        self.checked: list[str] = []

    def __call__(self, request: FakeRequest) -> FakeResponse | None:
        header = request.header("Authorization") or ""
        fields = {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', header)}
        signature = fields.pop("oauth_signature", "")
        problems = []
        if not header.startswith("OAuth ") or fields.get("oauth_signature_method") != "HMAC-SHA256":
            problems.append("not an HMAC-SHA256 OAuth header")
        if fields.get("oauth_nonce") in self.nonces:
            problems.append("nonce_used")
        self.nonces.add(fields.get("oauth_nonce", ""))
        if abs(time.time() - int(fields.get("oauth_timestamp", "0"))) > 300:
            problems.append("timestamp_refused")
        params = sorted((rfc3986(k), rfc3986(v)) for k, v in [*request.query, *fields.items()])
        base = "&".join(
            [request.method, rfc3986(request.base_url + request.path), rfc3986("&".join(f"{k}={v}" for k, v in params))]
        )
        expected = base64.b64encode(hmac.new(self.key, base.encode(), hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, signature):
            problems.append("signature_invalid")
        if problems:
            return FakeResponse(401, {"message": "OAuth: %1", "parameters": [", ".join(problems)]})
        self.checked.append(request.method + " " + request.url)
        return None


OAUTH1 = {
    "oauth1": {
        "consumer_key": "ck-public",
        "consumer_secret": "cs-oauth1-secret",
        "access_token": "at-oauth1-token",
        "access_token_secret": "ats-oauth1-secret",
    }
}


def test_oauth1_signatures_verify_server_side_including_query_parameters(fake: FakeHttpServer) -> None:
    seed_items(fake, 5)
    verifier = OAuth1Verifier("cs-oauth1-secret", "ats-oauth1-secret")
    fake.intercept = verifier
    fake.route("GET", "/prices/A%20B%2F1", lambda r: FakeResponse(200, {"sku": "A B/1", "name": "x"}))

    async def scenario() -> None:
        async with connection(fake.url, auth=OAUTH1) as conn:
            pages = await read_all(
                conn, "items-magento", since="2024-01-02T00:00:00Z", cursor_field="updated_at", page_size=2
            )
            assert ids(pages) == [2, 3, 4, 5]
            assert await conn.write(
                "products", {"sku": "A B/1", "name": "x"}, key="A", mode="upsert", idempotency_key="k"
            )
            assert await conn.call("price", {"sku": "A B/1", "qty": 3, "note": "a+b=c&d"}, timeout=5) == {
                "sku": "A B/1",
                "name": "x",
            }

    run(scenario())
    assert any("searchCriteria" in line for line in verifier.checked)
    assert any("note=a%2Bb%3Dc%26d" in line for line in verifier.checked)


def test_oauth1_with_a_wrong_secret_is_refused(fake: FakeHttpServer) -> None:
    fake.intercept = OAuth1Verifier("cs-oauth1-secret", "ats-oauth1-secret")
    wrong = {"oauth1": {**OAUTH1["oauth1"], "access_token_secret": "not-the-secret"}}
    with pytest.raises(TerminalError, match="signature_invalid") as caught:
        with_conn(fake.url, lambda c: read_all(c, "items"), auth=wrong)
    assert caught.value.status == 401


def test_oauth1_base_string_matches_rfc5849_section_3_4_1_1() -> None:
    url = "http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b"
    params = [
        *parse_qsl(url.split("?")[1], keep_blank_values=True),
        ("oauth_consumer_key", "9djdj82h48djs9d2"),
        ("oauth_token", "kkk9d7dh3k39sjv7"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "137131201"),
        ("oauth_nonce", "7d8f3e4a"),
        ("c2", ""),
        ("a3", "2 q"),
    ]
    assert oauth1_base_string("POST", url, params) == (
        "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D%253D%25253D%26"
        "c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26"
        "oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7"
    )


def test_oauth1_signature_matches_rfc5849_section_1_2() -> None:
    header = oauth1_authorization(
        "GET",
        "http://photos.example.net/photos?file=vacation.jpg&size=original",
        consumer_key="dpf43f3p2l4k3l03",
        consumer_secret="kd94hf93k423kf44",
        token="nnch734d00sl2jdk",
        token_secret="pfkkdhi9sl3r4s00",
        nonce="chapoH",
        timestamp="137131202",
        signature_method="HMAC-SHA1",
        version=None,
    )
    assert 'oauth_signature="MdpQcU8iPSUjWoN%2FUDMsK2sui9I%3D"' in header


# -- pagination --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entity", ["items-page", "items-offset", "items-next", "items-cursor", "items-odata", "items-magento"]
)
def test_each_pagination_style_reads_everything_since_the_cursor(fake: FakeHttpServer, entity: str) -> None:
    seed_items(fake, 23)
    pages = with_conn(
        fake.url,
        lambda c: read_all(c, entity, since="2024-01-04T00:00:00Z", cursor_field="updated_at", page_size=5),
    )
    assert ids(pages) == list(range(4, 24))
    assert [len(p) for p in pages] == [5, 5, 5, 5]


@pytest.mark.parametrize("entity", ["items-offset", "items-next", "items-cursor", "items-odata", "items-magento"])
def test_pages_capped_by_the_server_lose_nothing(fake: FakeHttpServer, entity: str) -> None:
    seed_items(fake, 11)
    fake.configure(max_page_size=3)
    pages = with_conn(fake.url, lambda c: read_all(c, entity, page_size=5))
    assert ids(pages) == list(range(1, 12))


def test_how_the_cursor_and_filter_reach_the_server(fake: FakeHttpServer) -> None:
    seed_items(fake, 2)

    async def scenario(conn: HttpConnection) -> None:
        for entity in ("items-page", "items-odata", "items-magento"):
            await read_all(
                conn, entity, since="2024-01-02T00:00:00Z", cursor_field="updated_at", filter={"status": "active"}
            )

    with_conn(fake.url, scenario)
    generic, odata, magento = (dict(r["query"]) for r in fake.requests())
    assert generic == {"updated_at_gte": "2024-01-02T00:00:00Z", "status": "active", "page": "1", "size": "100"}
    assert odata["$filter"] == "updated_at ge datetimeoffset'2024-01-02T00:00:00Z'"
    assert odata["$orderby"] == "updated_at"
    assert odata["status"] == "active"
    assert magento["searchCriteria[filter_groups][0][filters][0][field]"] == "updated_at"
    assert magento["searchCriteria[filter_groups][0][filters][0][value]"] == "2024-01-02T00:00:00Z"
    assert magento["searchCriteria[filter_groups][0][filters][0][condition_type]"] == "gteq"
    assert magento["searchCriteria[filter_groups][1][filters][0][field]"] == "status"
    assert magento["searchCriteria[filter_groups][1][filters][0][condition_type]"] == "eq"
    assert magento["searchCriteria[sortOrders][0][field]"] == "updated_at"


def test_magento_stops_on_an_empty_page_when_there_is_no_total(fake: FakeHttpServer) -> None:
    records = [{"id": i} for i in range(1, 9)]

    def magento(request: FakeRequest) -> FakeResponse:
        query = dict(request.query)
        size, page = int(query["searchCriteria[pageSize]"]), int(query["searchCriteria[currentPage]"])
        return FakeResponse(200, {"items": records[(page - 1) * size : page * size]})

    fake.route("GET", "/items", magento)
    pages = with_conn(fake.url, lambda c: read_all(c, "items-magento", page_size=4))
    assert ids(pages) == list(range(1, 9))
    asked = [dict(r["query"])["searchCriteria[currentPage]"] for r in fake.requests()]
    assert asked == ["1", "2", "3"]  # the third, empty page ends the read


def test_next_link_from_the_link_header_and_items_at_a_dotted_path(fake: FakeHttpServer) -> None:
    def listing(request: FakeRequest) -> FakeResponse:
        if dict(request.query).get("after") == "2":
            return FakeResponse(200, {"data": {"rows": [{"id": 3}]}})
        return FakeResponse(200, {"data": {"rows": [{"id": 1}, {"id": 2}]}}, {"Link": '</rows?after=2>; rel="next"'})

    fake.route("GET", "/rows", listing)
    endpoints = {"rows": {"path": "/rows", "pagination": {"style": "next-link", "items": "data.rows"}}}
    pages = with_conn(fake.url, lambda c: read_all(c, "rows"), endpoints=endpoints)
    assert pages == [[{"id": 1}, {"id": 2}], [{"id": 3}]]


def test_odata_v4_value_and_next_link(fake: FakeHttpServer) -> None:
    def listing(request: FakeRequest) -> FakeResponse:
        if "$skiptoken" in dict(request.query):
            return FakeResponse(200, {"value": [{"id": 2}]})
        return FakeResponse(200, {"value": [{"id": 1}], "@odata.nextLink": f"{fake.url}/v4?$skiptoken=1"})

    fake.route("GET", "/v4", listing)
    endpoints = {"v4": {"path": "/v4", "pagination": {"style": "odata"}}}
    assert with_conn(fake.url, lambda c: read_all(c, "v4"), endpoints=endpoints) == [[{"id": 1}], [{"id": 2}]]


def test_a_server_that_ignores_the_page_parameter_is_caught(fake: FakeHttpServer) -> None:
    fake.route("GET", "/stuck", lambda _r: FakeResponse(200, {"items": [{"id": 1}, {"id": 2}]}))
    endpoints = {"stuck": {"path": "/stuck", "pagination": {"style": "page", "page_size": 2}}}
    with pytest.raises(TerminalError, match="the same page twice"):
        with_conn(fake.url, lambda c: read_all(c, "stuck"), endpoints=endpoints)


def test_a_next_link_to_another_server_is_refused(fake: FakeHttpServer) -> None:
    fake.route("GET", "/away", lambda _r: FakeResponse(200, {"items": [{"id": 1}], "next": "https://evil.example/x"}))
    endpoints = {"away": {"path": "/away", "pagination": {"style": "next-link"}}}
    with pytest.raises(TerminalError, match="another server"):
        with_conn(fake.url, lambda c: read_all(c, "away"), endpoints=endpoints, auth={"bearer": {"token": "t0k3n"}})


def test_a_body_without_the_items_path_names_what_it_has(fake: FakeHttpServer) -> None:
    fake.route("GET", "/odd", lambda _r: FakeResponse(200, {"results": [], "count": 0}))
    endpoints = {"odd": {"path": "/odd"}}
    with pytest.raises(TerminalError, match=r"no list of records at 'items' .*count, results"):
        with_conn(fake.url, lambda c: read_all(c, "odd"), endpoints=endpoints)


# -- writes and calls --------------------------------------------------------------------------


def test_write_fills_placeholders_url_encoded_and_sends_the_idempotency_key(fake: FakeHttpServer) -> None:
    record = {"sku": "A/B 1?", "name": "Widget"}
    receipt = with_conn(
        fake.url, lambda c: c.write("products", record, key="A/B 1?", mode="upsert", idempotency_key="ik-1")
    )
    assert receipt == "201"
    assert fake.resource("/products/A%2FB%201%3F") == record
    (entry,) = fake.writes("/products")
    assert entry["method"] == "PUT"
    assert entry["idempotency_key"] == "ik-1"
    assert entry["body"] == record


def test_write_receipt_carries_the_id_the_system_gave(fake: FakeHttpServer) -> None:
    receipt = with_conn(fake.url, lambda c: c.write("orders", {"n": 1}, key=1, mode="create", idempotency_key="o-1"))
    assert receipt == "201 id=1"


def test_nested_placeholders_and_patch(fake: FakeHttpServer) -> None:
    fake.seed("/stock/WH1", [{"sku": "A", "qty": 1}], id_field="sku")
    record = {"sku": "A", "source": {"code": "WH1"}, "qty": 5}
    assert (
        with_conn(fake.url, lambda c: c.write("source-items", record, key="A", mode="update", idempotency_key="s"))
        == "200"
    )
    assert fake.resource("/stock/WH1/A") == {"sku": "A", "qty": 5, "source": {"code": "WH1"}}


def test_delete_sends_no_body(fake: FakeHttpServer) -> None:
    fake.seed("/products", [{"sku": "A"}], id_field="sku")
    assert (
        with_conn(fake.url, lambda c: c.write("remove", {"sku": "A"}, key="A", mode="delete", idempotency_key="d"))
        == "204"
    )
    assert fake.resource("/products/A") is None
    assert fake.writes()[0]["body"] is None


def test_a_repeated_idempotency_key_is_not_applied_twice(fake: FakeHttpServer) -> None:
    async def scenario(conn: HttpConnection) -> list[str]:
        first = await conn.write("orders", {"n": 1}, key=1, mode="create", idempotency_key="order-1#erp")
        again = await conn.write("orders", {"n": 1}, key=1, mode="create", idempotency_key="order-1#erp")
        other = await conn.write("orders", {"n": 2}, key=2, mode="create", idempotency_key="order-2#erp")
        return [first, again, other]

    assert with_conn(fake.url, scenario) == ["201 id=1", "201 id=1", "201 id=2"]
    assert fake.applied_count("/orders") == 2
    assert [e["duplicate"] for e in fake.writes("/orders")] == [False, True, False]
    assert len(fake.resources("/orders/")) == 2


def test_a_record_without_a_placeholder_value_is_terminal_and_says_which(fake: FakeHttpServer) -> None:
    with pytest.raises(TerminalError, match=r"'products' needs 'sku' for its path /products/\{sku\}.*it has: name"):
        with_conn(fake.url, lambda c: c.write("products", {"name": "x"}, key=None, mode="upsert", idempotency_key="k"))
    assert fake.requests() == []


def test_an_unknown_endpoint_is_terminal_with_a_suggestion(fake: FakeHttpServer) -> None:
    with pytest.raises(TerminalError, match="no endpoint named 'product' to write — did you mean 'products'"):
        with_conn(fake.url, lambda c: c.write("product", {}, key=None, mode="upsert", idempotency_key="k"))


def test_call_get_sends_plain_fields_as_query_and_post_sends_the_body(fake: FakeHttpServer) -> None:
    fake.route("GET", "/prices/A%201", lambda r: FakeResponse(200, {"price": 9.5, "query": dict(r.query)}))
    fake.route("POST", "/quotes", lambda r: FakeResponse(200, {"echo": r.json()}))

    async def scenario(conn: HttpConnection) -> tuple[Any, Any]:
        price = await conn.call("price", {"sku": "A 1", "qty": 2, "customer": None, "nested": {"x": 1}}, timeout=5)
        quote = await conn.call("quote", {"sku": "A", "qty": 2}, timeout=5)
        return price, quote

    price, quote = with_conn(fake.url, scenario)
    assert price == {"price": 9.5, "query": {"qty": "2"}}
    assert quote == {"echo": {"sku": "A", "qty": 2}}


# -- error classification ------------------------------------------------------------------------


MAGENTO_400 = {"message": "Invalid product data: %1", "parameters": ["Invalid attribute set entity type"]}
MAGENTO_400_ERRORS = {
    "message": "One or more input exceptions have occurred.",
    "errors": [
        {"message": '"%fieldName" is required. Enter and try again.', "parameters": {"fieldName": "website_ids"}}
    ],
}
HTTP_DATE_IN_2_MIN = "http-date"

ACL_401 = {
    "message": "The consumer isn't authorized to access %resources.",
    "parameters": {"resources": "Magento_Catalog::products"},
}
ODATA_422 = {"error": {"code": "SY/530", "message": {"lang": "en", "value": "Material unknown"}}}
MAGENTO_500 = {"message": "Internal Error. Details are available in Magento log file. Report ID: webapi-6"}
NO_ROUTE = {"message": "Request does not match any route.", "trace": None}
TOO_MANY = {"message": "Too Many Requests", "trace": None}

# status, body, headers -> a receipt, or (error type, retry_after, text the message must contain)
CLASSIFICATION = [
    pytest.param(200, {"id": 7}, {}, "200 id=7", id="200"),
    pytest.param(201, {"entity_id": 8}, {}, "201 id=8", id="201"),
    pytest.param(204, None, {}, "204", id="204"),
    pytest.param(
        400, MAGENTO_400, {}, (TerminalError, None, "Invalid product data: Invalid attribute set entity type"), id="400"
    ),
    pytest.param(400, MAGENTO_400_ERRORS, {}, (TerminalError, None, '("website_ids" is required.'), id="400-errors"),
    pytest.param(401, ACL_401, {}, (TerminalError, None, "access Magento_Catalog::products."), id="401"),
    pytest.param(404, NO_ROUTE, {}, (TerminalError, None, "Request does not match any route."), id="404"),
    pytest.param(
        409, {"title": "Conflict", "detail": "v3 is older than v4"}, {}, (TerminalError, None, "v3 is older"), id="409"
    ),
    pytest.param(422, ODATA_422, {}, (TerminalError, None, "SY/530: Material unknown"), id="422"),
    pytest.param(429, TOO_MANY, {"Retry-After": "7"}, (TransientError, 7.0, "Too Many Requests"), id="429"),
    pytest.param(
        503, "<html>down</html>", {"Retry-After": HTTP_DATE_IN_2_MIN}, (TransientError, "~120", "down"), id="503-date"
    ),
    pytest.param(500, MAGENTO_500, {}, (TransientError, None, "Report ID: webapi-6"), id="500"),
    pytest.param(502, b"Bad gateway", {"Content-Type": "text/plain"}, (TransientError, None, "Bad gateway"), id="502"),
    pytest.param(
        301, None, {"Location": "https://new.example/a"}, (TerminalError, None, "redirected to https://new"), id="301"
    ),
]


@pytest.mark.parametrize(("status", "body", "headers", "outcome"), CLASSIFICATION)
def test_answers_are_classified(
    fake: FakeHttpServer, status: int, body: Any, headers: dict[str, str], outcome: Any
) -> None:
    if headers.get("Retry-After") == HTTP_DATE_IN_2_MIN:
        headers = {**headers, "Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)}
    fake.route("POST", "/answer", lambda _r: FakeResponse(status, body, headers))

    def write() -> str:
        return with_conn(fake.url, lambda c: c.write("answer", {"a": 1}, key=1, mode="create", idempotency_key="k"))

    if isinstance(outcome, str):
        assert write() == outcome
        return
    kind, retry_after, text = outcome
    with pytest.raises(kind) as caught:
        write()
    error = caught.value
    assert type(error) is kind
    assert isinstance(error, TerminalError | TransientError)
    assert error.status == status
    assert str(error).startswith(f"erp: POST /answer -> {status} ")
    assert text in str(error)
    if retry_after == "~120":
        assert isinstance(error, TransientError) and error.retry_after is not None
        assert 60 < error.retry_after <= 121
    else:
        assert getattr(error, "retry_after", None) == retry_after


def test_a_timeout_is_transient(fake: FakeHttpServer) -> None:
    fake.configure(latency=0.5)
    with pytest.raises(TransientError, match=r"erp: GET /prices/A: no answer within 0\.05s \(ReadTimeout\)"):
        with_conn(fake.url, lambda c: c.call("price", {"sku": "A"}, timeout=0.05))


def test_the_limits_timeout_applies_to_writes(fake: FakeHttpServer) -> None:
    fake.configure(latency=0.5)
    with pytest.raises(TransientError, match=r"no answer within 0\.05s"):
        with_conn(
            fake.url,
            lambda c: c.write("orders", {"n": 1}, key=1, mode="create", idempotency_key="k"),
            limits={"timeout": "50ms"},
        )


def test_a_dropped_connection_is_transient_and_the_next_request_works(fake: FakeHttpServer) -> None:
    fake.drop_next(1)

    async def scenario(conn: HttpConnection) -> str:
        with pytest.raises(TransientError, match="connection dropped"):
            await conn.write("orders", {"n": 1}, key=1, mode="create", idempotency_key="k")
        return await conn.write("orders", {"n": 1}, key=1, mode="create", idempotency_key="k")

    assert with_conn(fake.url, scenario) == "201 id=1"
    assert fake.requests()[0]["status"] is None
    assert fake.applied_count() == 1


def test_connection_refused_after_the_fake_stops_is_transient(fake: FakeHttpServer) -> None:
    url = fake.url
    fake.stop()
    with pytest.raises(TransientError, match="could not connect") as caught:
        with_conn(url, lambda c: c.write("orders", {"n": 1}, key=1, mode="create", idempotency_key="k"))
    assert not isinstance(caught.value, httpx.HTTPError)


def test_a_success_that_is_not_json_is_terminal_on_read(fake: FakeHttpServer) -> None:
    fake.route("GET", "/items", lambda _r: FakeResponse(200, b"<html>login</html>", {"Content-Type": "text/html"}))
    with pytest.raises(TerminalError, match=r"not JSON \(text/html\): <html>login</html>"):
        with_conn(fake.url, lambda c: read_all(c, "items"))


def test_no_library_exception_escapes_for_what_httpx_refuses(fake: FakeHttpServer) -> None:
    async def scenario(conn: HttpConnection) -> None:
        with pytest.raises(TerminalError, match="erp: PUT /products/1"):
            await conn.write("products", {"sku": 1}, key=1, mode="upsert", idempotency_key="bad\nkey")
        with pytest.raises(TerminalError, match="the record is not JSON"):
            await conn.write("products", {"sku": 1, "tags": {1, 2}}, key=1, mode="upsert", idempotency_key="k")

    with_conn(fake.url, scenario)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"message": "%fieldName is a required field.", "parameters": {"fieldName": "cartId"}},
            "cartId is a required field.",
        ),
        ({"message": "%1 of %2 (%3)", "parameters": ["a", "b"]}, "a of b (%3)"),
        (
            {"message": "Value %fieldValue for %fieldName", "parameters": [{"fieldName": "sku", "fieldValue": "X"}]},
            "Value X for sku",
        ),
        ({"error": "invalid_grant"}, "invalid_grant"),
        ("plain string", "plain string"),
        (None, ""),
    ],
)
def test_server_message_shapes(body: Any, expected: str) -> None:
    assert server_message(body) == expected


# -- reconnecting ------------------------------------------------------------------------------


def test_the_same_connection_reconnects_after_the_fake_restarts_on_its_port(fake: FakeHttpServer) -> None:
    port = fake.port

    async def scenario(conn: HttpConnection) -> None:
        assert await conn.write("orders", {"n": 1}, key=1, mode="create", idempotency_key="a") == "201 id=1"
        fake.stop()
        with pytest.raises(TransientError):
            await conn.write("orders", {"n": 2}, key=2, mode="create", idempotency_key="b")
        fake.start()
        assert fake.port == port
        assert await conn.write("orders", {"n": 2}, key=2, mode="create", idempotency_key="b") == "201 id=2"
        # the first attempt's key is still known after the restart: not applied again
        assert await conn.write("orders", {"n": 1}, key=1, mode="create", idempotency_key="a") == "201 id=1"

    with_conn(fake.url, scenario)
    assert fake.applied_count() == 2


# -- secrets -----------------------------------------------------------------------------------


SECRETS = [
    "tok-secret-123",
    "pw-secret-456",
    "key-secret-789",
    "cs-secret-000",
    "cs-oauth1-secret",
    "ats-oauth1-secret",
]


def test_secrets_never_reach_the_logs(fake: FakeHttpServer, caplog: pytest.LogCaptureFixture) -> None:
    seed_items(fake, 1)
    tokens = TokenServer(fake)
    fake.intercept = None  # the token server's check is not needed here; tokens are still issued
    auths = [spec for spec, _server in AUTH_CASES.values()] + [oauth2_auth(fake), OAUTH1]

    async def scenario() -> None:
        for auth in auths:
            async with connection(fake.url, auth=auth) as conn:
                await read_all(conn, "items")
                await conn.write("orders", {"n": 1}, key=1, mode="create", idempotency_key=str(id(auth)))

    with caplog.at_level(logging.DEBUG, logger="seamline.connectors.http"):
        run(scenario())
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "http request GET" in text and "http response POST" in text
    assert "'authorization': '***'" in text and "'x-api-token': '***'" in text
    for secret in [*SECRETS, *tokens.issued, base64.b64encode(b"api:pw-secret-456").decode()]:
        assert secret not in text


def test_a_secret_echoed_by_the_server_is_masked_in_the_error(fake: FakeHttpServer) -> None:
    fake.route(
        "POST",
        "/answer",
        lambda r: FakeResponse(400, {"message": "bad header %1", "parameters": [r.header("Authorization")]}),
    )
    with pytest.raises(TerminalError) as caught:
        with_conn(
            fake.url,
            lambda c: c.write("answer", {}, key=1, mode="create", idempotency_key="k"),
            auth={"bearer": {"token": "tok-secret-123"}},
        )
    assert "tok-secret-123" not in str(caught.value)
    assert "bad header Bearer ***" in str(caught.value)
