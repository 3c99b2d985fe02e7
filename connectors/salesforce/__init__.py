"""Salesforce REST sObjects: upsert by external id, composite requests."""

from __future__ import annotations

from pydantic import Field

from engine.connector import ConnectorKind, OAuth2ClientCredentials, SystemOptions, Url

__all__ = ["CONNECTOR", "SalesforceOptions"]


class SalesforceOptions(SystemOptions):
    url: Url = Field(description="Instance URL, e.g. https://acme.my.salesforce.com.")
    api_version: str = Field("v62.0", pattern=r"^v\d+\.\d$")
    auth: OAuth2ClientCredentials
    external_id_field: str = Field(
        "Seamline_Id__c", description="Custom field upserts match on (PATCH /sobjects/{Object}/{field}/{id})."
    )


CONNECTOR = ConnectorKind(
    name="salesforce",
    options=SalesforceOptions,
    description="Salesforce CRM: Account, Contact, Opportunity, Order",
    reads=frozenset({"accounts", "contacts"}),
    writes=frozenset({"accounts", "contacts", "opportunities", "orders"}),
)
