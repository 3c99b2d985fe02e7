"""Salesforce REST sObjects: upsert by external id, SOQL reads, composite requests.

Runnable: :mod:`connectors.salesforce.client` implements the connection (opened lazily, so validating
a spec never imports httpx), and :mod:`connectors.salesforce.fake` is a real HTTP server that behaves
like an org for tests and demos.

Entities map to sObjects: ``accounts`` Account, ``contacts`` Contact, ``opportunities`` Opportunity,
``orders`` Order. A write sends ``PATCH /services/data/<api_version>/sobjects/<Object>/<field>/<value>``
where ``field`` is the entity's external id field (``external_id_fields``, else ``external_id_field``)
and ``value`` is the flow target's ``key`` (else the record's own value of that field). The record is
the body, without the external id field; a reference may name its record by external id, as
Salesforce allows (``"Account": {"Seamline_Id__c": "A-1"}`` on a Contact). ``mode: create`` posts the
record instead, ``update`` adds ``updateOnly=true`` (v61.0+), ``delete`` deletes by external id.

A read runs ``SELECT <fields> FROM <Object> WHERE <cursor> >= <since> ORDER BY <cursor>, Id`` and
follows ``nextRecordsUrl``; the cursor is the flow source's ``cursor`` (``SystemModstamp`` when it
names none). ``filter`` entries add ``field = value`` (a list: ``IN``), and ``filter.where`` adds a raw
SOQL condition.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from engine.connector import ConnectorKind, Duration, OAuth2ClientCredentials, SystemOptions, Url
from engine.kit.http.options import WireOptions

__all__ = ["CONNECTOR", "SalesforceOptions"]

# The option keys per entity (external_id_fields, fields) are checked against these when a spec is validated,
# without importing the client; a test holds them to the connection's READS and WRITES, where they are declared.
WriteEntity = Literal["accounts", "contacts", "opportunities", "orders"]
ReadEntity = Literal["accounts", "contacts"]
SOBJECTS: dict[str, str] = {
    "accounts": "Account",
    "contacts": "Contact",
    "opportunities": "Opportunity",
    "orders": "Order",
}
MIN_API_VERSION = 46.0  # upserts answer {id, created} and sObject Collections upsert exist from v46.0 on

_NAME = r"[A-Za-z][A-Za-z0-9_]*"
FieldName = Annotated[
    str,
    Field(pattern=rf"^{_NAME}$", description="An API field name.", examples=["Seamline_Id__c", "ERP_Number__c"]),
]
FieldPath = Annotated[
    str,
    Field(
        pattern=rf"^{_NAME}(\.{_NAME})?$",
        description="A field, or Relationship.Field one level up.",
        examples=["Email", "Account.Seamline_Id__c"],
    ),
]


def _check_version(text: str) -> str:
    match = re.fullmatch(r"v(\d+\.\d)", text)
    if match is None or float(match.group(1)) < MIN_API_VERSION:
        raise ValueError(
            f"'{text}' is not a usable API version; write it as vNN.N, v{MIN_API_VERSION} or later (e.g. v62.0)"
        )
    return text


class CompositeBatching(BaseModel):
    """Send concurrent upserts of one entity together, as one sObject Collections request (allOrNone false)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_records: int = Field(25, ge=2, le=200, description="Most records in one request (Salesforce allows 200).")
    linger: Duration = Field(
        "20ms", description="How long the first write of a batch waits for others before the batch is sent."
    )


class SalesforceOptions(SystemOptions, WireOptions):
    """A Salesforce org: where it is, how the connector logs in, which external ids writes match on."""

    url: Url = Field(description="Instance URL, e.g. https://acme.my.salesforce.com.")
    api_version: Annotated[str, AfterValidator(_check_version)] = Field(
        "v62.0", description="REST API version, v46.0 or later.", examples=["v62.0"]
    )
    auth: OAuth2ClientCredentials = Field(
        description="A connected app's client credentials; token_url is <url>/services/oauth2/token."
    )
    external_id_field: FieldName = Field(
        "Seamline_Id__c", description="Custom field upserts match on (PATCH /sobjects/{Object}/{field}/{id})."
    )
    external_id_fields: dict[WriteEntity, FieldName] = Field(
        default_factory=dict,
        description="The external id field of one entity, when it is not external_id_field.",
        examples=[{"accounts": "ERP_Customer_Number__c", "orders": "OrderNumber__c"}],
    )
    fields: dict[ReadEntity, list[FieldPath]] = Field(
        default_factory=dict,
        description="Fields a read selects, per entity; default: the standard fields of §C.6 and the external id. "
        "Id and the cursor field are always added.",
        examples=[{"contacts": ["Id", "Email", "LastName", "Account.Seamline_Id__c"]}],
    )
    composite: CompositeBatching | None = Field(
        None,
        description="Batch concurrent upserts into sObject Collections requests; off when left out. A batch "
        "fills only with writes in flight at once, so give the system limits.concurrency of about max_records.",
    )

    def external_id_for(self, entity: str) -> str:
        """The external id field writes of ``entity`` match on."""
        for name, field in self.external_id_fields.items():
            if name == entity:
                return field
        return self.external_id_field


CONNECTOR = ConnectorKind(
    name="salesforce",
    options=SalesforceOptions,
    description="Salesforce CRM: Account, Contact, Opportunity, Order",
    connection="connectors.salesforce.client:SalesforceConnection",
    fake="connectors.salesforce.fake:main",
)
