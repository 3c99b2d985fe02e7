"""Jinja templates in spec values: ``{{ env.NAME }}`` and ``{{ secret.NAME }}``.

Templates are parsed and compiled in Jinja's sandbox at validate time, never rendered there:
validate only needs to know which names a template reads and whether they exist. Secret values
are never read into a message; we only ask whether a secret can be found.

Secrets are looked up late, by name: a file ``$SEAMLINE_SECRETS_DIR/NAME`` (default
``/run/secrets``, as container runtimes mount them), else the environment variable ``NAME``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import TemplateAssertionError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.connector import closest
from engine.spec.yamlsource import JsonPath

__all__ = [
    "TEMPLATE_ROOTS",
    "TemplateProblem",
    "TemplateRef",
    "analyse_template",
    "find_template_strings",
    "is_template",
    "secret_available",
    "secrets_dir",
]

TEMPLATE_ROOTS = ("env", "secret")


@dataclass(frozen=True, slots=True)
class TemplateRef:
    root: str  # "env" or "secret"
    name: str
    line: int  # 1-based line inside the template text


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    message: str
    line: int  # 1-based line inside the template text
    hint: str = ""


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(autoescape=False)


def is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def find_template_strings(data: Any, path: JsonPath = ()) -> Iterator[tuple[JsonPath, str]]:
    if isinstance(data, str):
        if is_template(data):
            yield path, data
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from find_template_strings(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from find_template_strings(value, (*path, index))


def analyse_template(text: str) -> tuple[list[TemplateRef], list[TemplateProblem]]:
    """Parse and compile ``text`` in the sandbox; return the env/secret names it reads and its problems."""
    env = _environment()
    try:
        tree = env.parse(text)
        env.compile(tree)
    except TemplateSyntaxError as exc:
        message = exc.message or "syntax error"
        prefix = "template error" if isinstance(exc, TemplateAssertionError) else "template syntax error"
        hint = "a template reads {{ env.NAME }} or {{ secret.NAME }}; each '{{' needs its '}}'"
        return [], [TemplateProblem(f"{prefix}: {message}", exc.lineno or 1, hint=hint)]
    refs: list[TemplateRef] = []
    problems: list[TemplateProblem] = []
    # In env[name] the problem is the subscript (reported below), not that 'name' is undefined.
    subscripts = {
        id(name)
        for item in tree.find_all(nodes.Getitem)
        if isinstance(item.node, nodes.Name) and item.node.name in TEMPLATE_ROOTS
        for name in (item.arg, *item.arg.find_all(nodes.Name))
    }
    for name_node in tree.find_all(nodes.Name):
        if id(name_node) in subscripts:
            continue
        if name_node.ctx == "load" and name_node.name not in TEMPLATE_ROOTS:
            guess = closest(name_node.name, TEMPLATE_ROOTS)
            problems.append(
                TemplateProblem(
                    f"template reads '{name_node.name}', which is not defined"
                    + (f" — did you mean '{guess}'?" if guess else ""),
                    name_node.lineno,
                    hint="templates can read env.NAME (environment variables) and secret.NAME (secrets)",
                )
            )
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name in TEMPLATE_ROOTS):
            continue
        if isinstance(node, nodes.Getattr):
            refs.append(TemplateRef(target.name, node.attr, node.lineno))
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            refs.append(TemplateRef(target.name, node.arg.value, node.lineno))
        else:
            problems.append(
                TemplateProblem(
                    f"{target.name}[...] must name a variable literally, e.g. {target.name}.NAME", node.lineno
                )
            )
    return refs, problems


def secrets_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("SEAMLINE_SECRETS_DIR", "/run/secrets"))


def secret_available(name: str, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if name in environ:
        return True
    try:
        return (secrets_dir(environ) / name).is_file()
    except OSError:
        return False
