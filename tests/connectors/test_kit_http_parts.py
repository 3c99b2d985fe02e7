"""The HTTP kit's pieces on their own: the proxy rule, the wire options, Magento's searchCriteria,
the token cache, URLs, and the kit's place in the tree (a library no connector's neighbour imports)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.http import HttpOptions
from engine.errors import TerminalError, TransientError
from engine.kit.http.auth import Token, TokenCache
from engine.kit.http.errors import parse_retry_after, status_error
from engine.kit.http.options import TlsOptions, WireOptions, wire_settings
from engine.kit.http.pagination import magento_condition, magento_criteria, read_params
from engine.kit.http.proxy import Proxy, ProxyRule, UnusableProxy, no_proxy_matches
from engine.kit.http.urls import fill_path, join, with_query

ROOT = Path(__file__).resolve().parents[2]


# -- proxies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "exempt"),
    [
        ("erp.example.com", 443, "example.com", True),
        ("erp.example.com", 443, ".example.com", True),
        ("example.com", 443, ".example.com", True),
        ("badexample.com", 443, "example.com", False),
        ("erp.example.com", 443, "example.com:8443", False),
        ("erp.example.com", 8443, "example.com:8443", True),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("127.0.0.1", 80, "localhost, 127.0.0.1", True),
        ("::1", 80, "[::1]:80", True),
        ("::1", 80, "::1", True),
        ("anything", 1, "*", True),
        ("erp.example.com", 443, "", False),
    ],
)
def test_no_proxy_entries(host: str, port: int, no_proxy: str, exempt: bool) -> None:
    assert no_proxy_matches(host, port, no_proxy) is exempt


def test_the_environment_names_the_proxy_per_scheme_lower_case_first() -> None:
    env = {
        "HTTPS_PROXY": "http://upper:3128",
        "https_proxy": "lower:3129",  # no scheme: http
        "HTTP_PROXY": "http://plain:8080",
        "NO_PROXY": "internal.example",
    }
    rule = ProxyRule("environment", env)
    assert rule("https", "erp.example.com", 443) == Proxy("lower", 3129)
    assert rule("http", "erp.example.com", 80) == Proxy("plain", 8080)
    assert rule("https", "erp.internal.example", 443) is None
    assert ProxyRule("direct", env)("https", "erp.example.com", 443) is None
    assert ProxyRule("environment", {"ALL_PROXY": "http://all:1"})("https", "x", 443) == Proxy("all", 1)
    assert ProxyRule("environment", {})("https", "x", 443) is None


def test_a_proxy_url_with_credentials_authorizes_and_hides_them() -> None:
    proxy = Proxy.parse("http://svc%40corp:p%3Ass@proxy.corp:3128")
    assert (proxy.host, proxy.port, proxy.password) == ("proxy.corp", 3128, "p:ss")
    assert proxy.authorization == "Basic c3ZjQGNvcnA6cDpzcw=="  # svc@corp:p:ss
    assert proxy.shown() == "http://proxy.corp:3128"
    rule = ProxyRule("environment", {"HTTPS_PROXY": "http://u:env-pa55@p:1"})
    assert "env-pa55" in rule.secrets
    with pytest.raises(UnusableProxy, match=r"'socks5://p:1080': seamline speaks to http:// proxies only") as caught:
        Proxy.parse("socks5://u:secret-pw@p:1080")
    assert "secret-pw" not in str(caught.value)


# -- options -------------------------------------------------------------------------------------------


def test_wire_options_validate_and_default() -> None:
    base = {"connector": "http", "url": "https://erp.example.com"}
    plain = HttpOptions.model_validate(base)
    settings = wire_settings(plain)
    assert (settings.proxy, settings.tls, settings.max_response, settings.max_decoded) == (
        "environment",
        None,
        32 * 1024**2,
        128 * 1024**2,
    )
    given = HttpOptions.model_validate(
        {
            **base,
            "proxy": "http://proxy.corp:3128",
            "tls": {"ca_bundle": "certs/ca.pem", "client_cert": "certs/me.pem", "client_key": "certs/me.key"},
            "max_response_size": "2MiB",
            "max_decoded_size": "8MiB",
        }
    )
    assert wire_settings(given).max_decoded == 8 * 1024**2
    assert isinstance(given, WireOptions) and given.tls == TlsOptions(
        ca_bundle="certs/ca.pem", client_cert="certs/me.pem", client_key="certs/me.key"
    )
    assert HttpOptions.model_validate({**base, "proxy": "{{ env.PROXY }}"}).proxy == "{{ env.PROXY }}"
    for bad, words in [
        ({"proxy": "socks5://p:1"}, "http:// proxies only"),
        ({"tls": {"client_key": "k.pem"}}, "set client_cert too"),
        ({"tls": {"ca_bundel": "x"}}, "ca_bundel"),
        ({"max_response_size": "lots"}, "not a size"),
    ]:
        with pytest.raises(ValidationError, match=words):
            HttpOptions.model_validate({**base, **bad})


def test_an_options_model_without_the_wire_fields_gets_the_defaults() -> None:
    class Bare:
        pass

    assert wire_settings(Bare()).proxy == "environment"


# -- Magento's searchCriteria, built in one place --------------------------------------------------------


def test_magento_criteria_are_the_same_wire_for_every_connector() -> None:
    filters = [("updated_at", "2024-01-02 00:00:00", "gteq"), magento_condition("status", ["a", "b"])]
    assert magento_criteria(filters, ["updated_at", "entity_id"], 50, 2) == [
        ("searchCriteria[filter_groups][0][filters][0][field]", "updated_at"),
        ("searchCriteria[filter_groups][0][filters][0][value]", "2024-01-02 00:00:00"),
        ("searchCriteria[filter_groups][0][filters][0][condition_type]", "gteq"),
        ("searchCriteria[filter_groups][1][filters][0][field]", "status"),
        ("searchCriteria[filter_groups][1][filters][0][value]", "a,b"),
        ("searchCriteria[filter_groups][1][filters][0][condition_type]", "in"),
        ("searchCriteria[sortOrders][0][field]", "updated_at"),
        ("searchCriteria[sortOrders][0][direction]", "ASC"),
        ("searchCriteria[sortOrders][1][field]", "entity_id"),
        ("searchCriteria[sortOrders][1][direction]", "ASC"),
        ("searchCriteria[pageSize]", "50"),
        ("searchCriteria[currentPage]", "2"),
    ]
    assert magento_condition("is_active", True) == ("is_active", "1", "eq")
    assert magento_condition("qty", {"gt": 0}) == ("qty", "0", "gt")
    # the http connector's magento style reads through the same builder
    assert read_params("magento", "{field}_gte", "2024-01-02", "updated_at", {"status": ["a", "b"]}) == [
        *magento_criteria([("updated_at", "2024-01-02", "gteq"), ("status", "a,b", "in")], ["updated_at"])
    ]


# -- errors, urls, the token cache ---------------------------------------------------------------------------


def test_status_meanings() -> None:
    headers = {"Retry-After": "7", "Location": "https://elsewhere/"}

    def header(name: str) -> str | None:
        return headers.get(name)

    for status in (408, 425, 429, 500, 503):
        error = status_error("x", status, header)
        assert isinstance(error, TransientError) and error.retry_after == 7.0
    assert isinstance(status_error("x", 404, header), TerminalError)
    assert "redirected to https://elsewhere/" in str(status_error("x", 302, header))
    assert isinstance(status_error("x", 403, header, transient=True), TransientError)
    assert parse_retry_after("soon") is None


def test_urls() -> None:
    assert join("https://h/api/", "/items") == "https://h/api/items"
    assert join("https://h/api/", "https://other/x") == "https://other/x"
    assert with_query("https://h/x?a=1", [("b", "2 3"), ("c", "[d]")]) == "https://h/x?a=1&b=2+3&c=%5Bd%5D"
    assert fill_path("/p/{sku}/{source.code}", {"sku": "A B/1", "source": {"code": 7}}) == "/p/A%20B%2F1/7"


def test_the_token_cache_fetches_once_for_everyone_and_again_after_a_refusal() -> None:
    fetched: list[int] = []

    async def fetch() -> Token[str]:
        await asyncio.sleep(0.01)
        fetched.append(1)
        return Token(f"token-{len(fetched)}", lifetime=3600)

    async def scenario() -> list[Any]:
        cache = TokenCache(fetch)
        first = await asyncio.gather(*(cache.get() for _ in range(10)))
        cache.forget("not-the-current-one")  # an old token refused: the current one stays
        still = await cache.get()
        cache.forget(still)
        return [set(first), still, await cache.get()]

    assert asyncio.run(scenario()) == [{"token-1"}, "token-1", "token-2"]
    assert len(fetched) == 2


# -- the kit's place -----------------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_kit_is_outside_the_connectors_registers_no_kind_and_the_http_connectors_compose_it() -> None:
    """Who may import whom is tests/test_layering.py's; here: the kit is a library the four connectors share."""
    kit = sorted((ROOT / "engine" / "kit").rglob("*.py"))
    assert kit and not (ROOT / "connectors" / "kit").exists()
    for path in kit:
        assert "ConnectorKind(" not in path.read_text(encoding="utf-8"), f"{path.relative_to(ROOT)} registers a kind"
    for name in ("http", "magento", "salesforce", "tryton"):
        used = set().union(*(_imports(path) for path in (ROOT / "connectors" / name).rglob("*.py")))
        assert any(m.startswith("engine.kit.http") for m in used), f"connectors/{name} does not use the kit"
