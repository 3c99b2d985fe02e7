"""How a read walks the pages of a collection: the styles REST APIs use, and Magento's searchCriteria.

::

    none        one request
    page        page_param=1,2,… and size_param, until an empty or short page, or the total
    offset      offset_param (records so far) and size_param, likewise
    next-link   follow the link at `next` (or the Link header's rel="next")
    cursor      send the token found at `next` back as cursor_param
    odata       $top/$skip windows; a server's own d.__next / @odata.nextLink is followed as is
    magento     searchCriteria[currentPage]/[pageSize] until an empty page or total_count

:func:`magento_criteria` builds Magento's ``searchCriteria`` query (filter groups, sort orders, page)
for every connector that talks to Magento's REST API; :func:`magento_condition` turns a source
``filter`` entry into one filter (``{field: value}`` eq, ``{field: [a, b]}`` in, ``{field: {cond: v}}``
that condition; booleans as 1 and 0, as Magento stores flags).

The walkers take a :class:`PageSource` (what fetches one page, finds its items and follows a link) and
raise a TerminalError when a server pages in circles (the same page, or the same next link, twice).
This module's :class:`Pagination` model is imported when a spec is validated: nothing heavy here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import TerminalError
from engine.kit.http.urls import dig, path_of, query_value

__all__ = [
    "MagentoFilter",
    "PageSource",
    "Pagination",
    "magento_condition",
    "magento_criteria",
    "magento_value",
    "read_params",
    "walk",
]

MagentoFilter = tuple[str, str, str]  # field, value, condition_type


class Pagination(BaseModel):
    """How a read walks through the pages of a collection."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    style: Literal["none", "page", "offset", "next-link", "cursor", "odata", "magento"] = Field(
        "none",
        description=(
            "none: one request; page: page_param=1,2,… and size_param; "
            "offset: offset_param (records so far) and size_param; "
            "next-link: follow the link at `next` (or the Link header); cursor: send the token found at `next` "
            "as cursor_param; odata: $top/$skip, following d.__next or @odata.nextLink; magento: "
            "searchCriteria[currentPage]/[pageSize] until an empty page or total_count."
        ),
    )
    page_size: int = Field(
        100, ge=1, le=10000, description="Records per page; when left out, the flow's source.page_size is used."
    )
    page_param: str = Field("page", description="Query parameter with the page number (page style).")
    size_param: str = Field("size", description="Query parameter with the page size (generic styles).")
    first_page: int = Field(1, ge=0, description="Number of the first page (page style).")
    offset_param: str = Field("offset", description="Query parameter with the offset (offset style).")
    cursor_param: str = Field("cursor", description="Query parameter that sends the cursor back (cursor style).")
    items: str = Field(
        "items",
        description="Where the records are in a response body (a dotted path); odata defaults to d.results or value.",
    )
    next: str | None = Field(
        None,
        description=(
            "Where the next link or cursor is, for next-link/cursor styles (a dotted path); "
            "default: 'next' or the Link header for next-link, 'next_cursor' for cursor."
        ),
    )


# -- Magento's searchCriteria ------------------------------------------------------------------------


def magento_value(value: Any) -> str:
    """A filter value as Magento compares it: booleans 1 and 0, lists comma-joined (for in, nin)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list | tuple):
        return ",".join(magento_value(v) for v in value)
    return str(value)


def magento_condition(field: str, value: Any) -> MagentoFilter:
    """A source ``filter`` entry as one searchCriteria filter."""
    if isinstance(value, dict) and len(value) == 1:
        ((condition, operand),) = value.items()
        return field, magento_value(operand), str(condition)
    if isinstance(value, list | tuple):
        return field, magento_value(value), "in"
    return field, magento_value(value), "eq"


def magento_criteria(
    filters: Iterable[MagentoFilter], sorts: Iterable[str], size: int | None = None, page: int | None = None
) -> list[tuple[str, str]]:
    """``searchCriteria`` query parameters: each filter its own group (the groups are ANDed), the sort
    orders ascending, then the page size and number when given."""
    params: list[tuple[str, str]] = []
    for group, (field, value, condition) in enumerate(filters):
        prefix = f"searchCriteria[filter_groups][{group}][filters][0]"
        params += [(f"{prefix}[field]", field), (f"{prefix}[value]", value), (f"{prefix}[condition_type]", condition)]
    for index, field in enumerate(sorts):
        params += [
            (f"searchCriteria[sortOrders][{index}][field]", field),
            (f"searchCriteria[sortOrders][{index}][direction]", "ASC"),
        ]
    if size is not None:
        params.append(("searchCriteria[pageSize]", str(size)))
    if page is not None:
        params.append(("searchCriteria[currentPage]", str(page)))
    return params


# -- the query of a read -----------------------------------------------------------------------------


def _odata_literal(value: str) -> str:
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    quoted = value.replace("'", "''")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T[\d:.]+", value):
        return f"datetime'{quoted}'"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:\d{2})", value):
        return f"datetimeoffset'{quoted}'"
    return f"'{quoted}'"


def read_params(
    style: str,
    since_param: str,
    since: str | None,
    cursor_field: str | None,
    filter: Mapping[str, Any] | None,
) -> list[tuple[str, str]]:
    """The query that carries a read's cursor and filters, in the style's own way (see the module doc).

    ``since_param`` is the generic styles' parameter for the cursor, ``{field}`` standing for its name.
    """
    filters = dict(filter or {})
    params: list[tuple[str, str]] = []
    if style == "magento":
        conditions: list[MagentoFilter] = []
        if since is not None and cursor_field:
            conditions.append((cursor_field, since, "gteq"))
        conditions += [magento_condition(name, value) for name, value in filters.items()]
        return magento_criteria(conditions, [cursor_field] if cursor_field else [])
    if style == "odata":
        clauses = [f"({filters.pop('$filter')})"] if "$filter" in filters else []
        if since is not None and cursor_field:
            clauses.append(f"{cursor_field} ge {_odata_literal(since)}")
        if clauses:
            params.append(("$filter", " and ".join(clauses)))
        if cursor_field and "$orderby" not in filters:
            params.append(("$orderby", cursor_field))
    elif since is not None and cursor_field:
        params.append((since_param.replace("{field}", cursor_field), since))
    params += [(name, query_value(value)) for name, value in filters.items() if value is not None]
    return params


# -- walking the pages -------------------------------------------------------------------------------


class PageSource(Protocol):
    """What a walker needs of a connection: one page (its body, and the answer it came in, which the
    walker only hands back: a :class:`~engine.kit.http.session.Response` for most), its items, and
    the next link made absolute."""

    @property
    def system(self) -> str: ...

    async def page(self, url: str, params: list[tuple[str, str]]) -> tuple[Any, Any]: ...

    def items(self, body: Any, path: str, response: Any) -> list[Any]: ...

    def follow(self, response: Any, link: str) -> str: ...


def _last_page(items: list[Any], size: int, seen: int, total: int | None) -> bool:
    """An empty page ends a read; so does reaching the total the server gave, or else a short page."""
    if not items:
        return True
    if total is not None:
        return seen >= total
    return len(items) < size


def _total(body: Any) -> int | None:
    if isinstance(body, dict):
        for name in ("total_count", "total", "totalCount"):
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


async def walk(
    source: PageSource, url: str, params: list[tuple[str, str]], pagination: Pagination, size: int
) -> AsyncIterator[list[Any]]:
    """Every page of the collection at ``url`` (empty ones included), in ``pagination``'s style."""
    walkers = {
        "none": _single,
        "page": _numbered,
        "offset": _numbered,
        "next-link": _linked,
        "cursor": _linked,
        "odata": _odata,
        "magento": _magento,
    }
    async for page in walkers[pagination.style](source, url, params, pagination, size):
        yield page


async def _single(
    source: PageSource, url: str, params: list[tuple[str, str]], pagination: Pagination, size: int
) -> AsyncIterator[list[Any]]:
    body, response = await source.page(url, params)
    yield source.items(body, pagination.items, response)


async def _numbered(
    source: PageSource, url: str, params: list[tuple[str, str]], pagination: Pagination, size: int
) -> AsyncIterator[list[Any]]:
    by_offset = pagination.style == "offset"
    position = 0 if by_offset else pagination.first_page
    seen = 0
    while True:
        name = pagination.offset_param if by_offset else pagination.page_param
        body, response = await source.page(url, [*params, (name, str(position)), (pagination.size_param, str(size))])
        items = source.items(body, pagination.items, response)
        yield items
        seen += len(items)
        if _last_page(items, size, seen, _total(body)):
            return
        position = position + len(items) if by_offset else position + 1


async def _linked(
    source: PageSource, url: str, params: list[tuple[str, str]], pagination: Pagination, size: int
) -> AsyncIterator[list[Any]]:
    linked = pagination.style == "next-link"
    query: list[tuple[str, str]] = [*params, (pagination.size_param, str(size))]
    target = url
    tokens: set[str] = set()
    while True:
        body, response = await source.page(target, query)
        items = source.items(body, pagination.items, response)
        yield items
        if linked:
            link = dig(body, pagination.next) if pagination.next else dig(body, "next")
            if not link and pagination.next is None:
                link = response.link("next")
            if not isinstance(link, str) or not link or not items:
                return
            target = source.follow(response, link)
            query = []
            token = target
        else:
            token_value = dig(body, pagination.next or "next_cursor")
            if token_value in (None, "") or not items:
                return
            token = query_value(token_value)
            query = [*params, (pagination.size_param, str(size)), (pagination.cursor_param, token)]
        if token in tokens:
            raise TerminalError(f"{source.system}: GET {path_of(url)}: the server sent the same next page twice")
        tokens.add(token)


async def _odata(
    source: PageSource, url: str, params: list[tuple[str, str]], pagination: Pagination, size: int
) -> AsyncIterator[list[Any]]:
    # Client-driven windows ($top/$skip) of `size` records; inside a window the server may page
    # on its own (d.__next or @odata.nextLink), which is followed as is.
    explicit_items = "items" in pagination.model_fields_set
    window_start = 0
    in_window = 0
    target = url
    query: list[tuple[str, str]] = [*params, ("$top", str(size)), ("$skip", "0")]
    while True:
        body, response = await source.page(target, query)
        if explicit_items:
            path = pagination.items
        elif isinstance(body, dict) and "d" in body:
            path = "d" if isinstance(body["d"], list) else "d.results"
        else:
            path = "value"
        items = source.items(body, path, response)
        yield items
        in_window += len(items)
        link = dig(body, "d.__next") or (body.get("@odata.nextLink") if isinstance(body, dict) else None)
        if isinstance(link, str) and link and items:
            target = source.follow(response, link)
            query = []
            continue
        if in_window < size:
            return
        window_start += size
        in_window = 0
        target = url
        query = [*params, ("$top", str(size)), ("$skip", str(window_start))]


async def _magento(
    source: PageSource, url: str, params: list[tuple[str, str]], pagination: Pagination, size: int
) -> AsyncIterator[list[Any]]:
    page = 1
    seen = 0
    while True:
        body, response = await source.page(url, [*params, *magento_criteria((), (), size, page)])
        items = source.items(body, pagination.items, response)
        yield items
        seen += len(items)
        if _last_page(items, size, seen, _total(body)):
            return
        page += 1
