"""Jinja templates in spec values: ``{{ env.NAME }}`` and ``{{ secret.NAME }}``.

Templates are parsed and compiled in Jinja's sandbox at validate time, never rendered there:
validate only needs to know which names a template reads and whether they exist. Secret values
are never read into a message; we only ask whether a secret can be found.

Secrets are looked up late, by name: a file ``$SEAMLINE_SECRETS_DIR/NAME`` (default
``/run/secrets``, as container runtimes mount them), else the environment variable ``NAME``.

Validate and the daemon share one rule book, :func:`analyse_template`, and one environment,
:class:`TemplateSandbox`, so validate refuses (located) what rendering would refuse. A spec is
written by whoever opens a pull request, so a template is treated as hostile:

* it is expressions and ``{% if %}`` only: no loops, no ``set`` (doubling a value forty times takes
  a line), no macros or includes; no globals (``range``, ``lipsum``), a short list of filters and
  of text methods, none of whose arguments can make a value larger than the limit;
* attributes the sandbox refuses (``__class__``, ``mro``, a list's ``append``) are refused by name;
* every operation that can make a large value (``*``, ``**``, ``+``, ``%``, ``replace``, ``join``,
  ``center``...) is checked *before* it runs, and what all of them make in one rendering is counted:
  a template makes at most :data:`MAX_TEMPLATE_OUTPUT` characters;
* a secret name is a name, never a path: it is looked up as a file name, and the file, links
  resolved, must be inside the secrets folder.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, wraps
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, nodes, pass_eval_context
from jinja2.exceptions import SecurityError, TemplateAssertionError
from jinja2.filters import do_join, do_replace
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
    ImmutableSandboxedEnvironment,
)

from engine.connector import closest
from engine.spec.yamlsource import JsonPath

__all__ = [
    "MAX_TEMPLATE_OUTPUT",
    "TEMPLATE_ROOTS",
    "TemplateProblem",
    "TemplateRef",
    "TemplateSandbox",
    "analyse_template",
    "find_template_strings",
    "is_template",
    "render_template",
    "secret_available",
    "secret_file",
    "secret_name_problem",
    "secrets_dir",
]

TEMPLATE_ROOTS = ("env", "secret")
# Characters one template may make, all its operations together: a URL, a token or a PEM bundle
# is a few kilobytes; a template that makes a megabyte is a mistake or an attack.
MAX_TEMPLATE_OUTPUT = 1 << 20
_MAX_INT_BITS = 10_000  # about 3,000 digits; Python refuses to print an int past 4,300 anyway

_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")  # width, precision
FILTERS = (
    "capitalize",
    "d",
    "default",
    "e",
    "escape",
    "first",
    "float",
    "int",
    "join",
    "last",
    "length",
    "lower",
    "replace",
    "string",
    "title",
    "trim",
    "truncate",
    "upper",
    "urlencode",
)
_STR_METHODS = frozenset(
    [
        "capitalize",
        "casefold",
        "center",
        "count",
        "endswith",
        "expandtabs",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "islower",
        "isnumeric",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "ljust",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rjust",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
        "zfill",
    ]
)
# The sandbox's own refusals, by name, so validate can say so before anything runs.
_UNSAFE_ATTRIBUTES = (
    UNSAFE_FUNCTION_ATTRIBUTES
    | UNSAFE_METHOD_ATTRIBUTES
    | UNSAFE_GENERATOR_ATTRIBUTES
    | UNSAFE_COROUTINE_ATTRIBUTES
    | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
    | {"mro"}
)
# What the immutable sandbox refuses to call: methods that change a list, dict or set.
_MUTATING = frozenset(
    [
        "append",
        "extend",
        "insert",
        "pop",
        "popitem",
        "remove",
        "reverse",
        "sort",
        "clear",
        "update",
        "setdefault",
        "add",
        "discard",
        "difference_update",
        "intersection_update",
        "symmetric_difference_update",
    ]
)
_STATEMENT_KEYWORDS = {
    nodes.Assign: "set",
    nodes.AssignBlock: "set",
    nodes.For: "for",
    nodes.Macro: "macro",
    nodes.CallBlock: "call",
    nodes.FilterBlock: "filter",
    nodes.With: "with",
    nodes.Block: "block",
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from",
    nodes.ExprStmt: "do",
    nodes.EvalContextModifier: "autoescape",
}
_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}


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


# -- bounds: checked before an operation runs, and counted over one rendering -------------------------


class _Budget:
    """Characters a rendering may still make; operations charge what they made."""

    def __init__(self) -> None:
        self.left = MAX_TEMPLATE_OUTPUT

    def charge(self, value: Any) -> None:
        self.left -= _size(value, self.left + 1)
        if self.left < 0:
            raise SecurityError(
                f"the template makes more than {MAX_TEMPLATE_OUTPUT:,} characters in all; "
                "that is the limit for a template"
            )


_BUDGET: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def _charged(value: Any) -> Any:
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(value)
    return value


def _size(value: Any, stop: int = MAX_TEMPLATE_OUTPUT + 1) -> int:
    """Characters ``value`` stands for once printed or joined (a list counts its items); stops past ``stop``."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if isinstance(value, list | tuple | set | frozenset | dict):
        total = len(value)
        for item in [*value.keys(), *value.values()] if isinstance(value, dict) else value:
            if total > stop:
                break
            total += _size(item, stop - total)
        return total
    return 1


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _too_large(what: str, size: int) -> SecurityError:
    return SecurityError(
        f"{what} makes {size:,} characters; the limit for a template is {MAX_TEMPLATE_OUTPUT:,} characters"
    )


def _check_bits(what: str, bits: int) -> None:
    """Python computes 10 ** (10 ** 10) for as long as it takes: refuse an integer past _MAX_INT_BITS."""
    if bits > _MAX_INT_BITS:
        raise SecurityError(f"{what} is a number too large for a template (about {bits * 3 // 10:,} digits)")


def _check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse, before it runs, an operation whose result would pass the limit."""
    numbers = isinstance(left, int | float) and isinstance(right, int | float)
    integers = isinstance(left, int) and isinstance(right, int)
    if op == "**" and integers and right > 0 and abs(left) > 1:
        _check_bits(f"{left} ** {right}", (abs(left).bit_length() - 1) * right)
    elif op == "*" and integers:
        _check_bits(f"{left} * {right}", abs(left).bit_length() + abs(right).bit_length())
    elif op == "*" and not numbers:
        times, value = (left, right) if isinstance(left, int) else (right, left)
        if isinstance(times, int) and isinstance(value, str | list | tuple):
            size = _size(value) * max(times, 0)
            if size > MAX_TEMPLATE_OUTPUT:
                kind = "a text" if isinstance(value, str) else "a list"
                raise _too_large(f"repeating {kind} of {_plural(_size(value), 'character')} {times:,} times", size)
    elif op == "+" and not numbers:
        size = _size(left) + _size(right)
        if size > MAX_TEMPLATE_OUTPUT:
            raise _too_large("joining these two values with '+'", size)
    elif op == "%" and isinstance(left, str):
        _check_format(left, right)


def _check_format(pattern: str, args: Any) -> None:
    """``'%0999999999d' % 1`` allocates a gigabyte: refuse widths and precisions past the limit."""
    fields = [field for conversion in _CONVERSION.findall(pattern) for field in conversion if field]
    widths = [int(field) for field in fields if field != "*"]
    if "*" in fields:  # the width is an argument
        values = args if isinstance(args, tuple) else (args,)
        widths += [v for v in values if isinstance(v, int)]
    for width in widths:
        if width > MAX_TEMPLATE_OUTPUT:
            raise _too_large(f"formatting with '%' and a width of {width:,}", width)


def _binop(op: str, left: Any, right: Any) -> Any:
    _check_binop(op, left, right)
    return _charged(_ARITHMETIC[op](left, right))


def _check_replace(text: str, old: str, new: str, count: int | None) -> None:
    found = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        found = min(found, count)
    size = len(text) + found * max(len(new) - len(old), 0)
    if size > MAX_TEMPLATE_OUTPUT:
        raise _too_large(f"replacing {found:,} times with a text of {len(new):,} characters", size)


def _check_join(separator: str, items: list[Any]) -> None:
    size = sum(_size(item) for item in items) + len(separator) * max(len(items) - 1, 0)
    if size > MAX_TEMPLATE_OUTPUT:
        raise _too_large(f"joining {len(items):,} values", size)


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
    _check_replace(str(s), str(old), str(new), count)
    return _charged(do_replace(eval_ctx, s, old, new, count))


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Any, d: str = "", attribute: str | int | None = None) -> Any:
    items = list(value)
    _check_join(str(d), items)  # an item's attribute is part of its size
    return _charged(do_join(eval_ctx, items, d, attribute))


def _counted(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose result is charged to the rendering (none of these can make more than a few times its input)."""

    @wraps(func)  # keeps Jinja's pass_context / pass_environment marks
    def counted(*args: Any, **kwargs: Any) -> Any:
        return _charged(func(*args, **kwargs))

    return counted


def _check_str_call(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a text method call that would pass the limit; the arguments to call it with.

    A width past the limit makes a value past it (``center(10**9)``, ``zfill``, ``ljust``); ``replace``,
    ``join`` and ``expandtabs`` multiply, so their result is computed from their arguments first.
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and value > MAX_TEMPLATE_OUTPUT:
            raise _too_large(f"{name}() with {value:,}", value)
    if name == "replace" and len(args) >= 2:
        _check_replace(text, str(args[0]), str(args[1]), args[2] if len(args) > 2 else None)
    elif name == "join" and args:
        items = list(args[0])
        _check_join(text, items)
        args = (items, *args[1:])
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        size = len(text) + text.count("\t") * max(int(tab), 0)
        if size > MAX_TEMPLATE_OUTPUT:
            raise _too_large(f"expandtabs({tab:,}) on {text.count(chr(9)):,} tabs", size)
    return args


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with spec templates' rules: no globals, few filters, bounded operations.

    Intercepting ``*``, ``**``, ``+`` and ``%`` also stops Jinja from folding them while it
    compiles, so validate never computes ``'x' * 10**13`` by accident.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(autoescape=False, undefined=StrictUndefined)
        self.globals.clear()
        filters = {name: _counted(self.filters[name]) for name in FILTERS}
        self.filters = {**filters, "replace": _replace, "join": _join}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return _binop(operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", type(obj).__name__)
        if not isinstance(owner, str) or name not in _STR_METHODS:
            raise SecurityError(f"template calls '{name}', which spec templates do not allow")
        args = _check_str_call(owner, name, args, kwargs)
        return _charged(super().call(context, obj, *args, **kwargs))


@cache
def _environment() -> TemplateSandbox:
    return TemplateSandbox()


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


def render_template(text: str, context: Mapping[str, Any]) -> str:
    """``text`` rendered in the sandbox, after the checks validate makes; TemplateError when refused.

    The daemon may run a spec nobody validated, so rendering applies the same rules first, then
    counts what the template makes while it runs.
    """
    _refs, problems = analyse_template(text)
    if problems:
        raise SecurityError(problems[0].message)
    template = _environment().from_string(text)
    token = _BUDGET.set(_Budget())
    try:
        parts: list[str] = []
        made = 0
        for part in template.generate(dict(context)):
            made += len(part)
            if made > MAX_TEMPLATE_OUTPUT:
                raise _too_large("the template", made)
            parts.append(part)
        return "".join(parts)
    finally:
        _BUDGET.reset(token)


def analyse_template(text: str) -> tuple[list[TemplateRef], list[TemplateProblem]]:
    """Parse and compile ``text`` in the sandbox; return the env/secret names it reads and its problems."""
    env = _environment()
    try:
        tree = env.parse(text)
    except TemplateSyntaxError as exc:
        return [], [_syntax_problem(exc)]
    problems = [*_statement_problems(tree), *_name_problems(tree), *_unsafe_problems(tree)]
    refs = _refs(tree, problems)
    problems += _size_problems(tree)
    try:
        env.compile(tree)
    except TemplateSyntaxError as exc:
        if not problems:  # what the checks above found says it better
            problems.append(_syntax_problem(exc))
    return refs, _once_each(problems)


def _once_each(problems: list[TemplateProblem]) -> list[TemplateProblem]:
    """Two '{% set %}' are one thing to fix: each message once, in order."""
    seen: set[str] = set()
    out: list[TemplateProblem] = []
    for problem in problems:
        if problem.message not in seen:
            seen.add(problem.message)
            out.append(problem)
    return out


def _syntax_problem(exc: TemplateSyntaxError) -> TemplateProblem:
    message = exc.message or "syntax error"
    prefix = "template error" if isinstance(exc, TemplateAssertionError) else "template syntax error"
    hint = "a template reads {{ env.NAME }} or {{ secret.NAME }}; each '{{' needs its '}}'"
    return TemplateProblem(f"{prefix}: {message}", exc.lineno or 1, hint=hint)


def _statement_problems(tree: nodes.Template) -> Iterator[TemplateProblem]:
    for node in tree.find_all(nodes.Stmt):
        if isinstance(node, nodes.Output | nodes.If):
            continue
        keyword = next((k for cls, k in _STATEMENT_KEYWORDS.items() if isinstance(node, cls)), type(node).__name__)
        yield TemplateProblem(
            f"template uses '{keyword}' ({{% {keyword} ... %}}); spec templates are expressions and {{% if %}} only",
            node.lineno,
            hint="a spec value reads {{ env.NAME }} or {{ secret.NAME }}, joined with ~ and text",
        )


def _name_problems(tree: nodes.Template) -> Iterator[TemplateProblem]:
    # In env[name] the problem is the subscript (reported by _refs), not that 'name' is undefined.
    subscripts = {
        id(name)
        for item in tree.find_all(nodes.Getitem)
        if isinstance(item.node, nodes.Name) and item.node.name in TEMPLATE_ROOTS
        for name in (item.arg, *item.arg.find_all(nodes.Name))
    }
    # A name a {% set %} or {% for %} assigns is that statement's problem, reported once as such.
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for name_node in tree.find_all(nodes.Name):
        if id(name_node) in subscripts or name_node.name in assigned:
            continue
        if name_node.ctx == "load" and name_node.name not in TEMPLATE_ROOTS:
            guess = closest(name_node.name, TEMPLATE_ROOTS)
            yield TemplateProblem(
                f"template reads '{name_node.name}', which is not defined"
                + (f" — did you mean '{guess}'?" if guess else ""),
                name_node.lineno,
                hint="templates can read env.NAME (environment variables) and secret.NAME (secrets)",
            )


def _is_root(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name in TEMPLATE_ROOTS


def _unsafe_problems(tree: nodes.Template) -> Iterator[TemplateProblem]:
    """What the sandbox or the bounds refuse by name: attributes, calls, filters."""
    unsafe: dict[int, tuple[nodes.Getattr | nodes.Getitem, str]] = {}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        if isinstance(node, nodes.Getattr):
            attr: Any = node.attr
        elif isinstance(node.arg, nodes.Const) and not _is_root(node.node):
            attr = node.arg.value
        else:
            continue
        if isinstance(attr, str) and (attr.startswith("_") or attr in _UNSAFE_ATTRIBUTES | _MUTATING):
            unsafe[id(node)] = (node, attr)
    for node, attr in unsafe.values():
        if any(id(inner) in unsafe for inner in (node.node, *node.node.find_all((nodes.Getattr, nodes.Getitem)))):
            continue  # in ''.__class__.__mro__ the first refusal is the one to fix
        if isinstance(node.node, nodes.Name) and node.node.name in TEMPLATE_ROOTS:
            root = node.node.name
            yield TemplateProblem(
                f"{root}.{attr}: the sandbox refuses attributes that start with '_'; write {root}['{attr}']",
                node.lineno,
            )
        else:
            yield TemplateProblem(
                f"template reads attribute '{attr}', which the sandbox refuses",
                node.lineno,
                hint="attributes that start with '_', and methods that change a value, are not available in templates",
            )
    for call in tree.find_all(nodes.Call):
        assert isinstance(call, nodes.Call)
        callee = call.node
        if isinstance(callee, nodes.Name):
            continue  # an undefined name, reported as such
        method = callee.attr if isinstance(callee, nodes.Getattr) else None
        if method in _STR_METHODS or (method is not None and method in _UNSAFE_ATTRIBUTES | _MUTATING):
            continue
        yield TemplateProblem(
            f"template calls '{method or 'a value'}', which spec templates do not allow",
            call.lineno,
            hint="templates may call text methods such as lower(), upper(), strip(), replace(), split()",
        )
    for used in tree.find_all(nodes.Filter):
        assert isinstance(used, nodes.Filter)
        if used.name not in FILTERS:
            guess = closest(used.name, FILTERS)
            yield TemplateProblem(
                f"template uses the filter '{used.name}', which spec templates do not have"
                + (f" — did you mean '{guess}'?" if guess else ""),
                used.lineno,
                hint="filters: " + ", ".join(FILTERS),
            )


def _refs(tree: nodes.Template, problems: list[TemplateProblem]) -> list[TemplateRef]:
    """The env and secret names ``tree`` reads literally; problems with them are added to ``problems``."""
    refs: list[TemplateRef] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name in TEMPLATE_ROOTS):
            continue
        if isinstance(node, nodes.Getattr):
            name = node.attr
            if name.startswith("_"):
                continue  # refused by the sandbox, reported by _unsafe_problems
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            name = node.arg.value
        else:
            problems.append(
                TemplateProblem(
                    f"{target.name}[...] must name a variable literally, e.g. {target.name}.NAME", node.lineno
                )
            )
            continue
        if target.name == "secret" and (problem := secret_name_problem(name)) is not None:
            problems.append(TemplateProblem(problem, node.lineno))
            continue
        refs.append(TemplateRef(target.name, name, node.lineno))
    return refs


class _NotConstant(Exception):
    """The expression reads a value only rendering knows."""


def _size_problems(tree: nodes.Node) -> Iterator[TemplateProblem]:
    """Constant expressions computed with the bounded operators: ``'x' * 10**13`` is refused here.

    Only the largest constant expressions are computed (each once, against a budget of its own),
    so the cost is bounded like a rendering's.
    """
    for node in tree.iter_child_nodes():
        if isinstance(node, nodes.BinExpr | nodes.UnaryExpr | nodes.Concat):
            token = _BUDGET.set(_Budget())
            try:
                _constant(node)
            except _NotConstant:
                yield from _size_problems(node)
            except (TemplateError, ArithmeticError, TypeError, ValueError) as exc:
                hint = (
                    f"a template makes at most {MAX_TEMPLATE_OUTPUT:,} characters, and numbers of a few thousand digits"
                )
                yield TemplateProblem(f"template cannot be computed: {exc}", node.lineno, hint=hint)
            finally:
                _BUDGET.reset(token)
        else:
            yield from _size_problems(node)


def _constant(node: nodes.Node) -> Any:
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.List | nodes.Tuple):
        items = [_constant(item) for item in node.items]
        return items if isinstance(node, nodes.List) else tuple(items)
    if isinstance(node, nodes.BinExpr) and node.operator in _ARITHMETIC:
        return _binop(node.operator, _constant(node.left), _constant(node.right))
    if isinstance(node, nodes.Neg | nodes.Pos):
        value = _constant(node.node)
        return -value if isinstance(node, nodes.Neg) else +value
    if isinstance(node, nodes.Concat):
        return _charged("".join(str(_constant(part)) for part in node.nodes))
    raise _NotConstant


# -- secrets: a name, a file inside the folder -------------------------------------------------------


def secret_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a secret, or None. A secret name becomes a file name: no paths."""
    if _SECRET_NAME.fullmatch(name) and ".." not in name:
        return None
    return (
        f"secret name {name!r} is not allowed: a secret name starts with a letter or '_' and has only "
        "letters, digits, '_', '.' and '-' (no '/', no '..')"
    )


def secrets_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("SEAMLINE_SECRETS_DIR", "/run/secrets"))


def secret_file(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The file holding secret ``name`` in the secrets folder, or None when there is none.

    ValueError when ``name`` is not a secret name, or when the file, its links resolved, lies outside
    the folder (Kubernetes links ``NAME -> ..data/NAME`` stay inside; a link to /etc does not).
    """
    problem = secret_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    folder = secrets_dir(environ)
    path = folder / name
    if not path.is_file():
        return None
    real, root = path.resolve(), folder.resolve()
    if not real.is_relative_to(root):
        raise ValueError(
            f"secret {name}: the file {path} is a link to {real}, outside $SEAMLINE_SECRETS_DIR ({root}); "
            "put the secret itself in the folder"
        )
    return real


def secret_available(name: str, environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    if secret_name_problem(name) is not None:
        return False
    if name in environ:
        return True
    try:
        return secret_file(name, environ) is not None
    except (OSError, ValueError):
        return False
