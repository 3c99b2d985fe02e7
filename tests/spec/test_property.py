"""Property: whatever a spec author does to a valid spec, `seamline validate` answers with located errors.

Starting from valid specs (the reference client specs/acme with its base specs/_base, and a small
standalone spec), hypothesis deletes, renames and retypes keys, and inserts garbage, tabs and
unbalanced brackets into the text of the spec, its base, its transforms and its code tables, or
cuts the text short. Whatever comes out:

* ``seamline validate`` exits 0 or 1, by ``sys.exit``, never by a traceback;
* every line it prints is a diagnostic in the ``file:line:col: severity: message`` form, a hint,
  or the summary;
* every diagnostic is located inside the file it names: its line exists there and its column is on
  that line (or just past its end), except the few whole-file errors listed in ``WHOLE_FILE``;
* the exit code is 1 exactly when an error was printed.

That a position is the *right* one is pinned by the table in ``test_broken_specs.py``; this test
finds the inputs nobody thought of. Deterministic (``derandomize``) and fast enough for every run.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    "SEAMLINE_SECRETS_DIR": "/nonexistent/seamline-secrets",
    "SHOP_TOKEN": "not-a-real-token",
}

STANDALONE = {
    "seamline.yaml": """\
seamline: 1
client: demo
constants: { website_id: 1 }
systems:
  shop:
    connector: magento
    url: https://shop.example.com
    auth: { bearer: { token: "{{ secret.SHOP_TOKEN }}" } }
    limits: { rate: 5/s, concurrency: 2, timeout: 10s }
  bus: { connector: amqp, url: "{{ env.AMQP_URL }}" }
lookups:
  units: { values: { KAR: 12, ST: 1 } }
  plants: lookups/plants.csv
flows:
  stock:
    trigger: { event: { system: bus, queue: stock.changed } }
    transform: |
      {
        "sku": sku,
        "source_code": $lookup($lookups.plants, plant),
        "quantity": $uom($number(qty), unit, $lookups.units),
        "website_ids": [$constants.website_id]
      }
    target: { system: shop, write: source-items, key: [sku, source_code] }
  orders:
    trigger: { schedule: { every: 5m, overlap: 120s } }
    source: { system: shop, read: orders, cursor: updated_at }
    transform: transforms/order.jsonata
    targets:
      - { system: shop, write: order-comments, key: increment_id }
      - { system: bus, write: orders.created, transform: '{ "id": increment_id }' }
  hook:
    trigger: { event: { webhook: /hooks/customer } }
    target: { system: shop, write: customers, key: email, mode: update }
""",
    "transforms/order.jsonata": '{\n  "increment_id": increment_id,\n  "comment": "Status " & $uppercase(status)\n}\n',
    "lookups/plants.csv": "plant,source_code\n1000,main\n2000,north\n",
}

# Errors about a file as a whole, printed without a line; each must be one of these.
WHOLE_FILE = ("file is empty", "cannot read file")

_LOCATED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<severity>error|warning|note): (?P<msg>.+)$")
_WHOLE = re.compile(r"^(?P<file>[^:]+): (?P<severity>error|warning|note): (?P<msg>.+)$")
_SUMMARY = re.compile(r"^(valid|invalid): \d+ specs? checked, \d+ errors?, \d+ warnings?, \d+ notes? \(\d+ ms\)$")

GARBAGE = [
    "\t",
    "  \t",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ":",
    ": ",
    "- ",
    "&a ",
    "*a",
    "*missing",
    "!!int ",
    "!!binary ",
    "!custom ",
    "| ",
    "> ",
    "'",
    '"',
    "#",
    "\n---\n",
    "\n...\n",
    "\n",
    "{{",
    "}}",
    "{{ env.X }}",
    "{{ envv.X }}",
    "{% if %}",
    "%",
    "@",
    "`",
    "?",
    ",",
    "<<: *a\n",
    "\x00",
    "\x85",
    "\u2028",
    "\ufeff",
    "$",
    "$lookup(",
    "$constants.",
    "/*",
    "\\",
    "ä",
    "\r",
]

BAD_BYTES = [b"\xff", b"\xc3", b"\xe2\x80", b"\x00", b"\r", b"\xef\xbb\xbf"]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "yes",
            "{{ env.NOPE }}",
            "{{ secret.NOPE }}",
            "{{ env.X ",
            "{{ envv.X }}",
            "x.jsonata",
            "../x.jsonata",
            "lookups/none.csv",
            "magneto",
            "/price",
            "/hooks/customer",
            "0 */4 * *",
            "10 sec",
            "5/s",
            "$uppercas(x)",
            "$lookup('nope', x)",
            "(",
            "products",
            "upsrt",
        ]
    ),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=8), SCALARS, max_size=3),
)
KEYS = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["seamline", "client", "systems", "flows", "trigger", "source", "target", "targets"]),
    st.sampled_from(["transform", "connector", "auth", "url", "extends", "lookups", "constants", "<<", "1", "on"]),
)


def _tree(files: dict[str, str]) -> dict[str, bytes]:
    return {name: text.encode("utf-8") for name, text in files.items()}


def _acme() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for folder in ("acme", "_base"):
        for path in sorted((ROOT / "specs" / folder).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(ROOT))] = path.read_bytes()
    return out


SOURCES = {"acme": (_acme(), "specs/acme/seamline.yaml"), "standalone": (_tree(STANDALONE), "seamline.yaml")}


@contextmanager
def written(files: dict[str, bytes]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="seamline-prop-") as tmp:
        root = Path(tmp)
        for name, raw in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
        yield root


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


def _mutate_data(data: Any, path: tuple[Any, ...], op: str, draw: Any) -> Any:
    if not path:
        return draw(VALUES)  # the whole document retyped
    parent, last = _parent(data, path), path[-1]
    if op == "delete":
        del parent[last]
    elif op == "rename" and isinstance(parent, dict):
        new_key = draw(KEYS)
        parent[new_key] = parent.pop(last)
    else:
        parent[last] = draw(VALUES)
    return data


def check_validate(root: Path, spec: str) -> None:
    """Run `seamline validate` on the spec in ``root`` and check the properties of its answer."""
    result = CliRunner().invoke(main, ["validate", str(root / spec)], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    lines = result.output.rstrip("\n").split("\n")
    assert _SUMMARY.match(lines[-1]), lines[-1]
    errors = 0
    for line in lines[:-1]:
        if line.startswith("    hint: "):
            continue
        located, whole = _LOCATED.match(line), _WHOLE.match(line)
        assert located or whole, f"not a diagnostic line: {line!r}\n{result.output}"
        if located:
            file, number, column = Path(located["file"]), int(located["line"]), int(located["col"])
            assert file.is_relative_to(root), line
            assert file.is_file(), line
            lines_of_file = re.split(r"\r\n|\r|\n", file.read_bytes().decode("utf-8-sig", errors="replace"))
            assert 1 <= number <= len(lines_of_file), f"line out of the file: {line}\n{result.output}"
            assert 1 <= column <= len(lines_of_file[number - 1]) + 1, f"column out of the line: {line}\n{result.output}"
            severity = located["severity"]
        else:
            assert whole is not None
            assert whole["msg"].startswith(WHOLE_FILE), f"an error without a place: {line}\n{result.output}"
            severity = whole["severity"]
        errors += severity == "error"
    assert result.exit_code == (1 if errors else 0), result.output
    event(f"exit {result.exit_code}")


PROPERTY = settings(
    max_examples=int(os.environ.get("SEAMLINE_PROPERTY_EXAMPLES", "50")),  # 150+ for a deeper look
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(source=st.sampled_from(sorted(SOURCES)), data=st.data())
def test_mutated_structure_gives_located_errors(source: str, data: st.DataObject) -> None:
    """Delete, rename or retype one to three keys of the spec or its base."""
    files, spec = SOURCES[source]
    name = data.draw(st.sampled_from(sorted(n for n in files if n.endswith(".yaml"))), label="file")
    document = yaml.safe_load(files[name])
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        path = data.draw(st.sampled_from(list(_paths(document))), label="path")
        op = data.draw(st.sampled_from(["delete", "rename", "retype"]), label="op")
        document = _mutate_data(document, path, op, data.draw)
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    with written({**files, name: text.encode("utf-8")}) as root:
        check_validate(root, spec)


def _mangle(raw: bytes, data: st.DataObject) -> bytes:
    text = raw.decode("utf-8")
    op = data.draw(st.sampled_from(["insert", "insert", "truncate", "delete", "indent-tab", "bytes"]), label="op")
    at = data.draw(st.integers(min_value=0, max_value=len(text)), label="at")
    if op == "insert":
        garbage = data.draw(st.one_of(st.sampled_from(GARBAGE), st.text(max_size=4)), label="garbage")
        return (text[:at] + garbage + text[at:]).encode("utf-8")
    if op == "truncate":
        return text[:at].encode("utf-8")
    if op == "delete":
        size = data.draw(st.integers(min_value=1, max_value=20), label="size")
        return (text[:at] + text[at + size :]).encode("utf-8")
    if op == "indent-tab":
        start = text.rfind("\n", 0, at) + 1
        return (text[:start] + "\t" + text[start:].lstrip(" ")).encode("utf-8")
    cut = len(text[:at].encode("utf-8"))
    return raw[:cut] + data.draw(st.sampled_from(BAD_BYTES), label="bytes") + raw[cut:]


@PROPERTY
@given(source=st.sampled_from(sorted(SOURCES)), data=st.data())
def test_mangled_text_gives_located_errors(source: str, data: st.DataObject) -> None:
    """Garbage, tabs, brackets, bad bytes, cuts: one to three of them in the spec, its base, a transform or a table."""
    files = dict(SOURCES[source][0])
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="edits")):
        name = data.draw(st.sampled_from(sorted(files)), label="file")
        raw = _mangle(files[name], data)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            files[name] = raw  # a bad byte stays; later edits go elsewhere
            break
        files[name] = raw
    with written(files) as root:
        check_validate(root, SOURCES[source][1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file is empty; a spec starts with 'seamline: 1'"),
        ("\n\n", "file is empty; a spec starts with 'seamline: 1'"),
    ],
    ids=["empty", "blank-lines"],
)
def test_whole_file_errors_say_so(text: str, message: str, tmp_path: Path) -> None:
    """The errors allowed to have no line are exactly those about the file as a whole."""
    spec = tmp_path / "seamline.yaml"
    spec.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(spec)], env=ENV)
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == f"{spec}: error: {message}"


def test_a_file_of_comments_points_at_the_first_one(tmp_path: Path) -> None:
    spec = tmp_path / "seamline.yaml"
    spec.write_text("\n# only a comment\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(spec)], env=ENV)
    assert result.exit_code == 1
    assert (
        result.output.splitlines()[0] == f"{spec}:2:1: error: file has only comments; a spec starts with 'seamline: 1'"
    )


_ALL_SET = {
    name: "x"
    for name in re.findall(
        r"(?:env|secret)\.([A-Z_][A-Z0-9_]*)",
        "".join(raw.decode("utf-8") for files, _ in SOURCES.values() for raw in files.values()),
    )
}


def test_the_sources_are_valid() -> None:
    """What a mutation breaks is the mutation's doing: the starting points are clean, even strictly."""
    for _name, (files, spec) in sorted(SOURCES.items()):
        with written(files) as root:
            result = CliRunner().invoke(main, ["validate", "--strict", str(root / spec)], env={**ENV, **_ALL_SET})
            assert result.exit_code == 0, result.output
