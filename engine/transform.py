"""The JSONata evaluator behind one interface: compile once per flow, evaluate per record.

Two backends sit behind :class:`Expression`:

- ``jsonata-python`` (pure Python, always installed) — the default;
- ``jlens`` (a Rust engine, the ``seamline[fast]`` extra), 36x faster on a real mapping.

``auto`` picks jlens when it is installed. Both give identical output on every golden case:
numbers leave in one canonical form (``2457.0`` becomes ``2457``), and the places where
jsonata-python goes wrong on ERP data (``$number("12 pcs")`` raising a raw ValueError,
``$string`` writing long ids in exponent form, an unstable ``$sort``) are patched here, each
replacement keeping its builtin's JSONata signature. tests/test_jsonata_conformance.py runs
JSONata's official suite through this module on both backends and both paths (dict, JSON text):
it passes every case the bare backend passes, plus the cases these patches fix.

Where an expression came from matters for every error: :class:`ExpressionSource` keeps the file
and position and maps an offset inside the text back to ``file:line:col``. Every failure leaves
this module as a :class:`~engine.errors.TransformError`, never as a library's exception.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

from engine.errors import TransformError, UsageError
from engine.transform_helpers import HELPERS, HelperError

__all__ = [
    "BACKENDS",
    "JSONATA_BUILTINS",
    "SEAMLINE_FUNCTIONS",
    "Bindings",
    "Expression",
    "ExpressionSource",
    "Limits",
    "available_backends",
    "called_functions",
    "canonical",
    "canonical_json",
    "compile_expression",
    "resolve_backend",
]

# The function library of JSONata 2.x (https://docs.jsonata.org/); anything else a spec calls
# must be bound by seamline or defined in the expression itself.
_BUILTIN_NAMES = (
    "string length substring substringBefore substringAfter uppercase lowercase trim pad contains "
    "split join "
    "match replace eval base64encode base64decode encodeUrlComponent encodeUrl decodeUrlComponent decodeUrl "
    "number abs floor ceil round power sqrt random formatNumber formatBase formatInteger parseInteger "
    "sum max min average boolean not exists count append sort reverse shuffle distinct zip keys "
    "lookup spread "
    "merge sift each error assert type map filter single reduce now millis fromMillis toMillis"
)
JSONATA_BUILTINS = frozenset(_BUILTIN_NAMES.split())
SEAMLINE_FUNCTIONS = frozenset(HELPERS)

BackendName = Literal["auto", "jsonata-python", "jlens"]
BACKENDS: tuple[str, ...] = ("jsonata-python", "jlens")
BACKEND_ENV = "SEAMLINE_TRANSFORM_BACKEND"

_CALL = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_ASSIGNED = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\s*:=")
_PARAMS = re.compile(r"function\s*\(([^)]*)\)")
_STRINGS_AND_COMMENTS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|/\*.*?\*/', re.S)
_MAX_SAFE_INTEGER = 2**53
_JS_EXPONENT_FROM = 1e21  # JavaScript writes integral numbers in full below this, with an exponent from it
BINDING_NAMES = frozenset({"client", "flow", "constants", "lookups"})


@dataclass(frozen=True, slots=True)
class ExpressionSource:
    """An expression's text and where it was written.

    ``style`` is ``file`` (a .jsonata file: offsets map to its own lines), ``block`` (a YAML
    ``|`` block: line *i* of the text is file line ``line + i`` at column ``column``), or
    ``inline`` (a one-line YAML scalar starting at ``line``:``column``).
    """

    text: str
    file: str
    line: int = 1
    column: int = 1
    style: Literal["file", "block", "inline"] = "file"

    def position(self, offset: int) -> tuple[int, int]:
        """1-based file line and column of the 0-based ``offset`` inside the text."""
        offset = max(0, min(offset, len(self.text)))
        before = self.text[:offset]
        row = before.count("\n")
        col = offset - (before.rfind("\n") + 1)
        if self.style == "file":
            return 1 + row, 1 + col
        if self.style == "block":
            return self.line + row, self.column + col
        return self.line + row, (self.column + col) if row == 0 else 1 + col


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one evaluation, so a runaway expression cannot stall a worker."""

    timeout: float = 2.0  # seconds
    max_depth: int = 200


@dataclass(frozen=True, slots=True)
class Bindings:
    """What a transform sees besides its input: ``$constants``, ``$lookups``, ``$client``, ``$flow``.

    ``now`` fixes ``$now()`` and ``$millis()`` (an ISO timestamp); golden tests always fix it.
    A ``now`` that is not an ISO 8601 timestamp is a UsageError here, before any record is read.
    """

    client: str = ""
    flow: str = ""
    constants: Mapping[str, Any] = field(default_factory=dict)
    lookups: Mapping[str, Any] = field(default_factory=dict)
    now: str | None = None

    def __post_init__(self) -> None:
        if self.now is not None:
            _parse_now(self.now)

    def values(self, names: frozenset[str] = BINDING_NAMES) -> dict[str, Any] | None:
        """The bindings an expression reads (``names``); None when it reads none."""
        if not names:
            return None
        every = {
            "client": self.client,
            "flow": self.flow,
            "constants": self.constants,
            "lookups": self.lookups,
        }
        return {name: every[name] for name in names}


def bound_names(text: str) -> frozenset[str]:
    """The bindings an expression mentions; passing only those keeps the per-record cost down."""
    code = _mask_literals(text)
    return frozenset(name for name in BINDING_NAMES if re.search(rf"\${name}\b", code))


def _mask_literals(text: str) -> str:
    """Blank out strings and comments (same length), so a regex scan finds only code."""
    return _STRINGS_AND_COMMENTS.sub(lambda m: " " * len(m.group(0)), text)


def called_functions(text: str) -> list[tuple[str, int]]:
    """Functions an expression calls that are not defined in it: (name, offset)."""
    code = _mask_literals(text)
    defined = set(_ASSIGNED.findall(code))
    for params in _PARAMS.findall(code):
        defined.update(p.strip().lstrip("$") for p in params.split(",") if p.strip())
    return [(m.group(1), m.start()) for m in _CALL.finditer(code) if m.group(1) not in defined]


# -- canonical output ---------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """Plain JSON values in one form, whichever backend produced them.

    Numbers are what JavaScript makes of them: a double. Integral ones below 1e21 become ints
    written as JavaScript writes them (``2457.0`` -> ``2457``, ``1e16`` -> ``10000000000000000``);
    an int beyond 2**53 is rounded to the nearest double first, as jlens and JSONata do
    (``12345678901234567890`` -> ``12345678901234567000``). Infinities and NaN (not JSON) become
    None, as do functions; engine-specific sequence types become lists.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < _JS_EXPONENT_FROM:
            return _js_integer(value)
        return value
    if isinstance(value, int):
        if abs(value) <= _MAX_SAFE_INTEGER:
            return value
        try:
            return canonical(float(value))
        except OverflowError:
            return None
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return None


def _js_integer(value: float) -> int:
    """An integral double as JavaScript prints it: its shortest round-trip digits, then zeros."""
    return int(Decimal(repr(value)))


def canonical_json(value: Any, *, indent: int | None = 2) -> str:
    """JSON text for snapshots and the playground: canonical numbers, keys in produced order."""
    return json.dumps(canonical(value), indent=indent, ensure_ascii=False)


# -- backends -----------------------------------------------------------------------------------


class _Compiled(Protocol):
    def evaluate(self, data: Any, bindings: Bindings, limits: Limits) -> Any: ...

    def evaluate_json(self, text: str | None, bindings: Bindings, limits: Limits) -> str | None: ...


def available_backends() -> list[str]:
    return [name for name in BACKENDS if importlib.util.find_spec(_MODULE[name]) is not None]


_MODULE = {"jsonata-python": "jsonata", "jlens": "jlens"}


def resolve_backend(name: str | None = None) -> str:
    """The backend to use: an explicit name, else $SEAMLINE_TRANSFORM_BACKEND, else auto."""
    choice = name or os.environ.get(BACKEND_ENV) or "auto"
    installed = available_backends()
    if choice == "auto":
        return "jlens" if "jlens" in installed else "jsonata-python"
    if choice not in BACKENDS:
        from engine.connector import closest

        guess = closest(choice, ("auto", *BACKENDS))
        origin = "" if name else f" (from ${BACKEND_ENV})"
        raise UsageError(
            f"unknown transform backend '{choice}'{origin}"
            + (f" — did you mean '{guess}'?" if guess else "")
            + f"; choose one of: auto, {', '.join(BACKENDS)}"
        )
    if choice not in installed:
        hint = " (pip install 'seamline[fast]')" if choice == "jlens" else ""
        raise UsageError(f"transform backend '{choice}' is not installed{hint}")
    return choice


class Expression:
    """A compiled JSONata expression: compile once per flow, evaluate per record."""

    def __init__(self, source: ExpressionSource, compiled: _Compiled, backend: str, limits: Limits) -> None:
        self.source = source
        self.backend = backend
        self.limits = limits
        self._compiled = compiled

    def evaluate(self, data: Any, bindings: Bindings | None = None, *, record_id: str = "") -> Any:
        """The result as canonical JSON values; None when the expression yields nothing."""
        try:
            return canonical(self._compiled.evaluate(data, bindings or Bindings(), self.limits))
        except TransformError as exc:
            raise self._locate(exc, bindings, record_id) from None

    def evaluate_json(self, text: str | None, bindings: Bindings | None = None, *, record_id: str = "") -> str | None:
        """JSON text in, JSON text out: the fast path, where the backend can skip unread fields.

        None in is no input document (JSONata's undefined; ``"null"`` is the document null); None out
        is an undefined result, ``"null"`` a null one."""
        try:
            return self._compiled.evaluate_json(text, bindings or Bindings(), self.limits)
        except TransformError as exc:
            raise self._locate(exc, bindings, record_id) from None

    def _locate(self, exc: TransformError, bindings: Bindings | None, record_id: str) -> TransformError:
        offset = exc.line  # backends report a 0-based offset here; turn it into file:line:col
        if offset < 0:
            offset = _call_site(self.source.text, exc.message)
        offset = _call_start(self.source.text, offset)
        line, column = self.source.position(offset) if offset >= 0 else (self.source.line, self.source.column)
        return TransformError(
            exc.message,
            file=self.source.file,
            line=line,
            column=column,
            code=exc.code,
            client=bindings.client if bindings else "",
            flow=bindings.flow if bindings else "",
            record_id=record_id,
        )


def compile_expression(
    source: ExpressionSource, *, backend: str | None = None, limits: Limits | None = None
) -> Expression:
    """Compile ``source``; a syntax error becomes a TransformError pointing into the file."""
    chosen = resolve_backend(backend)
    limits = limits or Limits()
    if not source.text.strip():
        line, col = source.position(0)
        raise TransformError("the JSONata expression is empty", file=source.file, line=line, column=col)
    try:
        compiled: _Compiled = _JlensCompiled(source.text) if chosen == "jlens" else _JsonataPyCompiled(source.text)
    except TransformError as exc:
        line, col = source.position(exc.line if exc.line >= 0 else len(source.text))
        raise TransformError(exc.message, file=source.file, line=line, column=col, code=exc.code) from None
    return Expression(source, compiled, chosen, limits)


def _call_site(text: str, message: str) -> int:
    """Where a helper was called, when the engine could not say: its only call in the text."""
    match = re.search(r"\$([A-Za-z_]\w*): ", message)
    if match:
        calls = [m.start() for m in re.finditer(re.escape("$" + match.group(1)) + r"\s*\(", text)]
        if len(calls) == 1:
            return calls[0]
    return -1


_CALLEE = re.compile(r"\$[A-Za-z_]\w*\s*$")


def _call_start(text: str, offset: int) -> int:
    """A call's position is its ``$name``: jsonata-python reports the ``(``, jlens the ``$``."""
    if 0 <= offset < len(text) and text[offset] == "(":
        callee = _CALLEE.search(text, 0, offset)
        if callee:
            return callee.start()
    return offset


def _offset_error(message: str, offset: int, code: str = "") -> TransformError:
    """An error whose ``line`` carries a 0-based offset until Expression locates it."""
    return TransformError(message, line=offset, code=code)


def _describe(code: str, message: str) -> str:
    kind = "syntax error" if code.startswith("S") else "error"
    return f"JSONata {kind} {code}: {message}" if code else f"JSONata {kind}: {message}"


def _parse_now(now: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(now.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"the fixed time '{now}' (--now) is not an ISO 8601 timestamp; write e.g. 2025-01-15T08:00:00Z"
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _now_ms(bindings: Bindings) -> int | None:
    if bindings.now is None:
        return None
    return int(_parse_now(bindings.now).timestamp() * 1000)


# jsonata-python ---------------------------------------------------------------------------------


class _JsonataPyCompiled:
    def __init__(self, text: str) -> None:
        import jsonata

        _keep_builtin_names()

        self._jsonata = jsonata
        self._names = bound_names(text)
        try:
            self._expr = jsonata.Jsonata(text)
            self._expr.set_output_convert_nulls(False)  # null stays Utils.NULL_VALUE, told from undefined
        except jsonata.JException as exc:
            raise _from_jexception(exc) from None
        except Exception as exc:
            # jsonata-python raises raw exceptions on a few malformed inputs (an unclosed comment)
            raise _raw_syntax_error(exc, text) from None
        for name, helper in HELPERS.items():
            self._expr.register_lambda(name, _placed(helper))
        for name, fixed in _jsonata_python_fixes().items():
            self._expr.register_function(name, fixed)

    def evaluate(self, data: Any, bindings: Bindings, limits: Limits) -> Any:
        jsonata = self._jsonata
        frame = jsonata.Jsonata.Frame(None)
        runaway = _Runaway(limits)
        frame.set_evaluate_entry_callback(runaway.enter)
        frame.set_evaluate_exit_callback(runaway.leave)
        for name, value in (bindings.values(self._names) or {}).items():
            frame.bind(name, value)
        now = _now_ms(bindings)
        if now is not None:
            frame.bind("now", jsonata.Jsonata.JLambda(_fixed_now(now)))
            frame.bind("millis", jsonata.Jsonata.JLambda(lambda: now))
        try:
            return self._expr.evaluate(data, frame)
        except jsonata.JException as exc:
            raise _from_jexception(exc) from None
        except TransformError:
            raise
        except HelperError as exc:
            raise _from_helper(exc) from None
        except RecursionError:
            raise _offset_error("JSONata error D1011: expression nests too deep (recursion)", -1, "D1011") from None
        except Exception as exc:  # a raw one of jsonata-python's (ValueError, RuntimeError...): still ours
            raise _offset_error(f"JSONata error: {type(exc).__name__}: {exc}", -1) from None

    def evaluate_json(self, text: str | None, bindings: Bindings, limits: Limits) -> str | None:
        data = None
        if text is not None:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _offset_error(f"input is not valid JSON: {exc}", -1) from None
            if data is None:  # the document null; None would be no document at all
                data = self._jsonata.utils.Utils.NULL_VALUE
        result = self.evaluate(data, bindings, limits)
        if result is None:  # undefined; a null result is Utils.NULL_VALUE, which canonical() makes None
            return None
        return json.dumps(canonical(result), ensure_ascii=False, separators=(",", ":"))  # compact, as jlens


class _Runaway:
    """jsonata-python's Timebox (``Frame.set_runtime_bounds``) without its depth leak.

    The Timebox counts a step in on entry and out on exit unless the frame is flagged as a
    "parallel call", but it reads that flag again on exit, and jsonata-python sets it on a shared
    frame in between (``{key: value}`` grouping the results of a function, one step per group): the
    count then grows with the data, not the nesting, and a grouping of 250 records fails D1011 at
    depth 200. Here a step is counted out exactly when it was counted in.
    """

    __slots__ = ("counted", "deadline", "depth", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout
        self.depth = 0
        self.counted: list[bool] = []

    def enter(self, expr: Any, data: Any, env: Any) -> None:
        counted = not env.is_parallel_call
        self.counted.append(counted)
        if counted:
            self.depth += 1
            if self.depth > self.limits.max_depth:
                raise _jexception("D1011")
        self.check_time()

    def leave(self, expr: Any, data: Any, env: Any, result: Any) -> None:
        if self.counted and self.counted.pop():
            self.depth -= 1
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _jexception("D1012", int(self.limits.timeout * 1000))


def _jexception(code: str, *args: Any) -> Exception:
    from jsonata.jexception import JException

    failure: Exception = JException(code, -1, *args)
    return failure


def _from_helper(exc: HelperError) -> TransformError:
    position = getattr(exc, "position", None)  # jlens marks a host function's exception with its call
    offset = position - 1 if isinstance(position, int) and position > 0 else -1
    return _offset_error(_describe(exc.code, str(exc)), offset, exc.code)


def _placed(helper: Callable[..., Any]) -> Callable[..., Any]:
    """A helper whose failure jsonata-python places at the call: it does so for a JException only."""
    from jsonata.jexception import JException

    def call(*args: Any) -> Any:
        try:
            return helper(*args)
        except HelperError as exc:
            failure = JException(exc.code, -1)
            failure.helper_error = exc
            raise failure from None

    return call


def _from_jexception(exc: Any) -> TransformError:
    code = str(getattr(exc, "error", "") or "")
    location = getattr(exc, "location", None)
    offset = int(location) - 1 if isinstance(location, int) and location > 0 else -1
    helper = getattr(exc, "helper_error", None)
    message = str(helper) if isinstance(helper, HelperError) else _jexception_message(exc, code)
    return _offset_error(_describe(code, message), offset, code)


_PLACEHOLDER = re.compile(r"\{\{\w+\}\}")


def _jexception_message(exc: Any, code: str) -> str:
    """jsonata-python's message as JSONata (and jlens) words it.

    Its templates say "Object" where JSONata says "function" (``Argument 1 of Object uppercase``)
    and fill ``{{value}}`` raw where JSONata writes the value as JSON (``got "e"``).
    """
    from jsonata.jexception import JException

    template = JException.error_codes.get(code)
    if not isinstance(template, str) or "{{{" in template:
        return str(exc)
    args = iter((exc.current, exc.expected, exc.extra))
    return _PLACEHOLDER.sub(lambda _: _js_stringify(next(args, None)), template.replace("Object", "function"))


def _js_stringify(value: Any) -> str:
    """A value inside an error message, as JavaScript's JSON.stringify writes it."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return js_number_string(value) if math.isfinite(value) else "null"
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _raw_syntax_error(exc: Exception, text: str) -> TransformError:
    """A raw exception from jsonata-python's parser, as jlens reports the same text."""
    comment = _unclosed_comment(text)
    if comment >= 0:
        return _offset_error(_describe("S0106", "Comment has no closing tag"), comment, "S0106")
    return _offset_error(f"JSONata syntax error: {type(exc).__name__}: {exc}", len(text))


def _unclosed_comment(text: str) -> int:
    """Offset of the ``/*`` that has no ``*/``; -1 when every comment is closed."""
    start = text.find("/*")
    while start >= 0:
        end = text.find("*/", start + 2)
        if end < 0:
            return start
        start = text.find("/*", end + 2)
    return -1


def _fixed_now(now_ms: int) -> Callable[..., Any]:
    def now(picture: str | None = None, timezone: str | None = None) -> Any:
        from jsonata.functions import Functions

        return Functions.datetime_from_millis(now_ms, picture, timezone)

    return now


@functools.cache
def _keep_builtin_names() -> None:
    """jsonata-python renames a builtin's shared signature to the variable it is bound to: after any expression
    ran ``$g := $uppercase``, every later T0410 of ``$uppercase`` in any record says 'function "g"'. A
    signature keeps the first name it was given here (a builtin's own; a lambda's first binding)."""
    import jsonata

    frame = jsonata.Jsonata.Frame
    if getattr(frame.bind, "_seamline", False):
        return

    def bind(self: Any, name: str, val: Any) -> None:
        self.bindings[name] = val
        signature = getattr(val, "signature", None)
        if signature is not None and not getattr(signature, "function_name", None):
            signature.set_function_name(name)

    bind._seamline = True  # type: ignore[attr-defined]
    frame.bind = bind


def _jsonata_python_fixes() -> dict[str, Any]:
    """Builtins of jsonata-python replaced where they disagree with JSONata on the data ERPs send.

    - ``$number``: jsonata-python raises a raw ValueError on text that is not a number
      (``$number("12 pcs")``, ``"1/2"``, ``""``) and accepts what JSONata refuses (``" 12"``,
      ``"+5"``, ``"1."``); here the text follows JSONata's rules exactly (see
      :func:`_parse_jsonata_number`: leading zeros are fine, ``"0123"`` is 123) and anything else is
      D3030, which dead-letters the record with a reason.
    - ``$string``: jsonata-python writes numbers from 1e15 in exponent form (a 16-digit ERP id
      becomes ``"5.89084071224308e+15"``), and inside arrays and objects writes Python's float
      digits and escapes every non-ASCII letter (``"M\u00fcller"``); here numbers, strings and
      functions are written as JSONata's ``JSON.stringify`` writes them.
    - ``$sort``: jsonata-python's sort with a comparator is not stable, and without one raises a
      raw TypeError on objects; here it is JSONata's merge sort, and D3070.

    Each replacement is a native function with its builtin's JSONata signature, as jsonata-python
    defines its own builtins: the signature supplies the context argument when it is left out
    (``qty.$number()``, ``[1..5].$string()``) and raises T0410/T0411 for an argument of the wrong
    type or one too many (``$number([1])``, ``$string(2, 3)``), and a function given as a value
    (``$string($string)``, ``$map(xs, $number)``) is one, with the arity JSONata gives it.
    """
    from jsonata import jexception
    from jsonata.functions import Functions
    from jsonata.jsonata import Jsonata

    class Fixed:
        @staticmethod
        def number(arg: Any) -> Any:
            if isinstance(arg, str):
                parsed = _parse_jsonata_number(arg)
                if parsed is None:
                    raise jexception.JException("D3030", -1, arg)
                return parsed
            return Functions.number(arg)

        @staticmethod
        def string(arg: Any, prettify: Any) -> Any:
            return _js_string(arg, bool(prettify))

        @staticmethod
        def sort(arr: Any, comparator: Any) -> Any:
            if arr is None:
                return None
            items = list(arr) if isinstance(arr, list) else [arr]
            if len(items) <= 1:
                return items  # as JSONata: nothing to compare, whatever the type
            if comparator is None:
                if not (all(_is_number(x) for x in items) or all(isinstance(x, str) for x in items)):
                    raise jexception.JException("D3070", -1)
                return Functions.sort(items, None)
            return _merge_sort(items, lambda a, b: bool(Functions.func_apply(comparator, [a, b])))

    signatures = {"number": "<(nsb)-:n>", "string": "<x-b?:s>", "sort": "<af?:a>"}  # JSONata's own
    return {name: Jsonata.JNativeFunction(name, signature, Fixed, name) for name, signature in signatures.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_DECIMAL_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_PREFIXED_NUMBER = re.compile(r"0([xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)")
_BASES = {"x": 16, "o": 8, "b": 2}


def _parse_jsonata_number(text: str) -> int | float | None:
    """$number of a string, by JSONata's rules; None where JSONata raises D3030.

    A decimal number as JSON writes it except that leading zeros are allowed (``"0123"`` is 123,
    ``"-007"`` is -7, ``"000.5"`` is 0.5), with no blanks, ``+`` or bare ``.`` (``" 12"``,
    ``"+5"``, ``"1."`` and ``".5"`` are D3030), and finite (``"1e400"`` is D3030); or an integer
    written ``0x``/``0o``/``0b`` (``"0x1F"`` is 31). ASCII digits only, the whole text.

    One deliberate difference: JSONata (and jlens) return NaN, written null, for text that merely
    starts with such a prefix (``"0x1Fzz"``: its pattern's ``^``/``$`` bind to the first and last
    alternatives only); seamline calls that D3030 too, so the record is dead-lettered with a
    reason rather than a null field.
    """
    if _DECIMAL_NUMBER.fullmatch(text):
        value = float(text)
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() and not re.search(r"[.eE]", text) else value
    if _PREFIXED_NUMBER.fullmatch(text):
        return int(text[2:], _BASES[text[1].lower()])
    return None


def _js_string(value: Any, prettify: bool) -> str | None:
    """``$string``: text unchanged, a function ``""``, anything else as JSONata's ``JSON.stringify``
    writes it (numbers to 15 significant digits, integral ones in full; non-ASCII as is; with
    ``prettify``, two-space indents)."""
    jlist, functions = _jsonata_python_types()
    if isinstance(value, jlist) and value.outer_wrapper:
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if _is_number(value):
        return js_number_string(value)
    if isinstance(value, functions):
        return ""
    return _js_json(value, functions, "  " if prettify else "", "")


@functools.cache
def _jsonata_python_types() -> tuple[Any, tuple[type, ...]]:
    """jsonata-python's sequence type, and its function types (builtin, host, lambda)."""
    from jsonata.jsonata import Jsonata
    from jsonata.parser import Parser
    from jsonata.utils import Utils

    return Utils.JList, (Jsonata.JFunction, Jsonata.JLambda, Parser.Symbol)


def _js_json(value: Any, functions: tuple[type, ...], indent: str, margin: str) -> str:
    """JSON text as ``JSON.stringify(value, replacer, indent)`` writes it in JSONata's ``$string``."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if _is_number(value):
        return js_number_string(value) if math.isfinite(value) else "null"
    if isinstance(value, functions):
        return '""'
    inner, newline, colon = margin + indent, "\n" if indent else "", ": " if indent else ":"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        fields = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}{colon}{_js_json(v, functions, indent, inner)}"
            for k, v in value.items()
        ]
        return "{" + newline + ("," + newline).join(fields) + newline + margin + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        items = [inner + _js_json(v, functions, indent, inner) for v in value]
        return "[" + newline + ("," + newline).join(items) + newline + margin + "]"
    return "null"  # jsonata-python's null (Utils.NULL_VALUE)


def js_number_string(value: float) -> str:
    """A number as $string writes it: integral ones in full below 1e21 (ids keep every digit a double
    holds, as jlens writes them), others to 15 significant digits; no exponent from 1e-7 to 1e21."""
    if isinstance(value, int) and abs(value) <= _MAX_SAFE_INTEGER:
        return str(value)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _offset_error("JSONata error D3001: attempting to invoke $string on an infinite number", -1, "D3001")
    if number.is_integer() and abs(number) < _JS_EXPONENT_FROM:
        return str(_js_integer(number))
    rounded = float(f"{number:.15g}")
    if rounded.is_integer() and abs(rounded) < _JS_EXPONENT_FROM:
        return str(int(rounded))
    text = repr(rounded)
    if "e" in text:
        mantissa, exp = text.split("e")
        exponent = int(exp)
        if -7 < exponent < 21:
            return f"{rounded:.{max(0, -exponent + len(mantissa.replace('-', '').replace('.', '')) - 1)}f}"
        return f"{mantissa}e{'+' if exponent > 0 else '-'}{abs(exponent)}"
    return text


def _merge_sort(items: list[Any], swap: Callable[[Any, Any], bool]) -> list[Any]:
    """jsonata-js's merge sort: stable, and ``swap(a, b)`` true means b goes first."""
    if len(items) <= 1:
        return items
    middle = len(items) // 2
    left, right = _merge_sort(items[:middle], swap), _merge_sort(items[middle:], swap)
    merged: list[Any] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if swap(left[i], right[j]):
            merged.append(right[j])
            j += 1
        else:
            merged.append(left[i])
            i += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged


# jlens ------------------------------------------------------------------------------------------


class _JlensCompiled:
    def __init__(self, text: str) -> None:
        import jlens

        self._jlens = jlens
        self._names = bound_names(text)
        try:
            self._expr = jlens.Expression(text)
        except jlens.JlensError as exc:
            raise _from_jlens(exc) from None
        except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800"), which UTF-8 cannot carry into Rust
            raise _offset_error(
                f"JSONata syntax error: the expression is not valid Unicode ({exc.reason})", exc.start
            ) from None
        for name, helper in HELPERS.items():
            self._expr.register_function(name, helper)

    def _options(self, bindings: Bindings, limits: Limits) -> dict[str, Any]:
        options: dict[str, Any] = {"timeout": limits.timeout, "max_depth": limits.max_depth}
        if bindings.now is not None:
            options["now"] = bindings.now
        return options

    def evaluate(self, data: Any, bindings: Bindings, limits: Limits) -> Any:
        try:
            return self._expr.evaluate(data, bindings.values(self._names), **self._options(bindings, limits))
        except self._jlens.JlensError as exc:
            raise _from_jlens(exc) from None
        except TransformError:
            raise
        except HelperError as exc:
            raise _from_helper(exc) from None
        except Exception as exc:  # a host function's own bug, say: still a TransformError
            raise _offset_error(f"JSONata error: {type(exc).__name__}: {exc}", -1) from None

    def evaluate_json(self, text: str | None, bindings: Bindings, limits: Limits) -> str | None:
        try:
            return self._expr.evaluate_json(text, bindings.values(self._names), **self._options(bindings, limits))
        except self._jlens.JlensError as exc:
            raise _from_jlens(exc) from None
        except ValueError as exc:
            reason = str(exc).removeprefix("input is not valid JSON: ")
            raise _offset_error(f"input is not valid JSON: {reason}", -1) from None


def _from_jlens(exc: Any) -> TransformError:
    code = str(getattr(exc, "code", "") or "")
    start = getattr(exc, "start", None)
    position = getattr(exc, "position", None)
    if isinstance(start, int) and start >= 0:
        offset = start
    elif isinstance(position, int) and position > 0:
        offset = position - 1
    else:
        offset = -1
    message = str(exc)
    if message.startswith(code):
        message = message[len(code) :].lstrip(": ")
    return _offset_error(_describe(code, message), offset, code)
