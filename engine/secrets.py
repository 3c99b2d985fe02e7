"""Secrets resolved late, masked early.

Spec values are Jinja templates rendered in the sandbox when the daemon starts: ``{{ env.NAME }}``
from the environment, ``{{ secret.NAME }}`` from the file ``$SEAMLINE_SECRETS_DIR/NAME`` (default
``/run/secrets``) or else the environment variable ``NAME``. Every secret value read is registered
with a :class:`Masker`, which logs and error texts pass through, so no value is ever printed.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus

from jinja2 import TemplateError

from engine.errors import UsageError
from engine.spec.templates import is_template, render_template, secret_file

__all__ = ["Masker", "render_values"]

MASK = "***"
_UNCHANGED = re.compile(r"[A-Za-z0-9_.~-]+")


class Masker:
    """Remembers secret values and replaces them in any text that might be shown.

    A secret leaves the process in more forms than the one typed: URL-encoded in a query string
    or a form body (``quote`` and ``quote_plus``), JSON-escaped in a request body (``\\"``, ``\\u00fc``,
    and ``\\/`` as PHP writes it), and escaped twice once that body is itself logged or
    dead-lettered as JSON. Each value is expanded into those forms once, when it is added.

    Masking runs on every log line, so it must stay a few plain substring searches: the forms of
    one value share its longest run of characters that no encoding changes (letters, digits,
    ``-_.~``), so that run is searched first and the forms only when it is there. Forms are
    replaced longest first: a longer form contains a shorter one (the JSON-escaped ``abc\\\\``
    holds the raw ``abc\\``), and so does a longer secret a shorter one.
    """

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._groups: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (run all forms share, forms longest first)
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        if len(value) < 4:  # masking 'ab' everywhere would garble logs and protect nothing
            return
        with self._lock:
            if value in self._values:
                return
            self._values.add(value)
            forms = tuple(sorted(_encoded_forms(value), key=len, reverse=True))
            run = forms[0] if len(forms) == 1 else _unchanged_run(value)  # the longer, the faster it is searched
            groups = [*self._groups, (run, forms)]
            groups.sort(key=lambda group: len(group[1][0]), reverse=True)
            self._groups = tuple(groups)  # replaced whole: __call__ reads it without the lock

    def __call__(self, text: str) -> str:
        for run, forms in self._groups:
            if run in text:
                for form in forms:
                    if form in text:
                        text = text.replace(form, MASK)
        return text


def _encoded_forms(value: str) -> set[str]:
    """``value`` as it is written in URLs, in JSON, in JSON inside JSON, and in Python's repr (error messages)."""
    forms = {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        quote_plus(value, safe="/"),
        repr(value)[1:-1],
    }
    for form in list(forms):
        for ascii_only in (False, True):
            once = _json_escaped(form, ascii_only)
            forms |= {once, once.replace("/", "\\/"), _json_escaped(once, ascii_only)}
    return forms


def _unchanged_run(value: str) -> str:
    """The longest run of ``value`` that URL-encoding and JSON-escaping leave as it is ('' if none)."""
    return max(_UNCHANGED.findall(value), key=len, default="")


def _json_escaped(text: str, ascii_only: bool) -> str:
    return json.dumps(text, ensure_ascii=ascii_only)[1:-1]


class _Lookup:
    """``env`` and ``secret`` as seen by templates: attribute access, a clear error when missing."""

    def __init__(self, kind: str, resolve: Any) -> None:
        self._kind = kind
        self._resolve = resolve

    def __getattr__(self, name: str) -> str:
        value = self._resolve(name)
        if value is None:
            where = (
                f"environment variable {name}"
                if self._kind == "env"
                else f"secret {name} (file {name} in $SEAMLINE_SECRETS_DIR, or environment variable {name})"
            )
            raise UsageError(f"{where} is not set")
        return str(value)

    __getitem__ = __getattr__


def _read_secret(name: str, environ: Mapping[str, str]) -> str | None:
    """The secret's file, else its environment variable; UsageError for a name that is a path.

    The name comes from a spec, and a spec is not trusted to choose files: it must be a name
    (checked again here, for specs nobody validated) and its file must lie inside the folder.
    """
    try:
        path = secret_file(name, environ)
        if path is not None:
            return path.read_text(encoding="utf-8").rstrip("\n")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError:
        pass
    return environ.get(name)


def render_values(value: Any, *, masker: Masker, environ: Mapping[str, str] | None = None, where: str = "") -> Any:
    """``value`` with every template string rendered; secrets read are registered with ``masker``.

    Error messages pass through ``masker``: Python's own messages quote values (``int('hunter2')``).
    """
    env_map = os.environ if environ is None else environ

    def secret(name: str) -> str | None:
        found = _read_secret(name, env_map)
        if found is not None:
            masker.add(found)
        return found

    context = {"env": _Lookup("env", env_map.get), "secret": _Lookup("secret", secret)}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, str):
            if not is_template(node):
                return node
            try:
                return render_template(node, context)
            except UsageError as exc:
                raise UsageError(masker(f"{exc} (needed by {path})")) from None
            except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
                raise UsageError(masker(f"cannot render the template at {path}: {exc}")) from None
        if isinstance(node, Mapping):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
        return node

    return walk(value, where)
