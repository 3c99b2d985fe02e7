"""Tryton ERP (8.0 LTS) over JSON-RPC with session auth.

Runnable: :mod:`connectors.tryton.client` implements the connection (opened lazily: validating a
spec never imports httpx). Tryton is GPL and runs as its own server process; seamline only speaks
its JSON-RPC protocol over HTTP and never imports ``trytond``.

What a flow can name on a Tryton system, and the record shapes (money and quantities are JSON
numbers, dates ``YYYY-MM-DD``, times ISO 8601 in UTC with a ``Z``):

* ``read:`` ``products``, ``prices``, ``stock``, ``parties``, ``sales``, ``shipments``, ``invoices``.
  Use ``cursor: write_date``: every record carries ``write_date``, the time of its latest change
  (Tryton leaves ``write_date`` empty on a record never modified, so its creation time counts then;
  a product's template, a party's addresses, contact mechanisms and identifiers, a sale's lines and,
  for ``stock``, the product's stock moves count as changes too). Records come oldest change first.
  Deactivated products and parties are read too (``active: false``; a product also says
  ``discontinued: true``). ``source.filter`` adds Tryton domain clauses on the entity's model:
  ``{field: value}`` is ``=``, ``{field: [a, b]}`` is ``in``, ``{field: {operator: value}}`` names the
  operator, ``{domain: [...]}`` is a raw Tryton domain.
* ``write:`` ``parties`` (matched by ``vat``, else by ``email``; created, or completed with what is
  missing, so writing the same record twice leaves one party), ``sales`` (a quotation with lines
  by product code, then Tryton's ``quote`` and ``confirm``; idempotent by ``reference``, the shop's
  order number), ``products`` (matched by ``code``; name, list price and active state kept in step).
* ``call:`` ``price`` (the party's sale price for a product and quantity, as Tryton computes it for
  a sale line, price lists included), ``stock`` (quantities per warehouse), ``party`` (a party by
  ``vat``, ``email`` or ``code``; ``null`` when there is none).

Records a transform writes (fields not listed are ignored)::

    parties   {name, email?, vat?, phone?, address?: {name?, street, postal_code, city, country (ISO code)}}
              (email or vat is required: it is what a party is matched by)
    sales     {reference, party: <a parties record> or "<an existing party's code>",
               lines: [{code, quantity, unit_price?, description?}], currency?, sale_date?, description?,
               comment?, shipment_address?, invoice_address?}
              (no unit_price: Tryton's sale price for the party; no addresses: the party's own)
    products  {code, name (to create), list_price?, active?, salable?, type?, unit?, account_category?}

Records read, each with ``write_date``::

    products   {id, code, name, description, type, salable, active, discontinued, list_price, currency, unit}
    prices     {id, code, list_price, currency, active}
    stock      {product_id, code, warehouse, quantity, forecast_quantity}     (one per product and warehouse)
    parties    {id, code, name, active, email, emails, phone, phones, vat, identifiers, addresses}
    sales      {id, number, reference, state, shipment_state, invoice_state, sale_date, description, party,
                currency, untaxed_amount, tax_amount, total_amount, lines, shipments, invoices}
    shipments  {id, number, state, reference (the sale's), planned_date, effective_date, customer, warehouse,
                sales, lines}
    invoices   {id, number, state, type, invoice_date, reference, party, currency, untaxed_amount, tax_amount,
                total_amount, amount_to_pay, sales}

Calls: ``price`` takes ``{code or codes, quantity?, party?: {vat or email} or a party code, currency?}``
and answers ``{code, quantity, unit_price, currency, party_found}`` (a list for ``codes``); ``stock``
takes ``{code or codes}``; ``party`` takes ``{vat, email or code}``.

No write is once-only (``once_only`` is empty): each is matched by its business key before anything is
created, so sending it again finds what the first attempt made. Every JSON-RPC call is a transaction of
its own: a sale created by an attempt that died (or timed out) right after is found by its reference
and taken up, or left as it is once confirmed; a create still running when the next attempt looked can
leave two sales of one reference, and the next write keeps one (the confirmed one, else the oldest open
one) and cancels the other open ones, so an order never becomes two confirmed sales (parties and
products have no such clean-up: that race can make a second one, matched from then on by the oldest).
A check before the resend would ask Tryton exactly what the write itself asks first, so there is none. ``exists`` (for a
target's create-only fields) asks for parties and products by what a write matches them by.

Tryton on SQLite serves one writer at a time; against such a server set ``limits.concurrency: 1``
(two parties created at once can draw the same party code there). On PostgreSQL there is no limit.

Errors: Tryton's own refusals (``UserError``, ``UserWarning``, an unknown record) are a
``TerminalError`` quoting Tryton's message; connection refused, timeouts, 5xx, a locked database or
a concurrent edit are a ``TransientError``. An expired session is renewed once, transparently.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from engine.connector import ConnectorKind, SessionAuth, SystemOptions, Url
from engine.kit.http.options import WireOptions

__all__ = ["CONNECTOR", "TrytonOptions"]


class TrytonAuth(BaseModel):
    """How seamline logs in: a Tryton user and its password (JSON-RPC ``common.db.login``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    session: SessionAuth


class TrytonOptions(SystemOptions, WireOptions):
    url: Url = Field(description="Server URL without the database, e.g. http://127.0.0.1:8000.")
    database: str = Field(description="Database name; the API lives at <url>/<database>/rpc/.")
    auth: TrytonAuth
    warehouse: str | None = Field(
        None,
        description="Warehouse location code (e.g. WH) that sales ship from and stock is read for; "
        "when left out, stock is read for every warehouse and sales need the database to have exactly one.",
        examples=["WH"],
    )
    payment_term: str | None = Field(
        None,
        description="Name of the payment term for new sales when the party has no customer payment term; "
        "when left out, the first payment term Tryton lists.",
    )
    vat_type: str = Field(
        "eu_vat",
        description="Tryton identifier type that a party's `vat` is stored as (and read back from).",
        examples=["eu_vat", "us_ein"],
    )
    product_category: str | None = Field(
        None,
        description="Name of the accounting product category new products get (it carries the revenue "
        "account a sale needs); when left out, the only accounting category, if there is exactly one.",
    )
    language: str = Field("en", description="Language code of the session (Tryton's messages come in it).")


CONNECTOR = ConnectorKind(
    name="tryton",
    options=TrytonOptions,
    description="Tryton ERP: products, stock, parties, sales, shipments, invoices",
    connection="connectors.tryton.client:TrytonConnection",
)
