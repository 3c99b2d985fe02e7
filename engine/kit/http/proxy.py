"""Which proxy a request goes through: a system's ``proxy:`` option, or the environment's.

``proxy`` is one of:

* ``environment`` (the default): ``https_proxy`` for https URLs, ``http_proxy`` for http ones, else
  ``all_proxy`` (each also in upper case; the lower case wins, as curl reads them), except for the
  hosts ``no_proxy`` names. Read once, when the connection opens.
* ``direct``: never a proxy, whatever the environment says.
* an ``http://[user:password@]host:port`` URL: every request of the system goes through it
  (``no_proxy`` does not apply: the spec named it for this system).

``no_proxy`` is a comma-separated list: ``*`` (every host), a host name that also matches its
subdomains (``example.com`` and ``.example.com`` both match ``erp.example.com``), an IP address or
a CIDR block (``10.0.0.0/8``), each optionally with ``:port``.

Only http proxies are spoken to (an https URL goes through them in a ``CONNECT`` tunnel, TLS end to
end); a proxy URL of another scheme (``socks5://``) is refused with :class:`UnusableProxy` naming it.
A user and password in a proxy URL become its ``Proxy-Authorization`` (Basic); they never appear in a
message (:meth:`Proxy.shown`).
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = ["DIRECT", "ENVIRONMENT", "Proxy", "ProxyRule", "UnusableProxy", "check_proxy_setting", "no_proxy_matches"]

ENVIRONMENT: Final = "environment"
DIRECT: Final = "direct"


class UnusableProxy(ValueError):
    """A proxy URL this client cannot use (not http://, no host, a bad port)."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An http proxy: where it is and the ``Proxy-Authorization`` value its URL's credentials make."""

    host: str
    port: int
    authorization: str | None = None
    password: str | None = None  # for masking: it must never be shown

    def shown(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, source: str = "proxy") -> Proxy:
        """An ``http://[user:password@]host[:port]`` URL (no scheme: http); UnusableProxy otherwise."""
        given = text.strip()
        parts = urlsplit(given if "://" in given else f"http://{given}")
        where = f"{source} '{_without_credentials(given)}'"
        if parts.scheme.lower() != "http":
            raise UnusableProxy(
                f"{where}: seamline speaks to http:// proxies only (an https URL still goes through them, "
                f"in a CONNECT tunnel), not {parts.scheme}://"
            )
        try:
            host, port = parts.hostname, parts.port or 80
        except ValueError:
            raise UnusableProxy(f"{where}: bad port") from None
        if not host:
            raise UnusableProxy(f"{where}: no host")
        authorization = password = None
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
            authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return cls(host, port, authorization, password or None)


def _without_credentials(text: str) -> str:
    scheme, sep, rest = text.rpartition("://")
    return (scheme + sep if sep else "") + rest.rpartition("@")[2]


def check_proxy_setting(text: str) -> str:
    """The ``proxy`` option's validator: environment, direct, a template, or a usable http proxy URL."""
    if text in (ENVIRONMENT, DIRECT) or "{{" in text:
        return text
    try:
        Proxy.parse(text)
    except UnusableProxy as exc:
        raise ValueError(f"{exc}; or write 'environment' (the default) or 'direct'") from None
    return text


def no_proxy_matches(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``no_proxy`` (the environment's list) exempts ``host:port`` from the proxy."""
    host = host.lower().strip("[]")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        wanted_port: int | None = None
        name = entry
        if entry.startswith("["):  # [::1]:8080
            name, _, rest = entry[1:].partition("]")
            wanted_port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        elif entry.count(":") == 1:
            name, _, tail = entry.partition(":")
            wanted_port = int(tail) if tail.isdigit() else None
        if wanted_port is not None and wanted_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


class ProxyRule:
    """The proxy for each origin, from the ``proxy`` option and, by default, the environment.

    Call it with (scheme, host, port): the :class:`Proxy`, or None to go direct. UnusableProxy when
    the proxy the setting leads to cannot be used (a socks5:// one in the environment, say).
    """

    def __init__(self, setting: str = ENVIRONMENT, environ: Mapping[str, str] | None = None) -> None:
        self.setting = setting
        self._fixed: Proxy | None = None
        self._env: dict[str, str] = {}
        if setting == DIRECT:
            return
        if setting != ENVIRONMENT:
            self._fixed = Proxy.parse(setting)
            return
        env = os.environ if environ is None else environ
        for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            value = env.get(name) or env.get(name.upper())
            if value and value.strip():
                self._env[name] = value.strip()

    @property
    def secrets(self) -> list[str]:
        """Proxy passwords this rule may send: masked wherever the connection logs or raises."""
        found = []
        if self._fixed is not None and self._fixed.password:
            found.append(self._fixed.password)
        for name in ("http_proxy", "https_proxy", "all_proxy"):
            value = self._env.get(name)
            if value:
                password = urlsplit(value if "://" in value else f"http://{value}").password
                if password:
                    found += [password, unquote(password)]
        return found

    def __call__(self, scheme: str, host: str, port: int) -> Proxy | None:
        if self.setting == DIRECT:
            return None
        if self._fixed is not None:
            return self._fixed
        name = "https_proxy" if scheme == "https" else "http_proxy"
        value = self._env.get(name)
        if value is None:
            name, value = "all_proxy", self._env.get("all_proxy")
        if value is None:
            return None
        if no_proxy_matches(host, port, self._env.get("no_proxy", "")):
            return None
        return Proxy.parse(value, source=f"the environment's {name.upper()}")
