"""JSONata's official test suite through the engine's own interface, against each bare backend.

Every case of the suite (``groups/*/*.json``: 1,686 cases) runs per installed backend and per path,
once *bare*, through the backend's own API, and once through :mod:`engine.transform`
(``compile_expression``, then ``Expression.evaluate`` on the dict path or ``Expression.evaluate_json``
on the JSON-text path). The engine must pass exactly the cases the bare backend passes: a case it
loses is a bug of the engine's (a replaced builtin, a limit, a conversion), and a case it gains must
be one of its deliberate fixes, listed in ``ENGINE_FIXES`` with the reason. The counts are in the
assertion message and printed (``pytest -s``).

The paths: jlens has both APIs (``evaluate`` takes and gives Python values; ``evaluate_json`` takes
and gives JSON text, parsing only the fields the expression reads). jsonata-python has only the
first; the engine's JSON-text path for it is ``json.loads``, ``evaluate``, ``json.dumps``, so its
bare run is one and the same for both paths.

A case passes as the reference measurement judged it (``shared/reference/jsonata-engines.md``): the
value deep-equals the expected one (``true`` is not ``1``, key order does not matter, ``unordered``
arrays compare as multisets), ``undefinedResult`` wants nothing back, ``code`` (or ``error.code``)
an error with that code; messages and tokens are not compared. On the dict path None is "null or
undefined" (neither jlens's nor the engine's dict API tells them apart); the JSON-text path tells
them apart (``None`` versus ``"null"``).

How a case reaches the engine: its ``timelimit``/``depth`` become the engine's :class:`Limits`; a
case without them keeps the engine's default depth but gets ``UNTIMED`` seconds, not the 2 s default,
as a wall-clock limit is the machine's, not the language's (two performance cases take 2-3 s under
jsonata-python here). Its ``bindings`` (seven cases) are declared in a block around the expression,
as the engine's Bindings carry only seamline's own names (``$client``, ``$flow``, ``$constants``,
``$lookups``). An absent input is no document: ``evaluate(None)`` and ``evaluate_json(None)``.

The suite is fixed reference data: jsonata-js's ``test/test-suite`` (MIT, ``tests/data/jsonata-test-suite.LICENSE``)
at commit 6c7e95f, kept in the repository as ``tests/data/jsonata-test-suite.tar.xz`` (54 KB) and unpacked
once per run; ``JSONATA_TEST_SUITE`` names an unpacked copy instead.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.errors import TransformError
from engine.transform import BACKENDS, ExpressionSource, Limits, available_backends, compile_expression

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / "tests" / "data" / "jsonata-test-suite.tar.xz"
PATHS = ("dict", "json")
UNTIMED = 60.0  # seconds: the engine's timeout for a case that sets no timelimit

# Cases the engine passes and the bare backend fails, because the engine corrects the backend on
# purpose (engine/transform.py: _jsonata_python_fixes, _raw_syntax_error). Any other difference
# fails the test, and so does an entry here that is no longer a difference.
_NUMBER_D3030 = "$number of text that is no number is D3030; jsonata-python raises a raw ValueError"
_SORT_STABLE = "$sort with a comparator is JSONata's stable merge sort; jsonata-python's is not stable"
ENGINE_FIXES: dict[str, dict[str, str]] = {
    "jsonata-python": {
        "boolean-expresssions/case030": _NUMBER_D3030 + ' ("33 1/2")',
        "comments/case002": "an unclosed comment is S0106; jsonata-python's parser raises a raw IndexError",
        "function-number/case008": '$number("10e500") (not finite) is D3030; jsonata-python says D1001',
        "function-number/case009": _NUMBER_D3030,
        "function-number/case010": _NUMBER_D3030,
        "function-number/case011": _NUMBER_D3030,
        "function-number/case012": _NUMBER_D3030,
        "function-number/case018": _NUMBER_D3030,
        "function-sort/case007": "$sort of objects without a comparator is D3070; jsonata-python raises a TypeError",
        "function-sort/case009": _SORT_STABLE,
        "function-sort/case010": _SORT_STABLE,
        "function-string/case006": "$string(1e20) is written in full; jsonata-python writes 1e+20",
        "function-string/case030": "$string of a 16-digit id in full; jsonata-python writes 5.89084071224308e+15",
    },
    "jlens": {},
}

# Cases the bare backend passes under the pinned versions, on each path, measured with this runner
# over the 1,686 cases (and in shared/reference/jsonata-engines.md): a check on the runner itself.
BARE_PASSES = {("jlens", "0.25.0"): 1680, ("jsonata-python", "0.7.1"): 1616}
SUITE_CASES = 1686


class _Undefined:
    """JSONata's undefined, where an API tells it from null."""

    def __repr__(self) -> str:
        return "undefined"

    def __reduce__(self) -> str:
        return "UNDEFINED"  # pickled by name: the bare run's outcomes come back from a child process as this one


UNDEFINED: Any = _Undefined()


@dataclass(frozen=True, slots=True)
class Case:
    id: str  # group/file, with [i] for a file that holds several cases
    expr: str
    data: Any  # UNDEFINED when the case has no input
    bindings: dict[str, Any]
    result: Any  # UNDEFINED for undefinedResult; not read when code is set
    code: str | None
    unordered: bool = False
    timelimit: float | None = None  # seconds
    depth: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One run: a value (UNDEFINED; None is null, or "null or undefined" on the dict path), or an
    error with its JSONata code (None when it had none: a raw Python exception, say)."""

    value: Any = None
    error: bool = False
    code: str | None = None
    detail: str = field(default="", compare=False)

    def __str__(self) -> str:
        if self.error:
            return f"error {self.code or '(no code)'}: {self.detail}"[:160]
        return json.dumps(self.value, default=repr)[:160] if self.value is not UNDEFINED else "undefined"


def _failed(exc: BaseException, code: Any = None) -> Outcome:
    return Outcome(error=True, code=str(code) if code else None, detail=f"{type(exc).__name__}: {exc}"[:300])


Runs = dict[str, dict[str, Outcome]]  # path -> case id -> outcome


# -- the suite ----------------------------------------------------------------------------------


@functools.cache
def load_cases(suite: Path) -> tuple[Case, ...]:
    datasets = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (suite / "datasets").glob("*.json")}
    cases: list[Case] = []
    for path in sorted((suite / "groups").glob("*/*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        many = isinstance(raw, list)
        for i, spec in enumerate(raw if many else [raw]):
            expr = spec["expr"] if "expr" in spec else (path.parent / spec["expr-file"]).read_text(encoding="utf-8")
            if "data" in spec:
                data = spec["data"]
            elif spec.get("dataset") is not None:
                data = datasets[spec["dataset"]]
            else:
                data = UNDEFINED
            timelimit = spec.get("timelimit")
            cases.append(
                Case(
                    id=f"{path.parent.name}/{path.stem}" + (f"[{i}]" if many else ""),
                    expr=expr,
                    data=data,
                    bindings=spec.get("bindings") or {},
                    result=UNDEFINED if spec.get("undefinedResult") or "result" not in spec else spec["result"],
                    code=spec.get("code") or (spec.get("error") or {}).get("code"),
                    unordered=bool(spec.get("unordered")),
                    timelimit=timelimit / 1000 if timelimit is not None else None,
                    depth=spec.get("depth"),
                )
            )
    return tuple(cases)


def passes(case: Case, outcome: Outcome) -> bool:
    if case.code is not None:
        return outcome.error and outcome.code == case.code
    if outcome.error:
        return False
    got = outcome.value
    if case.result is UNDEFINED:
        return got is UNDEFINED or got is None  # None: the dict path's "null or undefined"
    if case.unordered and isinstance(case.result, list) and isinstance(got, list):
        return _same_multiset(case.result, got)
    return _same(case.result, got)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(expected: Any, got: Any) -> bool:
    if expected is None or isinstance(expected, bool | str):
        return type(got) is type(expected) and got == expected
    if _is_number(expected):
        return _is_number(got) and got == expected
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(_same, expected, got))
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and got.keys() == expected.keys()
            and all(_same(value, got[key]) for key, value in expected.items())
        )
    return False


def _same_multiset(expected: list[Any], got: list[Any]) -> bool:
    left = list(got)
    for item in expected:
        match = next((i for i, candidate in enumerate(left) if _same(item, candidate)), None)
        if match is None:
            return False
        left.pop(match)
    return not left


# -- bare backends ------------------------------------------------------------------------------


def _bare_jsonata_python(cases: tuple[Case, ...]) -> Runs:
    """jsonata-python's own API: ``Jsonata(expr).evaluate(data, frame)``, its runtime bounds for a case
    that sets limits, nulls kept apart from undefined (``set_output_convert_nulls(False)``; the input
    null is ``Utils.NULL_VALUE``, None being no input)."""
    import jsonata
    from jsonata.utils import Utils

    def run(case: Case) -> Outcome:
        try:
            expr = jsonata.Jsonata(case.expr)
            expr.set_output_convert_nulls(False)
            frame = jsonata.Jsonata.Frame(None)
            if case.timelimit is not None or case.depth is not None:
                timeout = int(case.timelimit * 1000) if case.timelimit is not None else None
                frame.set_runtime_bounds(timeout, case.depth)
            for name, value in case.bindings.items():
                frame.bind(name, value)
            data = None if case.data is UNDEFINED else Utils.NULL_VALUE if case.data is None else case.data
            got = expr.evaluate(data, frame)
        except jsonata.JException as exc:
            return _failed(exc, exc.error)
        except Exception as exc:  # jsonata-python lets raw ones out: ValueError, TypeError, IndexError...
            return _failed(exc)
        return Outcome(UNDEFINED if got is None else Utils.convert_nulls(got))

    runs: Runs = {"dict": {}, "json": {}}
    for case in cases:
        outcome = run(case)
        runs["json"][case.id] = outcome
        runs["dict"][case.id] = Outcome(None) if outcome.value is UNDEFINED and not outcome.error else outcome
    return runs


def _bare_jlens(cases: tuple[Case, ...]) -> Runs:
    """jlens's own API: ``Expression(expr)``, then ``evaluate`` (dict) and ``evaluate_json`` (text),
    with its ``timeout``/``max_depth`` options for a case that sets limits."""
    import jlens

    runs: Runs = {"dict": {}, "json": {}}
    for case in cases:
        options: dict[str, Any] = {}
        if case.timelimit is not None:
            options["timeout"] = case.timelimit
        if case.depth is not None:
            options["max_depth"] = case.depth
        bindings = case.bindings or None
        try:
            expr = jlens.Expression(case.expr)
        except jlens.JlensError as exc:
            runs["dict"][case.id] = runs["json"][case.id] = _failed(exc, exc.code)
            continue
        except Exception as exc:  # a lone surrogate in the text: UnicodeEncodeError
            runs["dict"][case.id] = runs["json"][case.id] = _failed(exc)
            continue
        try:
            runs["dict"][case.id] = Outcome(
                expr.evaluate(None if case.data is UNDEFINED else case.data, bindings, **options)
            )
        except jlens.JlensError as exc:
            runs["dict"][case.id] = _failed(exc, exc.code)
        except Exception as exc:
            runs["dict"][case.id] = _failed(exc)
        try:
            text = expr.evaluate_json(None if case.data is UNDEFINED else json.dumps(case.data), bindings, **options)
            runs["json"][case.id] = Outcome(UNDEFINED if text is None else json.loads(text))
        except jlens.JlensError as exc:
            runs["json"][case.id] = _failed(exc, exc.code)
        except Exception as exc:
            runs["json"][case.id] = _failed(exc)
    return runs


BARE: dict[str, Callable[[tuple[Case, ...]], Runs]] = {"jsonata-python": _bare_jsonata_python, "jlens": _bare_jlens}


# -- the engine ---------------------------------------------------------------------------------


def engine_text(case: Case) -> str:
    """The case's expression, its own bindings declared in a block around it."""
    if not case.bindings:
        return case.expr
    declared = "; ".join(f"${name} := {json.dumps(value)}" for name, value in case.bindings.items())
    return f"({declared};\n{case.expr}\n)"


def engine_limits(case: Case) -> Limits:
    return Limits(
        timeout=case.timelimit if case.timelimit is not None else UNTIMED,
        max_depth=case.depth if case.depth is not None else Limits().max_depth,
    )


def _engine(cases: tuple[Case, ...], backend: str) -> Runs:
    """Through engine.transform only; every failure must arrive as a TransformError."""
    runs: Runs = {"dict": {}, "json": {}}
    for case in cases:
        source = ExpressionSource(engine_text(case), f"{case.id}.jsonata")
        try:
            expression = compile_expression(source, backend=backend, limits=engine_limits(case))
        except TransformError as exc:
            runs["dict"][case.id] = runs["json"][case.id] = _failed(exc, exc.code)
            continue
        try:
            runs["dict"][case.id] = Outcome(expression.evaluate(None if case.data is UNDEFINED else case.data))
        except TransformError as exc:
            runs["dict"][case.id] = _failed(exc, exc.code)
        try:
            text = expression.evaluate_json(None if case.data is UNDEFINED else json.dumps(case.data))
            runs["json"][case.id] = Outcome(UNDEFINED if text is None else json.loads(text))
        except TransformError as exc:
            runs["json"][case.id] = _failed(exc, exc.code)
    return runs


_RUNS: dict[str, tuple[Runs, Runs, float]] = {}


def runs_of(backend: str, cases: tuple[Case, ...]) -> tuple[Runs, Runs, float]:
    """Bare and engine runs of every case, both paths, and the seconds they took (once per backend)."""
    if backend not in _RUNS:
        started = time.perf_counter()
        # The bare run in a child process beside the engine's here: two cores, about half the wall time (a few
        # performance cases take seconds under jsonata-python).
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as child:
            bare_run = child.submit(BARE[backend], cases)
            engine = _engine(cases, backend)
            bare = bare_run.result()
        _RUNS[backend] = (bare, engine, time.perf_counter() - started)
    return _RUNS[backend]


# -- the tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, ...]:
    return load_cases(suite_dir(tmp_path_factory))


def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$JSONATA_TEST_SUITE, else the repository's archive unpacked into this run's temporary folder."""
    named = os.environ.get("JSONATA_TEST_SUITE")
    if named:
        return Path(named)
    import tarfile

    into = tmp_path_factory.mktemp("jsonata-suite")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(into, filter="data")
    return into / "jsonata-test-suite"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_engine_passes_the_cases_the_bare_backend_passes(backend: str, path: str, cases: tuple[Case, ...]) -> None:
    if backend not in available_backends():
        pytest.skip(f"JSONata backend {backend} is not installed")
    bare_runs, engine_runs, seconds = runs_of(backend, cases)
    bare = {case.id for case in cases if passes(case, bare_runs[path][case.id])}
    engine = {case.id for case in cases if passes(case, engine_runs[path][case.id])}
    fixes = ENGINE_FIXES.get(backend, {})
    by_id = {case.id: case for case in cases}

    def line(case_id: str, label: str) -> str:
        case = by_id[case_id]
        want = f"error {case.code}" if case.code else "undefined" if case.result is UNDEFINED else case.result
        return (
            f"  {label} {case_id}: {case.expr.strip()[:80]!r} wants {str(want)[:60]}\n"
            f"      bare:   {bare_runs[path][case_id]}\n      engine: {engine_runs[path][case_id]}"
        )

    summary = (
        f"{backend}, {path} path: bare {len(bare)}/{len(cases)}, engine {len(engine)}/{len(cases)}"
        f" ({len(engine - bare)} gained, {len((engine - bare) & set(fixes))} of them listed fixes;"
        f" {len(bare - engine)} lost;"
        f" both paths ran in {seconds:.1f} s)"
    )
    print(summary)
    problems = [line(case_id, "LOST") for case_id in sorted(bare - engine)]
    problems += [line(case_id, "GAINED, not in ENGINE_FIXES") for case_id in sorted(engine - bare - set(fixes))]
    problems += [
        f"  ENGINE_FIXES lists {case_id}, no longer a gain" for case_id in sorted(set(fixes) - (engine - bare))
    ]
    assert not problems, summary + "\n" + "\n".join(problems)

    version = importlib.metadata.version(backend)
    known = BARE_PASSES.get((backend, version))
    if known is not None and len(cases) == SUITE_CASES:
        assert len(bare) == known, f"{summary}: the bare runner judged {len(bare)} passes, {known} measured"
