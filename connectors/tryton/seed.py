"""Seed a fresh Tryton 8.0 database (run by :mod:`connectors.tryton.devserver`, never imported).

NOT IMPORTED BY SEAMLINE. This file ships in the package only so that it can be *executed* as a
script by the Python of Tryton's own virtualenv (``<venv>/bin/python -P .../connectors/tryton/seed.py``):
it imports proteus and the scenario helpers shipped in the modules' wheels, which are GPL and are
not installed beside seamline. The database must already have the ``sale`` and ``stock`` modules
activated. Environment: ``TRYTOND_CONFIG`` (the config file) and ``DB_NAME``, ``API_LOGIN``,
``API_PASSWORD``. It prints one JSON object with what it created. Its content is part of the cache
key of the seeded template: editing it rebuilds the template once.

What it creates, and why each piece is needed by a sale over JSON-RPC:

* company "Seamline Demo Co" in USD, the minimal English chart of accounts and a fiscal year with
  periods and invoice sequences (``confirm`` creates a draft invoice, which needs them);
* a "Direct" payment term and an accounting product category (a product without one cannot be
  confirmed on a sale: its revenue account comes from the category);
* the country US, products with stock in the warehouse ``WH`` (an inventory on ``STO``): salable
  goods, one goods product that is not salable, one inactive (discontinued) product and a service;
* two customer parties with an address and an email (one with an EU VAT identifier);
* the API user the connector logs in as, in the groups sales, stock, parties, products, accounting.
"""

from __future__ import annotations

import datetime
import json
import os
from decimal import Decimal

# Tryton's packages exist only in Tryton's virtualenv, never beside seamline (nor for mypy)
from proteus import Model, config  # type: ignore[import-not-found]
from trytond.modules.account.tests.tools import (  # type: ignore[import-not-found]
    create_chart,
    create_fiscalyear,
    get_accounts,
)
from trytond.modules.account_invoice.tests.tools import (  # type: ignore[import-not-found]
    create_payment_term,
    set_fiscalyear_invoice_sequences,
)
from trytond.modules.company.tests.tools import create_company  # type: ignore[import-not-found]

PRODUCTS = [
    # code, name, list price, type, salable, active, stock in WH
    ("WIDGET-1", "Blue widget", "10.00", "goods", True, True, 100),
    ("WIDGET-2", "Red widget", "25.50", "goods", True, True, 40),
    ("GADGET-1", "Gadget", "99.00", "goods", True, True, 5),
    ("NOSALE-1", "Internal spare part", "3.00", "goods", False, True, 10),
    ("OLD-1", "Old widget", "7.00", "goods", True, False, 0),
    ("SERVICE-1", "Installation", "50.00", "service", True, True, 0),
]

PARTIES = [
    # name, email, VAT, street, postal code, city
    ("Alice Buyer", "alice@example.com", None, "1 Main Street", "10001", "New York"),
    ("Bob Trader", "bob@example.com", "BE0403019261", "2 Market Square", "94105", "San Francisco"),
]

API_GROUPS = [
    ("sale", "group_sale"),
    ("sale", "group_sale_admin"),
    ("stock", "group_stock"),
    ("party", "group_party_admin"),
    ("product", "group_product_admin"),
    ("account", "group_account"),
    ("account_product", "group_account_product_admin"),
]


def main() -> None:
    config.set_trytond(database=os.environ["DB_NAME"])
    created: dict[str, object] = {}

    Party = Model.get("party.party")
    company_party = Party(name="Seamline Demo Co")
    company_party.save()
    create_company(party=company_party, currency="USD")
    create_chart()
    fiscalyear = set_fiscalyear_invoice_sequences(create_fiscalyear())
    fiscalyear.click("create_period")
    payment_term = create_payment_term()
    payment_term.save()
    accounts = get_accounts()

    category = Model.get("product.category")(name="Goods")
    category.accounting = True
    category.account_revenue = accounts["revenue"]
    category.account_expense = accounts["expense"]
    category.save()

    country = Model.get("country.country")(name="United States", code="US")
    country.save()

    Location = Model.get("stock.location")
    (storage,) = Location.find([("code", "=", "STO")])
    (warehouse,) = Location.find([("code", "=", "WH")])
    (unit,) = Model.get("product.uom").find([("name", "=", "Unit")])
    Template = Model.get("product.template")
    inventory = Model.get("stock.inventory")(location=storage)
    products = {}
    for code, name, price, kind, salable, active, stock in PRODUCTS:
        # the variant's code (the SKU) is the template's code plus the variant's suffix: one variant, no suffix
        template = Template(name=name, code=code, type=kind, default_uom=unit, list_price=Decimal(price))
        template.salable = salable
        template.account_category = category
        if salable:
            template.sale_uom = unit
        template.save()
        (variant,) = template.products
        products[code] = variant.id
        if stock:
            line = inventory.lines.new(product=variant)
            line.quantity = float(stock)
            line.expected_quantity = 0.0
        if not active:
            template.active = False
            template.save()
    inventory.click("confirm")
    created["products"] = products

    parties = {}
    for name, email, vat, street, postal_code, city in PARTIES:
        party = Party(name=name)
        address = party.addresses[0] if party.addresses else party.addresses.new()
        address.street = street
        address.postal_code = postal_code
        address.city = city
        address.country = country
        party.contact_mechanisms.new(type="email", value=email)
        if vat:
            party.identifiers.new(type="eu_vat", code=vat)
        party.save()
        parties[email] = party.id
    created["parties"] = parties

    ModelData = Model.get("ir.model.data")
    Group = Model.get("res.group")
    User = Model.get("res.user")
    company = Model.get("company.company").find()[0]
    user = User(name="Seamline API", login=os.environ["API_LOGIN"], password=os.environ["API_PASSWORD"])
    for module, fs_id in API_GROUPS:
        user.groups.append(Group(ModelData.get_id(module, fs_id, {})))
    user.companies.append(company)
    user.company = company
    user.save()

    created.update(
        company=company.id,
        currency="USD",
        warehouse={"id": warehouse.id, "code": "WH"},
        storage={"id": storage.id, "code": "STO"},
        customer_location=Location.find([("code", "=", "CUS")])[0].id,
        payment_term=payment_term.id,
        account_category=category.id,
        api_user=user.id,
        seeded_at=datetime.datetime.now(datetime.UTC).isoformat(),
    )
    print(json.dumps(created))


if __name__ == "__main__":
    main()
