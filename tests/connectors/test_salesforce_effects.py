"""Salesforce writes are safe to send again, and ``exists`` asks the org by external id.

Real :class:`FakeSalesforce` over loopback, nothing of ours mocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from connectors.salesforce import CONNECTOR, SalesforceOptions
from connectors.salesforce.client import SalesforceConnection
from connectors.salesforce.fake import FakeSalesforce, SObjectField
from engine.connector import ConnectContext, EffectFinder, ExistenceChecker
from engine.errors import TerminalError, TransientError

T = TypeVar("T")
CLIENT, SECRET = "crm-app", "very-secret-client-value"


@pytest.fixture
def org() -> Iterator[FakeSalesforce]:
    extra = {"Account": [SObjectField("ERP_Customer_Number__c", "string", 20, external_id=True)]}
    with FakeSalesforce(port=0, clients={CLIENT: SECRET}, extra_fields=extra) as fake:
        yield fake


def connection(fake: FakeSalesforce, **extra: Any) -> SalesforceConnection:
    auth = {"token_url": fake.token_url, "client_id": CLIENT, "client_secret": SECRET}
    options = SalesforceOptions.model_validate(
        {"connector": "salesforce", "url": fake.url, "auth": auth, "limits": {"timeout": "5s"}, **extra}
    )
    return SalesforceConnection(options, ConnectContext(system="crm", client="acme"))


def with_conn(fake: FakeSalesforce, action: Callable[[SalesforceConnection], Awaitable[T]], **extra: Any) -> T:
    async def scenario() -> T:
        async with connection(fake, **extra) as conn:
            return await action(conn)

    return asyncio.run(scenario())


def exists(fake: FakeSalesforce, entity: str, record: dict[str, Any], key: Any = None, **extra: Any) -> bool | None:
    return with_conn(fake, lambda conn: conn.exists(entity, record, key=key), **extra)


def test_every_write_is_an_upsert_by_external_id_so_none_is_once_only() -> None:
    assert CONNECTOR.once_only == frozenset()
    assert not any(CONNECTOR.is_once_only(entity) for entity in CONNECTOR.operations("write"))


def test_the_connection_checks_existence_and_finds_no_effects(org: FakeSalesforce) -> None:
    conn = connection(org)
    assert isinstance(conn, ExistenceChecker)
    assert not isinstance(conn, EffectFinder)  # nothing once-only: nothing to find
    asyncio.run(conn.close())


def test_a_resent_upsert_leaves_one_record(org: FakeSalesforce) -> None:
    record = {"Seamline_Id__c": "C-1", "LastName": "Kaufmann", "Email": "eva@hydro-tech.de"}

    async def twice(conn: SalesforceConnection) -> list[str]:
        first = await conn.write("contacts", record, key="C-1", mode="upsert", idempotency_key="k")
        again = await conn.write("contacts", record, key="C-1", mode="upsert", idempotency_key="k")
        return [first, again]

    first, again = with_conn(org, twice)
    assert first == again
    assert len(org.records("Contact")) == 1
    assert org.applied_count("Contact") == 1  # the second set the values already there


def test_exists_by_the_entitys_external_id(org: FakeSalesforce) -> None:
    org.seed("Account", [{"Name": "Hydro-Tech GmbH", "ERP_Customer_Number__c": "100234"}])
    ids = {"external_id_fields": {"accounts": "ERP_Customer_Number__c"}}
    assert exists(org, "accounts", {"Name": "Hydro-Tech GmbH"}, key="100234", **ids) is True
    assert exists(org, "accounts", {"ERP_Customer_Number__c": "100234", "Name": "x"}, **ids) is True
    assert exists(org, "accounts", {"Name": "New GmbH"}, key="100999", **ids) is False
    asked = [r for r in org.requests() if r["method"] == "GET" and "/sobjects/" in r["path"]]
    assert asked[0]["path"].endswith("/sobjects/Account/ERP_Customer_Number__c/100234")


def test_exists_for_an_external_id_with_a_slash_asks_soql(org: FakeSalesforce) -> None:
    org.seed("Contact", [{"LastName": "Kaufmann", "Seamline_Id__c": "acme/C-1"}])
    assert exists(org, "contacts", {"LastName": "Kaufmann"}, key="acme/C-1") is True
    assert exists(org, "contacts", {"LastName": "Kaufmann"}, key="acme/C-2") is False
    queries = [r for r in org.requests() if r["path"].endswith("/query")]
    assert len(queries) == 2


def test_exists_with_a_wrong_external_id_field_says_so(org: FakeSalesforce) -> None:
    with pytest.raises(TerminalError, match="set external_id_field"):
        exists(org, "accounts", {"Name": "x"}, key="1", external_id_field="Nope__c")


def test_exists_without_an_external_id_value_is_terminal(org: FakeSalesforce) -> None:
    with pytest.raises(TerminalError, match="no usable external id value"):
        exists(org, "contacts", {"LastName": "Kaufmann"})


def test_a_busy_org_cannot_tell_now(org: FakeSalesforce) -> None:
    org.fail_next(1, status=503, only="/services/data/")
    with pytest.raises(TransientError):
        exists(org, "contacts", {"LastName": "Kaufmann"}, key="C-1")
