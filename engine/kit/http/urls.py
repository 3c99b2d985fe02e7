"""URLs as plain strings: a path under a system's url, a query added, ``{name}`` placeholders filled.

Plain strings and ``urllib.parse``, not a URL class: building one costs more than the rest of a
request on the hot path. The query is encoded as ``urlencode`` does (``quote_plus``: a space is ``+``,
``[`` is ``%5B``); the wire (:mod:`engine.kit.http.wire`) sends it as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

__all__ = [
    "MissingValue",
    "dig",
    "fill_path",
    "join",
    "origin",
    "path_of",
    "placeholders",
    "query_value",
    "resolve",
    "with_query",
]

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


class MissingValue(LookupError):
    """A ``{name}`` placeholder whose value is missing or not plain."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def join(base: str, path: str) -> str:
    """``path`` under ``base``, concatenated ('/a' under 'https://h/api/' is 'https://h/api/a'); a whole URL as is."""
    if "://" in path:
        return path
    return base.rstrip("/") + "/" + path.lstrip("/")


def with_query(url: str, params: Iterable[tuple[str, str]] | None) -> str:
    """``url`` with ``params`` added after the query it already has."""
    if not params:
        return url
    encoded = urlencode(list(params))
    if not encoded:
        return url
    head, hash_, fragment = url.partition("#")
    joined = f"{head}&{encoded}" if "?" in head else f"{head}?{encoded}"
    return joined + hash_ + fragment


def path_of(url: str) -> str:
    """The path as sent (percent-encoded, so '/a%2Fb' and '/a/b' stay apart), without the query."""
    return urlsplit(url).path or "/"


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def resolve(url: str, link: str) -> str:
    """A link from an answer to ``url`` (absolute, or relative to it), as a whole URL."""
    return urljoin(url, link)


def dig(body: Any, path: str) -> Any:
    """The value at a dotted path ('d.results', 'items.0.id'); None when any step is missing."""
    current = body
    for step in path.split("."):
        if isinstance(current, dict) and step in current:
            current = current[step]
        elif isinstance(current, list) and step.isdigit() and int(step) < len(current):
            current = current[int(step)]
        else:
            return None
    return current


def query_value(value: Any) -> str:
    """A value as it goes in a path or a query: true/false, lists comma-joined, objects as compact JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(query_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def placeholders(template: str) -> set[str]:
    """The names of a path's ``{name}`` placeholders."""
    return {name.strip() for name in _PLACEHOLDER.findall(template)}


def fill_path(template: str, values: Any) -> str:
    """``template`` with each ``{name}`` (dotted: read inside ``values``) replaced by its URL-encoded value;
    MissingValue for a value that is missing, null, or an object or a list."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        value = dig(values, name) if isinstance(values, dict) else None
        if value is None or isinstance(value, dict | list):
            raise MissingValue(name)
        return quote(query_value(value), safe="")

    return _PLACEHOLDER.sub(fill, template) if "{" in template else template
