"""Secrets resolved late, masked early.

Spec values are Jinja templates rendered in the sandbox when the daemon starts: ``{{ env.NAME }}``
from the environment, ``{{ secret.NAME }}`` from the file ``$SEAMLINE_SECRETS_DIR/NAME`` (default
``/run/secrets``) or else the environment variable ``NAME``. Every secret value read is registered
with a :class:`Masker`, which logs and error texts pass through, so no value is ever printed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import UsageError
from engine.spec.templates import is_template, secrets_dir

__all__ = ["Masker", "render_values"]

MASK = "***"


class Masker:
    """Remembers secret values and replaces them in any text that might be shown."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        if len(value) >= 4:  # masking 'ab' everywhere would garble logs and protect nothing
            with self._lock:
                self._values.add(value)

    def __call__(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return text


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
    path: Path = secrets_dir(environ) / name
    try:
        if path.is_file():
            return path.read_text(encoding="utf-8").rstrip("\n")
    except OSError:
        pass
    return environ.get(name)


def render_values(value: Any, *, masker: Masker, environ: Mapping[str, str] | None = None, where: str = "") -> Any:
    """``value`` with every template string rendered; secrets read are registered with ``masker``."""
    env_map = os.environ if environ is None else environ
    jinja = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)

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
                return jinja.from_string(node).render(context)
            except UsageError as exc:
                raise UsageError(f"{exc} (needed by {path})") from None
            except TemplateError as exc:
                raise UsageError(f"cannot render the template at {path}: {exc}") from None
        if isinstance(node, Mapping):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
        return node

    return walk(value, where)
