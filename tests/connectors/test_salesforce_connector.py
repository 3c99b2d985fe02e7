"""The salesforce connector against the fake org, over real loopback HTTP.

Nothing of ours is mocked: each test starts :class:`FakeSalesforce` on a free port and drives
:class:`SalesforceConnection` at it — writes of every entity, idempotent rewrites, error translation,
the session token, SOQL reads with a cursor and paging, composite batching, and secrets kept out of
errors and logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from connectors.salesforce import CONNECTOR, SalesforceOptions
from connectors.salesforce.client import SalesforceConnection, soql_datetime, soql_literal
from connectors.salesforce.fake import FakeSalesforce, SObjectField
from engine.connector import ConnectContext
from engine.errors import TerminalError, TransientError
from engine.kit.http.auth import TokenAuth
from engine.runtime.triggers import shift_cursor

T = TypeVar("T")
CLIENT, SECRET = "crm-app", "very-secret-client-value"


async def session_token(conn: SalesforceConnection) -> str:
    """The connection's session token, fetched now if it has none yet (the kit's token cache)."""
    auth = conn.http.auth
    assert isinstance(auth, TokenAuth)
    return await auth.cache.get()


@pytest.fixture
def org() -> Iterator[FakeSalesforce]:
    extra = {
        "Account": [SObjectField("ERP_Customer_Number__c", "string", 20, external_id=True)],
        "Order": [SObjectField("OrderNumber__c", "string", 30, external_id=True)],
    }
    with FakeSalesforce(port=0, clients={CLIENT: SECRET}, extra_fields=extra) as fake:
        yield fake


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def options(fake: FakeSalesforce, **extra: Any) -> SalesforceOptions:
    auth = {"token_url": fake.token_url, "client_id": CLIENT, "client_secret": SECRET, **extra.pop("auth", {})}
    return SalesforceOptions.model_validate(
        {"connector": "salesforce", "url": fake.url, "auth": auth, "limits": {"timeout": "5s"}, **extra}
    )


def connection(fake: FakeSalesforce, masked: list[str] | None = None, **extra: Any) -> SalesforceConnection:
    mask: Callable[[str], None] = masked.append if masked is not None else (lambda _v: None)
    return SalesforceConnection(options(fake, **extra), ConnectContext(system="crm", client="acme", mask=mask))


def with_conn(fake: FakeSalesforce, action: Callable[[SalesforceConnection], Awaitable[T]], **extra: Any) -> T:
    async def scenario() -> T:
        async with connection(fake, **extra) as conn:
            return await action(conn)

    return run(scenario())


async def upsert(conn: SalesforceConnection, entity: str, record: Any, key: Any = None) -> str:
    return await conn.write(entity, record, key=key, mode="upsert", idempotency_key=f"k:{entity}:{key}")


async def read_all(conn: SalesforceConnection, entity: str, **kwargs: Any) -> list[list[Any]]:
    return [page async for page in conn.read(entity, **kwargs)]


def raises(
    fake: FakeSalesforce, action: Callable[[SalesforceConnection], Awaitable[Any]], kind: type[Exception]
) -> Any:
    async def scenario() -> Any:
        async with connection(fake) as conn:
            with pytest.raises(kind) as caught:
                await action(conn)
            return caught.value

    return run(scenario())


# -- the kind, options, connect ---------------------------------------------------------------------


def test_the_kind_is_runnable_and_connect_sends_nothing(org: FakeSalesforce) -> None:
    assert CONNECTOR.runnable
    conn = CONNECTOR.open(options(org), ConnectContext(system="crm", client="acme"))
    assert isinstance(conn, SalesforceConnection)
    run(conn.close())
    run(conn.close())
    assert org.requests() == []


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"api_version": "v45.0"}, "v46.0 or later"),
        ({"api_version": "62"}, "vNN.N"),
        ({"external_id_fields": {"leads": "X__c"}}, "external_id_fields"),
        ({"external_id_field": "Bad Field"}, "external_id_field"),
        ({"fields": {"contacts": ["Account.Owner.Name"]}}, "fields"),
        ({"composite": {"max_records": 500}}, "max_records"),
    ],
)
def test_options_refuse_what_cannot_work(org: FakeSalesforce, extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        options(org, **extra)
    assert fragment in str(caught.value)


# -- writes of every entity -----------------------------------------------------------------------------


def test_writes_every_entity_by_external_id(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> list[str]:
        return [
            await upsert(conn, "accounts", {"Name": "Acme", "Type": "Customer - Direct"}, key="A-1"),
            await upsert(conn, "contacts", {"LastName": "Lovelace", "Account": {"Seamline_Id__c": "A-1"}}, key="C-1"),
            await upsert(
                conn,
                "opportunities",
                {"Name": "Big deal", "StageName": "Prospecting", "CloseDate": "2025-03-31", "Amount": 1200.5},
                key="O-1",
            ),
            await upsert(
                conn,
                "orders",
                {"Account": {"Seamline_Id__c": "A-1"}, "EffectiveDate": "2025-01-14", "Status": "Draft"},
                key="SO-1",
            ),
        ]

    receipts = with_conn(org, action)
    account = org.find("Account", "Seamline_Id__c", "A-1")
    assert account is not None
    assert receipts[0] == f"Account {account['Id']}"
    assert [r.split()[0] for r in receipts] == ["Account", "Contact", "Opportunity", "Order"]
    contact, order = org.find("Contact", "Seamline_Id__c", "C-1"), org.find("Order", "Seamline_Id__c", "SO-1")
    assert contact is not None and contact["AccountId"] == account["Id"]  # relationship upsert by external id
    assert order is not None and order["AccountId"] == account["Id"]
    writes = org.writes()
    assert [w["method"] for w in writes] == ["PATCH"] * 4
    assert writes[1]["path"].endswith("/sobjects/Contact/Seamline_Id__c/C-1")
    assert "Seamline_Id__c" not in writes[1]["body"]


def test_a_rewrite_updates_the_same_record(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> list[str]:
        first = await upsert(conn, "accounts", {"Name": "Acme"}, key="A-1")
        again = await upsert(conn, "accounts", {"Name": "Acme"}, key="A-1")
        changed = await upsert(conn, "accounts", {"Name": "Acme GmbH"}, key="A-1")
        return [first, again, changed]

    first, again, changed = with_conn(org, action)
    assert first == again == changed
    assert [r["Name"] for r in org.records("Account")] == ["Acme GmbH"]
    assert org.applied_count("Account") == 2  # created, then changed; the identical rewrite changed nothing


def test_the_external_id_comes_from_the_key_or_the_record(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> None:
        await upsert(conn, "accounts", {"Name": "From record", "Seamline_Id__c": "A-1"})
        await upsert(conn, "accounts", {"Name": "From key list"}, key=["A-2"])
        await upsert(conn, "accounts", {"Name": "Number"}, key=7)
        await upsert(conn, "accounts", {"Name": "Same in both", "Seamline_Id__c": "A-3"}, key="A-3")

    with_conn(org, action)
    assert sorted(r["Seamline_Id__c"] for r in org.records("Account")) == ["7", "A-1", "A-2", "A-3"]
    assert all("Seamline_Id__c" not in w["body"] for w in org.writes())


@pytest.mark.parametrize(
    ("record", "key", "fragment"),
    [
        ({"Name": "No id"}, None, "no usable external id"),
        ({"Name": "Two ids", "Seamline_Id__c": "A-1"}, "A-2", "make them agree"),
        ({"Name": "Compound"}, ["a", "b"], "one external id field"),
        ({"Name": "Bool"}, True, "no usable external id"),
    ],
)
def test_an_unusable_external_id_is_terminal_and_never_sent(
    org: FakeSalesforce, record: dict[str, Any], key: Any, fragment: str
) -> None:
    error = raises(org, lambda conn: upsert(conn, "accounts", record, key=key), TerminalError)
    assert fragment in str(error)
    assert org.requests() == []


def test_each_entity_may_have_its_own_external_id_field(org: FakeSalesforce) -> None:
    ids = {"accounts": "ERP_Customer_Number__c", "orders": "OrderNumber__c"}

    async def action(conn: SalesforceConnection) -> None:
        await upsert(conn, "accounts", {"ERP_Customer_Number__c": "K-100", "Name": "Acme"})
        order = {"Account": {"ERP_Customer_Number__c": "K-100"}, "EffectiveDate": "2025-01-14", "Status": "Draft"}
        await upsert(conn, "orders", order, key="000000311")

    with_conn(org, action, external_id_fields=ids)
    assert org.writes()[0]["path"].endswith("/sobjects/Account/ERP_Customer_Number__c/K-100")
    stored = org.find("Order", "OrderNumber__c", "000000311")
    assert stored is not None and stored["AccountId"] == org.records("Account")[0]["Id"]


def test_an_external_id_with_a_slash_goes_through_sobject_collections(org: FakeSalesforce) -> None:
    receipt = with_conn(org, lambda conn: upsert(conn, "accounts", {"Name": "Slash"}, key="A/1"))
    stored = org.find("Account", "Seamline_Id__c", "A/1")
    assert stored is not None and receipt == f"Account {stored['Id']}"
    assert org.writes()[0]["via"] == "composite/sobjects"


def test_create_update_and_delete_modes(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> list[str]:
        async def write(mode: str, record: dict[str, Any]) -> str:
            return await conn.write("accounts", record, key="A-1", mode=mode, idempotency_key="k")

        created = await write("create", {"Name": "Acme"})
        with pytest.raises(TerminalError, match="DUPLICATE_VALUE"):
            await write("create", {"Name": "Acme again"})
        updated = await write("update", {"Name": "Acme 2"})
        deleted = await write("delete", {})
        again = await write("delete", {})
        with pytest.raises(TerminalError, match=r"404: NOT_FOUND"):
            await write("update", {"Name": "gone"})
        return [created, updated, deleted, again]

    created, updated, deleted, again = with_conn(org, action)
    assert created == updated and created.startswith("Account 001")
    assert deleted == "Account Seamline_Id__c=A-1 deleted" and again == "Account Seamline_Id__c=A-1 already absent"
    assert org.records("Account") == []
    assert [w["method"] for w in org.writes()] == ["POST", "POST", "PATCH", "DELETE", "PATCH"]


def test_an_external_id_field_the_org_lacks_is_named(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> None:
        for mode in ("upsert", "delete"):
            with pytest.raises(TerminalError) as caught:
                await conn.write("accounts", {"Name": "A"}, key="A-1", mode=mode, idempotency_key="k")
            assert "does not exist or is not accessible: Legacy_Id__c" in str(caught.value)
            assert "set external_id_field" in str(caught.value)

    with_conn(org, action, external_id_field="Legacy_Id__c")


def test_update_mode_needs_v61(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> str:
        return await conn.write("accounts", {"Name": "A"}, key="A-1", mode="update", idempotency_key="k")

    with pytest.raises(TerminalError, match=r"v61\.0"):
        with_conn(org, action, api_version="v60.0")


def test_check_refuses_unknown_entities_and_non_objects(org: FakeSalesforce) -> None:
    conn = connection(org)
    with pytest.raises(TerminalError, match="did you mean 'accounts'"):
        conn.check("acounts", {})
    with pytest.raises(TerminalError, match="JSON object"):
        conn.check("contacts", ["not", "a", "record"])
    conn.check("orders", {"Status": "Draft"})
    run(conn.close())


# -- error translation -----------------------------------------------------------------------------


def test_a_refused_record_is_terminal_quoting_code_message_and_fields(org: FakeSalesforce) -> None:
    error = raises(org, lambda conn: upsert(conn, "contacts", {"FirstName": "Ada"}, key="C-1"), TerminalError)
    assert error.status == 400
    text = str(error)
    assert text.startswith("crm: upsert Contact Seamline_Id__c=C-1 -> 400: ")
    assert "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName] (fields: LastName)" in text


def test_an_unknown_field_is_terminal(org: FakeSalesforce) -> None:
    error = raises(
        org, lambda conn: upsert(conn, "accounts", {"Name": "A", "Colour__c": "red"}, key="A-1"), TerminalError
    )
    assert "INVALID_FIELD: No such column 'Colour__c' on sobject of type Account" in str(error)


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [
        (503, None, "7"),
        (500, None, None),
        (403, "REQUEST_LIMIT_EXCEEDED", None),
        (400, "UNABLE_TO_LOCK_ROW", None),
        (429, None, "3"),
    ],
)
def test_a_busy_org_is_transient(org: FakeSalesforce, status: int, code: str | None, retry_after: str | None) -> None:
    async def action(conn: SalesforceConnection) -> str:
        await session_token(conn)  # the session exists; the failure lands on the write
        org.fail_next(1, status=status, error_code=code, retry_after=retry_after)
        with pytest.raises(TransientError) as caught:
            await upsert(conn, "accounts", {"Name": "A"}, key="A-1")
        assert caught.value.status == status
        assert caught.value.retry_after == (float(retry_after) if retry_after else None)
        if code == "REQUEST_LIMIT_EXCEEDED":
            assert "API allowance" in str(caught.value) and "api-usage=" in str(caught.value)
        return await upsert(conn, "accounts", {"Name": "A"}, key="A-1")  # then it goes through

    assert with_conn(org, action).startswith("Account ")


def test_several_matches_are_terminal(org: FakeSalesforce) -> None:
    org.seed("Account", [{"Name": "A", "Seamline_Id__c": "DUP"}, {"Name": "B", "Seamline_Id__c": "DUP"}])
    error = raises(org, lambda conn: upsert(conn, "accounts", {"Name": "C"}, key="DUP"), TerminalError)
    assert error.status == 300 and "several records" in str(error)


def test_an_unreachable_org_is_transient(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> None:
        await upsert(conn, "accounts", {"Name": "A"}, key="A-1")
        org.stop()
        with pytest.raises(TransientError, match=r"could not connect|dropped"):
            await upsert(conn, "accounts", {"Name": "B"}, key="A-1")
        org.start()
        await upsert(conn, "accounts", {"Name": "B"}, key="A-1")

    with_conn(org, action)
    assert org.records("Account")[0]["Name"] == "B"


def test_a_dropped_connection_and_a_slow_org_are_transient(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> None:
        await session_token(conn)
        org.drop_next(1)
        with pytest.raises(TransientError):
            await upsert(conn, "accounts", {"Name": "A"}, key="A-1")
        org.configure(latency=1.5)
        with pytest.raises(TransientError, match=r"no answer within 0\.2s"):
            await upsert(conn, "accounts", {"Name": "A"}, key="A-1")
        org.configure(latency=0)

    with_conn(org, action, limits={"timeout": "200ms"})


def test_library_errors_never_escape(org: FakeSalesforce) -> None:
    error = raises(org, lambda conn: upsert(conn, "accounts", {"Name": object()}, key="A-1"), TerminalError)
    assert "not JSON" in str(error)


# -- the session token -------------------------------------------------------------------------------


def test_the_token_is_fetched_once_and_shared(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> None:
        await asyncio.gather(*(upsert(conn, "accounts", {"Name": f"A{n}"}, key=f"A-{n}") for n in range(6)))

    with_conn(org, action)
    assert org.token_requests() == 1


def test_an_expired_session_is_renewed_once(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> str:
        await upsert(conn, "accounts", {"Name": "A"}, key="A-1")
        org.expire_tokens()
        return await upsert(conn, "accounts", {"Name": "B"}, key="A-1")

    assert with_conn(org, action).startswith("Account ")
    assert org.token_requests() == 2
    assert [r["status"] for r in org.requests() if r["method"] == "PATCH"] == [201, 401, 200]


def test_a_401_after_a_fresh_token_is_a_clear_terminal_error(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> None:
        await session_token(conn)
        org.fail_next(2, status=401, only="/services/data/")
        await upsert(conn, "accounts", {"Name": "A"}, key="A-1")

    error = raises(org, action, TerminalError)
    assert error.status == 401
    assert "401 even with a freshly fetched token" in str(error) and "INVALID_SESSION_ID" in str(error)
    assert org.token_requests() == 2  # the first one, and exactly one refresh


def test_bad_client_credentials_are_terminal(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> str:
        return await upsert(conn, "accounts", {"Name": "A"}, key="A-1")

    with pytest.raises(TerminalError) as caught:
        with_conn(org, action, auth={"client_secret": "wrong-secret-value"})
    assert "invalid_client: invalid client credentials" in str(caught.value)
    assert "check client_id and client_secret" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)


def test_a_busy_token_endpoint_is_transient(org: FakeSalesforce) -> None:
    org.fail_next(1, status=503, only="/services/oauth2/")
    error = raises(org, lambda conn: upsert(conn, "accounts", {"Name": "A"}, key="A-1"), TransientError)
    assert "token request" in str(error)


def test_an_instance_url_elsewhere_is_named(org: FakeSalesforce) -> None:
    url = org.url.replace("127.0.0.1", "localhost")

    async def action(conn: SalesforceConnection) -> str:
        return await upsert(conn, "accounts", {"Name": "A"}, key="A-1")

    with pytest.raises(TerminalError) as caught:
        with_conn(org, action, url=url)
    assert f"set url to {org.url}" in str(caught.value)
    assert org.records("Account") == []


def test_secrets_never_appear_in_errors_or_logs(org: FakeSalesforce, caplog: pytest.LogCaptureFixture) -> None:
    masked: list[str] = []

    async def scenario() -> list[str]:
        texts: list[str] = []
        async with connection(org, masked=masked) as conn:
            await upsert(conn, "accounts", {"Name": "A"}, key="A-1")
            (token,) = org.issued_tokens()
            for leak in (token, SECRET):
                org.fail_next(1, status=400, error_code="FIELD_CUSTOM_VALIDATION_EXCEPTION", message=f"echo {leak}")
                with pytest.raises(TerminalError) as caught:
                    await upsert(conn, "accounts", {"Name": "B"}, key="A-1")
                texts.append(str(caught.value))
            org.fail_next(1, status=503, message=f"busy {token}")
            with pytest.raises(TransientError) as transient:
                await upsert(conn, "accounts", {"Name": "B"}, key="A-1")
            texts.append(str(transient.value))
            return [*texts, token]

    with caplog.at_level(logging.DEBUG, logger="seamline.connectors.salesforce"):
        *texts, token = run(scenario())
    assert SECRET in masked and token in masked  # registered with the runtime's masker
    for text in texts:
        assert token not in text and SECRET not in text and "***" in text
    assert token not in caplog.text and SECRET not in caplog.text


# -- reads -----------------------------------------------------------------------------------------


def stamp(hours: float) -> str:
    moment = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=hours)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def seed_accounts(org: FakeSalesforce, count: int) -> None:
    org.seed(
        "Account",
        [{"Name": f"Account {n}", "Seamline_Id__c": f"A-{n}", "SystemModstamp": stamp(n)} for n in range(1, count + 1)],
    )


def test_read_pages_through_next_records_url(org: FakeSalesforce) -> None:
    seed_accounts(org, 7)
    org.configure(max_batch_size=3)
    pages = with_conn(org, lambda conn: read_all(conn, "accounts", cursor_field="SystemModstamp", page_size=100))
    assert [len(p) for p in pages] == [3, 3, 1]
    records = [r for page in pages for r in page]
    assert [r["Name"] for r in records] == [f"Account {n}" for n in range(1, 8)]
    assert "attributes" not in records[0] and {"Id", "Seamline_Id__c", "SystemModstamp", "Name"} <= set(records[0])
    query = next(r for r in org.requests() if r["path"].endswith("/query"))
    assert query["status"] == 200


def test_read_starts_at_the_cursor_and_advances_with_it(org: FakeSalesforce) -> None:
    seed_accounts(org, 5)

    def read_since(since: str) -> list[str]:
        pages = with_conn(org, lambda conn: read_all(conn, "accounts", since=since, cursor_field="SystemModstamp"))
        return [r["Name"] for page in pages for r in page]

    assert read_since(stamp(3)) == ["Account 3", "Account 4", "Account 5"]  # as Salesforce returns it (+0000)
    assert read_since("2025-01-01T03:30:00.250+01:00") == ["Account 3", "Account 4", "Account 5"]  # 02:30 UTC
    last = max(r["SystemModstamp"] for r in org.records("Account"))
    assert read_since(shift_cursor(last, 60)) == ["Account 5"]  # the runtime's overlap window
    with_conn(org, lambda conn: upsert(conn, "accounts", {"Name": "Account 2 renamed"}, key="A-2"))
    assert read_since(shift_cursor(last, 0)) == ["Account 5", "Account 2 renamed"]


def test_read_contacts_brings_their_accounts_external_id(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> list[list[Any]]:
        await upsert(conn, "accounts", {"Name": "Acme"}, key="A-1")
        await upsert(conn, "contacts", {"LastName": "Lovelace", "Account": {"Seamline_Id__c": "A-1"}}, key="C-1")
        await upsert(conn, "contacts", {"LastName": "Byron", "Email": "b@example.com"}, key="C-2")
        return await read_all(conn, "contacts", filter={"where": "LastName LIKE 'Love%'"})

    (page,) = with_conn(org, action)
    assert len(page) == 1
    assert page[0]["Account"] == {"Seamline_Id__c": "A-1"} and page[0]["Seamline_Id__c"] == "C-1"


def test_read_filters_and_chosen_fields(org: FakeSalesforce) -> None:
    seed_accounts(org, 4)
    fields = {"accounts": ["Name"]}
    pages = with_conn(
        org, lambda conn: read_all(conn, "accounts", filter={"Seamline_Id__c": ["A-1", "A-3"]}), fields=fields
    )
    assert [sorted(r) for r in pages[0]] == [["Id", "Name", "SystemModstamp"]] * 2
    assert [r["Name"] for r in pages[0]] == ["Account 1", "Account 3"]
    quoted = with_conn(org, lambda conn: read_all(conn, "accounts", filter={"Name": "O'Brien"}))
    assert quoted == []


@pytest.mark.parametrize(
    ("entity", "kwargs", "fragment"),
    [
        ("orders", {}, "cannot read 'orders'"),
        ("accounts", {"cursor_field": "Modstamp; DROP"}, "not a Salesforce field name"),
        ("accounts", {"since": "yesterday"}, "not a date or time"),
        ("accounts", {"filter": {"where": "Colour__c = 'red'"}}, "INVALID_FIELD"),
    ],
)
def test_bad_reads_are_terminal(org: FakeSalesforce, entity: str, kwargs: dict[str, Any], fragment: str) -> None:
    error = raises(org, lambda conn: read_all(conn, entity, **kwargs), TerminalError)
    assert fragment in str(error)


def test_an_expired_query_locator_is_transient(org: FakeSalesforce) -> None:
    seed_accounts(org, 5)
    org.configure(max_batch_size=2)

    async def action(conn: SalesforceConnection) -> None:
        pages = conn.read("accounts", since=None, cursor_field=None, page_size=200, filter=None)
        assert len(await anext(pages)) == 2
        org.expire_query_locators()
        with pytest.raises(TransientError, match="INVALID_QUERY_LOCATOR"):
            await anext(pages)

    with_conn(org, action)


def test_soql_literals() -> None:
    assert soql_literal("O'Brien\\x\n") == "'O\\'Brien\\\\x\\n'"
    assert soql_literal(None) == "null" and soql_literal(True) == "true" and soql_literal(2.5) == "2.5"
    assert soql_datetime("2025-01-01T10:00:00.999+0000") == "2025-01-01T10:00:00Z"
    assert soql_datetime("2025-01-01T10:00:00-02:00") == "2025-01-01T12:00:00Z"
    assert soql_datetime("2025-01-01") == "2025-01-01T00:00:00Z"


# -- composite batching ------------------------------------------------------------------------------


def test_concurrent_upserts_share_one_collections_request(org: FakeSalesforce) -> None:
    composite = {"max_records": 10, "linger": "200ms"}

    async def action(conn: SalesforceConnection) -> list[Any]:
        writes = [upsert(conn, "accounts", {"Name": f"Account {n}"}, key=f"A-{n}") for n in range(8)]
        writes.append(upsert(conn, "accounts", {"Type": "no name"}, key="A-bad"))
        return await asyncio.gather(*writes, return_exceptions=True)

    results = with_conn(org, action, composite=composite)
    *good, bad = results
    ids = {r["Seamline_Id__c"]: r["Id"] for r in org.records("Account")}
    assert good == [f"Account {ids[f'A-{n}']}" for n in range(8)]
    assert isinstance(bad, TerminalError) and "REQUIRED_FIELD_MISSING" in str(bad) and "A-bad" in str(bad)
    api = [r for r in org.requests() if r["path"].startswith("/services/data/")]
    assert len(api) == 1 and api[0]["path"].endswith("/composite/sobjects/Account/Seamline_Id__c")


def test_a_full_batch_leaves_at_once_and_one_key_keeps_its_order(org: FakeSalesforce) -> None:
    composite = {"max_records": 2, "linger": "5s"}  # only full batches leave before the linger

    async def action(conn: SalesforceConnection) -> list[str]:
        return list(
            await asyncio.gather(
                upsert(conn, "accounts", {"Name": "first"}, key="A-1"),
                upsert(conn, "accounts", {"Name": "second"}, key="A-1"),
                upsert(conn, "accounts", {"Name": "other"}, key="A-2"),
                upsert(conn, "accounts", {"Name": "third"}, key="A-3"),
            )
        )

    receipts = with_conn(org, action, composite=composite)
    assert receipts[0] == receipts[1]
    assert org.find("Account", "Seamline_Id__c", "A-1")["Name"] == "second"  # type: ignore[index]
    assert [w["external_id"] for w in org.writes()] == ["A-1", "A-2", "A-3", "A-1"]  # "second" waited for "first"


def test_a_failed_batch_fails_each_of_its_writes(org: FakeSalesforce) -> None:
    async def action(conn: SalesforceConnection) -> list[Any]:
        await session_token(conn)
        org.fail_next(1, status=503, retry_after="4", only="/services/data/")
        writes = [upsert(conn, "accounts", {"Name": f"A{n}"}, key=f"A-{n}") for n in range(3)]
        return await asyncio.gather(*writes, return_exceptions=True)

    results = with_conn(org, action, composite={"max_records": 3, "linger": "5s"})
    assert all(isinstance(r, TransientError) and r.retry_after == 4.0 for r in results)
    assert len({id(r) for r in results}) == 3  # each write gets its own exception
    assert org.records("Account") == []


def test_closing_fails_writes_still_waiting_for_their_batch(org: FakeSalesforce) -> None:
    async def scenario() -> None:
        conn = connection(org, composite={"max_records": 50, "linger": "30s"})
        waiting = asyncio.ensure_future(upsert(conn, "accounts", {"Name": "A"}, key="A-1"))
        while not conn._batches:
            await asyncio.sleep(0.01)
        await conn.close()
        with pytest.raises(TransientError, match="closed before"):
            await waiting

    run(scenario())
    assert org.writes() == []


# -- through the runtime ---------------------------------------------------------------------------

RUNTIME_SPEC = """\
seamline: 1
client: sftest
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    endpoints:
      customers: { path: /customers, pagination: { style: page, page_size: 2 } }
  crm:
    connector: salesforce
    url: "{{ env.SF_URL }}"
    auth:
      token_url: "{{ env.SF_URL }}/services/oauth2/token"
      client_id: crm-app
      client_secret: "{{ secret.SF_SECRET }}"
    external_id_fields: { accounts: ERP_Customer_Number__c }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      contacts: { path: "/contacts/{email}", method: PUT }
flows:
  accounts-to-crm:
    trigger: { schedule: "0 3 * * *" }
    source: { system: erp, read: customers, cursor: changed, id: number }
    transform: '{ "ERP_Customer_Number__c": number, "Name": name }'
    target: { system: crm, write: accounts }
  contacts-from-crm:
    trigger: { schedule: "0 4 * * *" }
    source: { system: crm, read: contacts, cursor: SystemModstamp, id: Id }
    transform: '{ "email": Email, "account": Account.ERP_Customer_Number__c }'
    target: { system: shop, write: contacts, key: email }
"""


def test_run_once_writes_accounts_and_reads_contacts_through_the_runtime(org: FakeSalesforce, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from connectors.http.fake import FakeHttpServer
    from engine.cli import main

    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        erp.seed("/customers", [{"id": n, "number": f"K-{n}", "name": f"Customer {n}", "changed": n} for n in range(5)])
        account = org.seed("Account", [{"Name": "Seeded", "ERP_Customer_Number__c": "K-9"}])[0]
        org.seed("Contact", [{"LastName": "Lovelace", "Email": "ada@example.com", "AccountId": account}])
        (tmp_path / "seamline.yaml").write_text(RUNTIME_SPEC, encoding="utf-8")
        env = {"ERP_URL": erp.url, "SHOP_URL": shop.url, "SF_URL": org.url, "SF_SECRET": SECRET}
        state = f"sqlite:///{tmp_path / 'state.db'}"
        result = CliRunner().invoke(main, ["run", str(tmp_path), "--once", "--state", state], env=env)
        assert result.exit_code == 0, result.output
        numbers = sorted(r["ERP_Customer_Number__c"] for r in org.records("Account"))
        assert numbers == [*(f"K-{n}" for n in range(5)), "K-9"]
        assert shop.resource("/contacts/ada@example.com") == {"email": "ada@example.com", "account": "K-9"}
        again = CliRunner().invoke(main, ["run", str(tmp_path), "--once", "--state", state], env=env)
        assert again.exit_code == 0, again.output
        assert org.applied_count("Account") == 5, again.output  # the second pass delivered nothing twice
        assert SECRET not in result.output + again.output
