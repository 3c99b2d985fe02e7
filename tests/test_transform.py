"""The JSONata evaluator under both backends: helpers, jsonata-python's fixes, canonical output,
errors with their place, limits, bindings and backend choice.

Every test that evaluates runs under each backend in BACKENDS; a backend that is not installed
fails the test (CI installs both: pip install -e '.[dev]').
"""

from __future__ import annotations

import importlib.util
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.errors import TerminalError, TransformError, UsageError
from engine.flow import load_client
from engine.transform import (
    BACKENDS,
    Bindings,
    Expression,
    ExpressionSource,
    Limits,
    available_backends,
    canonical,
    canonical_json,
    compile_expression,
    resolve_backend,
)
from tests.conftest import WriteFiles

UNITS = {"ST": "1", "PC": "1", "KAR": "12", "PAL": "480"}  # as read from lookups/units.csv
NOW = "2025-01-15T08:00:00.000Z"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name not in available_backends():
        pytest.fail(f"JSONata backend {name} is not installed; the suite runs both: pip install -e '.[dev]'")
    return name


def compiled(text: str, backend: str, *, file: str = "test.jsonata", limits: Limits | None = None) -> Expression:
    return compile_expression(ExpressionSource(text, file), backend=backend, limits=limits)


def evaluate(text: str, backend: str, data: Any = None, bindings: Bindings | None = None) -> Any:
    bindings = bindings or Bindings(client="acme", flow="inventory", lookups={"units": UNITS}, now=NOW)
    return compiled(text, backend).evaluate({} if data is None else data, bindings, record_id="R-1")


def failure(text: str, backend: str, data: Any = None, bindings: Bindings | None = None) -> TransformError:
    with pytest.raises(TransformError) as caught:
        evaluate(text, backend, data, bindings)
    return caught.value


# -- helpers ------------------------------------------------------------------------------------

HELPER_EXAMPLES = [
    # $sapDate: the README's three forms, SAP's empty date, ISO, blanks
    ('$sapDate("20240131")', "2024-01-31"),
    ('$sapDate("31.01.2024")', "2024-01-31"),
    ('$sapDate("/Date(1706659200000)/")', "2024-01-31"),
    ('$sapDate("/Date(1706659200000+0100)/")', "2024-01-31"),
    ('$sapDate("1.2.2024")', "2024-02-01"),
    ('$sapDate("2024-01-31T23:59:59")', "2024-01-31"),
    ('$sapDate("00000000")', None),
    ('$sapDate("   ")', None),
    ('{"launch": $sapDate("00000000"), "sku": "4711"}', {"sku": "4711"}),  # nothing: the key is left out
    ("$sapDate(missing)", None),
    # $sapTimestamp
    ('$sapTimestamp("20240131143000")', "2024-01-31T14:30:00Z"),
    ('$sapTimestamp("/Date(1706711400000)/")', "2024-01-31T14:30:00Z"),
    ('$sapTimestamp("2024-01-31T15:30:00+01:00")', "2024-01-31T14:30:00Z"),
    ('$sapTimestamp("2024-01-31T14:30:00")', "2024-01-31T14:30:00Z"),
    ('$sapTimestamp("00000000000000")', None),
    # $decimal: the README's examples, then the ERP variants around them
    ('$decimal("1.234,50")', 1234.5),
    ('$decimal("12,50-")', -12.5),
    ('$decimal("1.234", ",")', 1234),
    ('$decimal("1.234", ".")', 1.234),
    ('$decimal("1,234.50")', 1234.5),
    ('$decimal("1,234,567")', 1234567),
    ('$decimal("1 234,5")', 1234.5),
    ('$decimal("1\'234.50")', 1234.5),
    ('$decimal("-3")', -3),
    ('$decimal("0,000")', 0),
    ("$decimal(12.5)", 12.5),
    ('$decimal("")', None),
    # $uom with the units table of specs/acme (values are strings, as read from CSV)
    ('$uom(2, "KAR", $lookups.units)', 24),
    ('$uom("41", "KAR", $lookups.units)', 492),
    ('$uom("1,5", "PAL", $lookups.units)', 720),
    ('$uom(3, "ST", $lookups.units)', 3),
    ('$uom(missing, "KAR", $lookups.units)', None),
    # $materialNumber / $padMaterial
    ('$materialNumber("000000000000004711")', "4711"),
    ('$materialNumber("000000000000012345")', "12345"),
    ('$materialNumber("HV-200-SET")', "HV-200-SET"),
    ('$materialNumber("000000000000000000")', "0"),
    ("$materialNumber(4711)", "4711"),
    ('$padMaterial("4711")', "000000000000004711"),
    ('$padMaterial("12345")', "000000000000012345"),
    ('$padMaterial("4711", 40)', "0" * 36 + "4711"),
    ('$padMaterial("HV-200-SET")', "HV-200-SET"),
    ('$padMaterial($materialNumber("000000000000004711"))', "000000000000004711"),
    ('$padMaterial("")', None),
]


@pytest.mark.parametrize(("expression", "expected"), HELPER_EXAMPLES, ids=[e for e, _ in HELPER_EXAMPLES])
def test_helper_examples(expression: str, expected: Any, backend: str) -> None:
    result = evaluate(expression, backend)
    assert result == expected
    assert type(result) is type(expected)  # 1234 stays an int, 1234.5 a float, "4711" a string


HELPER_ERRORS = [
    ('$sapDate("20241341")', "D3140", "$sapDate: '20241341' is not a valid date (month must be in 1..12)"),
    ('$sapDate("31.02.2024")', "D3140", "$sapDate: '31.02.2024' is not a valid date"),
    (
        '$sapDate("Jan 31")',
        "D3140",
        "$sapDate: cannot read 'Jan 31' as a date; expected YYYYMMDD, DD.MM.YYYY or /Date(ms)/",
    ),
    (
        '$sapTimestamp("20241301000000")',
        "D3140",
        "$sapTimestamp: cannot read '20241301000000'; expected YYYYMMDDhhmmss, /Date(ms)/ or ISO 8601",
    ),
    ('$decimal("12 pcs")', "D3030", "$decimal: cannot read '12 pcs' as a number"),
    ('$decimal("1", ";")', "D3030", "$decimal: the decimal separator must be ',' or '.', not ';'"),
    (
        '$decimal("1.234,50", ".")',  # a US-format mapping fed German data must not read 1.2345
        "D3030",
        "$decimal: cannot read '1.234,50' with '.' as the decimal separator; is it written with ','?",
    ),
    ('$decimal("1,234.50", ",")', "D3030", "$decimal: cannot read '1,234.50' with ',' as the decimal separator"),
    ("$decimal(true)", "D3030", "$decimal: expected a number or a numeric string, got a boolean"),
    ('$uom(2, "XX", $lookups.units)', "D3032", "$uom: unit 'XX' is not in the table (known: KAR, PAL, PC, ST)"),
    ('$uom(2, "KAR", "units")', "D3031", "$uom: the third argument must be a code table, e.g. $lookups.units"),
    ('$uom("a lot", "KAR", $lookups.units)', "D3030", "$decimal: cannot read 'a lot' as a number"),
    ('$padMaterial("1234567890123456789")', "D3033", "$padMaterial: '1234567890123456789' is longer than 18 digits"),
]


@pytest.mark.parametrize(("expression", "code", "message"), HELPER_ERRORS, ids=[e for e, _, _ in HELPER_ERRORS])
def test_helper_errors(expression: str, code: str, message: str, backend: str) -> None:
    exc = failure(expression, backend)
    assert exc.code == code
    assert exc.message.startswith(f"JSONata error {code}: {message}"), exc.message
    assert (exc.client, exc.flow, exc.record_id) == ("acme", "inventory", "R-1")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$materialNumber(material)", "4711"),
        ("$padMaterial(material)", "000000000000004711"),
        ("$sapDate(date)", "2024-01-31"),
        ("$sapTimestamp(stamp)", "2024-01-31T14:30:00Z"),
        ("$decimal(qty)", 2),
        ('$uom(qty, "KAR", $lookups.units)', 24),
    ],
)
def test_helpers_read_integral_numbers_alike_under_both_backends(expression: str, expected: Any, backend: str) -> None:
    # an ERP export that writes every number as a float: 4711.0, 20240131.0
    data = {"material": 4711.0, "date": 20240131.0, "stamp": 20240131143000.0, "qty": 2.0}
    assert evaluate(expression, backend, data) == expected


def test_a_helper_error_points_at_the_call(backend: str) -> None:
    text = '{\n  "sku": material,\n  "since": $sapDate(changed)\n}'
    exc = failure(text, backend, {"material": "4711", "changed": "2024-99-99"})
    assert (exc.file, exc.line, exc.column, exc.code) == ("test.jsonata", 3, 12, "D3140")


def test_a_helper_called_more_than_once_is_placed_at_the_call_that_failed(backend: str) -> None:
    text = '{\n  "created": $sapDate(created),\n  "changed": $sapDate(changed),\n  "qty": [1].$decimal($$.qty)\n}'
    exc = failure(text, backend, {"created": "20240101", "changed": "gestern"})
    assert (exc.line, exc.column, exc.code) == (3, 14, "D3140")
    exc = failure(text, backend, {"created": "20240101", "changed": "20240102", "qty": "zwölf"})
    assert (exc.line, exc.column, exc.code) == (4, 14, "D3030")


# -- jsonata-python's fixes, and jlens agreeing ---------------------------------------------------


@pytest.mark.parametrize("text", ["12 pcs", " 12 ", "1.", ".5", "+5", "", "1e1000", "-0x1F"])
def test_number_of_a_non_number_is_D3030(text: str, backend: str) -> None:
    exc = failure("$number(qty)", backend, {"qty": text})
    assert exc.code == "D3030"
    assert exc.message == f"JSONata error D3030: Unable to cast value to a number: {json.dumps(text)}"
    assert (exc.line, exc.column) == (1, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", 12),
        ("-1.5e2", -150),
        ("0.25", 0.25),
        ("0x1F", 31),
        ("0o17", 15),
        ("0b101", 5),
        ("1E3", 1000),
        # leading zeros, as JSONata reads them (and ERPs write them: SAP's padded quantities)
        ("0123", 123),
        ("00", 0),
        ("-007", -7),
        ("000.00123000", 0.00123),
        ("0000000042", 42),
    ],
)
def test_number_of_a_number(text: str, expected: float, backend: str) -> None:
    assert evaluate("$number(qty)", backend, {"qty": text}) == expected


@pytest.mark.parametrize("text", ["٣", "12\n", "0b102", "1e", "--1", "0x"])
def test_number_of_text_that_only_looks_like_one_is_D3030(text: str, backend: str) -> None:
    assert failure("$number(qty)", backend, {"qty": text}).code == "D3030"


def test_number_of_text_that_only_starts_with_a_base_prefix(backend: str) -> None:
    # JSONata gives NaN (written null) for "0x1G": its pattern anchors only the first alternative.
    # jlens follows it; seamline's jsonata-python $number says D3030, on purpose (transform.py).
    if backend == "jlens":
        assert evaluate("$number(qty)", backend, {"qty": "0x1G"}) is None
    else:
        assert failure("$number(qty)", backend, {"qty": "0x1G"}).code == "D3030"


def test_number_and_string_take_the_context_when_called_without_an_argument(backend: str) -> None:
    assert evaluate("qty.$number()", backend, {"qty": "0042"}) == 42
    assert evaluate("items.qty.$number()", backend, {"items": [{"qty": "1"}, {"qty": "02"}]}) == [1, 2]
    assert evaluate("[1..3].$string()", backend) == ["1", "2", "3"]
    assert evaluate('[1..2].("Item " & $string())', backend) == ["Item 1", "Item 2"]
    assert evaluate("id.$string()", backend, {"id": 1234567890123456}) == "1234567890123456"
    assert evaluate("$string()", backend, {"a": [4, True]}) == '{"a":[4,true]}'


@pytest.mark.parametrize(
    ("expression", "code"),
    [
        ("$number([1])", "T0410"),
        ('$number({"qty": 1})', "T0410"),
        ("$number(null)", "T0410"),
        ("$number(1, 2)", "T0410"),
        ("$number($number)", "T0410"),
        ("$number()", "T0411"),  # the context here is the whole record, an object
        ("$string(2, 3)", "T0410"),
        ('$string(1, "yes")', "T0410"),
        ("$sort([2, 1], 1)", "T0410"),
        ("$sort()", "T0410"),
    ],
)
def test_number_string_and_sort_check_their_arguments_as_jsonata_does(expression: str, code: str, backend: str) -> None:
    assert failure(expression, backend, {"qty": "7"}).code == code


def test_a_function_as_an_argument(backend: str) -> None:
    assert evaluate("$string($string)", backend) == ""
    assert evaluate("$string($sapDate)", backend) == ""  # a seamline helper is a function too
    assert evaluate("$string([1, $string, function($x){$x}])", backend) == '[1,"",""]'
    assert evaluate('$string({"f": $number})', backend) == '{"f":""}'
    assert evaluate('$map(["1", "02"], $number)', backend) == [1, 2]
    # $map hands a function as many arguments as it takes: the index is not $string's prettify flag
    assert evaluate('$map([{"a": 1}, {"b": 2}], $string)', backend) == ['{"a":1}', '{"b":2}']
    assert evaluate('$number(?)("7")', backend) == 7


def test_string_writes_objects_and_arrays_as_jsonata_does(backend: str) -> None:
    data = {"name": "Müller – Straße", "price": 0.1 + 0.2, "id": 1234567890123456.0, "tiny": 1e-7, "none": None}
    assert evaluate("$string($)", backend, data) == (
        '{"name":"Müller – Straße","price":0.3,"id":1234567890123456,"tiny":1e-7,"none":null}'
    )
    assert evaluate('$string({"a": [1, {"b": {}}], "c": []}, true)', backend) == (
        '{\n  "a": [\n    1,\n    {\n      "b": {}\n    }\n  ],\n  "c": []\n}'
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (1234567890123456, "1234567890123456"),  # a 16-digit id: every digit, no exponent
        (1234567890123456.0, "1234567890123456"),
        (9007199254740993, "9007199254740992"),  # beyond 2**53: what a double holds, as JavaScript
        (12345678901234567890, "12345678901234567000"),
        (4711000000000000000, "4711000000000000000"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (0.1 + 0.2, "0.3"),  # 15 significant digits
        (1 / 3, "0.333333333333333"),
        (1e-6, "0.000001"),
        (1.5e-7, "1.5e-7"),
        (-0.0, "0"),
        (2457.0, "2457"),
    ],
    ids=repr,
)
def test_string_of_numbers(data: float, expected: str, backend: str) -> None:
    assert evaluate("$string(id)", backend, {"id": data}) == expected


def test_string_of_long_ids_inside_objects_and_literals(backend: str) -> None:
    assert evaluate('$string({"id": id, "qty": 2.0})', backend, {"id": 1234567890123456}) == (
        '{"id":1234567890123456,"qty":2}'
    )
    assert evaluate("$string(1234567890123456) & '-' & $string(1e21)", backend) == "1234567890123456-1e+21"


SORT_ITEMS = [{"id": i, "prio": prio} for i, prio in enumerate([2, 1, 2, 0, 1, 2, 0, 1, 0, 2, 1, 0, 2, 2, 1, 0])]


def test_sort_with_a_comparator_is_stable(backend: str) -> None:
    result = evaluate("$sort(items, function($a, $b) { $a.prio > $b.prio }).id", backend, {"items": SORT_ITEMS})
    assert result == [item["id"] for item in sorted(SORT_ITEMS, key=lambda item: item["prio"])]
    descending = evaluate("$sort(items, function($a, $b) { $a.prio < $b.prio }).id", backend, {"items": SORT_ITEMS})
    assert descending == [item["id"] for item in sorted(SORT_ITEMS, key=lambda item: -item["prio"])]


def test_order_by_is_stable(backend: str) -> None:
    result = evaluate("items^(prio).id", backend, {"items": SORT_ITEMS})
    assert result == [item["id"] for item in sorted(SORT_ITEMS, key=lambda item: item["prio"])]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$sort([3, 1, 2.5])", [1, 2.5, 3]),
        ('$sort(["b", "a", "C"])', ["C", "a", "b"]),
        ('$sort([{"a": 1}])', [{"a": 1}]),  # one item: nothing to compare, as JSONata
        ("$sort([])", []),
        ("$sort(missing)", None),
    ],
)
def test_sort_without_a_comparator(expression: str, expected: Any, backend: str) -> None:
    assert evaluate(expression, backend) == expected


@pytest.mark.parametrize("expression", ['$sort([{"a": 1}, {"a": 0}])', '$sort([1, "a"])'])
def test_sort_of_mixed_or_objects_without_a_comparator_is_D3070(expression: str, backend: str) -> None:
    exc = failure(expression, backend)
    assert exc.code == "D3070"
    assert "single argument form of the sort function" in exc.message


def test_jsonata_python_messages_read_as_jsonata_writes_them(backend: str) -> None:
    exc = failure("$uppercase(qty)", backend, {"qty": 5})
    assert exc.message == 'JSONata error T0410: Argument 1 of function "uppercase" does not match function signature'
    with pytest.raises(TransformError) as caught:
        compiled('{"a": b e}', backend)
    assert caught.value.message == 'JSONata syntax error S0202: Expected "}", got "e"'


# -- canonical output ---------------------------------------------------------------------------


def test_canonical_json_writes_integral_floats_as_integers() -> None:
    assert canonical_json({"qty": 2457.0}) == '{\n  "qty": 2457\n}'
    assert canonical_json({"qty": 2457.0, "price": 189.9}, indent=None) == '{"qty": 2457, "price": 189.9}'
    assert canonical_json({"name": "Schraube M8 – Edelstahl"}, indent=None) == '{"name": "Schraube M8 – Edelstahl"}'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2457.0, 2457),
        (-0.0, 0),
        (1e16, 10000000000000000),
        (1.2345678901234567e19, 12345678901234567000),
        (12345678901234567890, 12345678901234567000),  # an int a double cannot hold: rounded as JavaScript
        (9007199254740993, 9007199254740992),
        (1e21, 1e21),
        (1.5, 1.5),
        (float("nan"), None),
        (float("inf"), None),
        (True, True),
        ((1.0, [2.0, {"a": 3.0}]), [1, [2, {"a": 3}]]),
    ],
    ids=repr,
)
def test_canonical_values(value: Any, expected: Any) -> None:
    result = canonical(value)
    assert result == expected
    assert type(result) is type(expected)


def test_integral_results_leave_as_integers(backend: str) -> None:
    result = evaluate(
        '{"a": qty * 1, "b": 4914 / 2, "c": 0.5 + 0.5, "d": weight}', backend, {"qty": 2457.0, "weight": 2.0}
    )
    assert canonical_json(result, indent=None) == '{"a": 2457, "b": 2457, "c": 1, "d": 2}'


ERP_TO_MAGENTO = """\
/* SAP material master (OData V2) -> Magento product, the shape of specs/_base product mapping */
(
  $desc := function($lang) { to_Description.results[Language = $lang].ProductDescription };
  $sales := to_SalesDelivery.results[ProductSalesOrg = $constants.sales_org][0];
  $blocked := IsMarkedForDeletion or CrossPlantStatus in ["Z9", "99"];
  {
    "sku": $materialNumber(Product),
    "erp_id": ProductUUIDNumber,
    "erp_id_text": $string(ProductUUIDNumber),
    "name": $desc("EN") ? $desc("EN") : $materialNumber(Product),
    "status": $blocked ? 2 : 1,
    "price": $number(Price) * 1.0,
    "weight": $decimal(GrossWeight),
    "net_weight": NetWeight,
    "volume": $round($decimal(Volume) * 1000, 3),
    "created": $sapDate(CreationDate),
    "changed": $sapTimestamp(LastChangeDateTime),
    "imported_at": $now(),
    "source": $client & "/" & $flow,
    "extension_attributes": {
      "website_ids": [$constants.website_id],
      "stock_item": { "qty": $uom(Stock, BaseUnit, $lookups.units), "is_in_stock": $decimal(Stock) > 0 }
    },
    "custom_attributes": [
      { "attribute_code": "color", "value": ZZ_COLOR },
      { "attribute_code": "name_de", "value": $desc("DE") },
      { "attribute_code": "name_fr", "value": $desc("FR") },
      { "attribute_code": "plants", "value": $join(to_Plant.results.Plant, ",") },
      { "attribute_code": "min_qty", "value": $number($sales.MinimumOrderQuantity) },
      { "attribute_code": "gtin", "value": ProductStandardID }
    ][$exists(value)],
    "tier_prices": $sort(Scales, function($a, $b) { $number($a.qty) > $number($b.qty) }).{
      "qty": $number(qty),
      "value": $round($number(price) * (1 - $number(discount) / 100), 2)
    },
    "tags": $distinct(Tags)
  }
)
"""

ERP_RECORDS: list[dict[str, Any]] = [
    {
        "Product": "000000000000004711",
        "ProductUUIDNumber": 1234567890123456,
        "IsMarkedForDeletion": False,
        "CrossPlantStatus": "",
        "Price": "189.90",
        "GrossWeight": "1.234,5",
        "NetWeight": 1100.0,
        "Volume": "0,0125",
        "CreationDate": "/Date(1706659200000)/",
        "LastChangeDateTime": "20240131143000",
        "Stock": "41",
        "BaseUnit": "KAR",
        "ZZ_COLOR": "Edelstahl gebürstet",
        "to_Description": {
            "results": [
                {"Language": "EN", "ProductDescription": "Hex bolt M8 × 40"},
                {"Language": "DE", "ProductDescription": "Sechskantschraube M8 × 40 – verzinkt"},
                {"Language": "FR", "ProductDescription": "Vis à tête hexagonale « M8 »"},
            ]
        },
        "to_Plant": {"results": [{"Plant": "DE01"}, {"Plant": "DE02"}]},
        "to_SalesDelivery": {"results": [{"ProductSalesOrg": "DE01", "MinimumOrderQuantity": "12"}]},
        "Scales": [
            {"qty": "100", "price": "189.90", "discount": "10"},
            {"qty": "10", "price": "189.90", "discount": "2.5"},
            {"qty": "50", "price": "189.90", "discount": "5"},
        ],
        "Tags": ["bolt", "steel", "bolt"],
    },
    {
        # S/4HANA long material number, a big id beyond 2**53, fields missing, phased out
        "Product": "HV-200-SET",
        "ProductUUIDNumber": 98765432109876543210,
        "IsMarkedForDeletion": False,
        "CrossPlantStatus": "Z9",
        "Price": "0.1",
        "GrossWeight": "12,50-",
        "NetWeight": 0.30000000000000004,
        "Volume": "1,5",
        "CreationDate": "00000000",
        "Stock": "0,000",
        "BaseUnit": "ST",
        "to_Description": {"results": [{"Language": "JA", "ProductDescription": "六角ボルト"}]},
        "to_Plant": {"results": []},
        "to_SalesDelivery": {"results": [{"ProductSalesOrg": "US10", "MinimumOrderQuantity": "1"}]},
        "Scales": [],
        "Tags": [],
    },
    {
        # almost nothing: every optional field absent
        "Product": "000000000000000042",
        "IsMarkedForDeletion": True,
        "Price": "2457",
        "GrossWeight": 2457.0,
        "Stock": "1",
        "BaseUnit": "PAL",
        "Scales": [{"qty": "1", "price": "1e3", "discount": "0"}],
    },
]

ERP_BINDINGS = Bindings(
    client="acme",
    flow="catalog",
    constants={"sales_org": "DE01", "website_id": 1},
    lookups={"units": UNITS},
    now=NOW,
)


def test_both_backends_give_byte_identical_output_on_a_real_mapping(tmp_path: Path) -> None:
    for name in BACKENDS:
        if name not in available_backends():
            pytest.fail(f"JSONata backend {name} is not installed; both are needed to compare them")
    mapping = tmp_path / "product.jsonata"
    mapping.write_text(ERP_TO_MAGENTO, encoding="utf-8")
    outputs = {}
    for name in BACKENDS:
        expression = compile_expression(ExpressionSource(ERP_TO_MAGENTO, str(mapping)), backend=name)
        records = [expression.evaluate(r, ERP_BINDINGS, record_id=r["Product"]) for r in ERP_RECORDS]
        outputs[name] = canonical_json(records)
    first, *others = outputs.values()
    for name, text in outputs.items():
        assert text == first, f"{name} differs from {BACKENDS[0]}"
    assert others

    records = json.loads(first)
    assert records[0] == {
        "sku": "4711",
        "erp_id": 1234567890123456,
        "erp_id_text": "1234567890123456",
        "name": "Hex bolt M8 × 40",
        "status": 1,
        "price": 189.9,
        "weight": 1234.5,
        "net_weight": 1100,
        "volume": 12.5,
        "created": "2024-01-31",
        "changed": "2024-01-31T14:30:00Z",
        "imported_at": NOW,
        "source": "acme/catalog",
        "extension_attributes": {"website_ids": [1], "stock_item": {"qty": 492, "is_in_stock": True}},
        "custom_attributes": [
            {"attribute_code": "color", "value": "Edelstahl gebürstet"},
            {"attribute_code": "name_de", "value": "Sechskantschraube M8 × 40 – verzinkt"},
            {"attribute_code": "name_fr", "value": "Vis à tête hexagonale « M8 »"},
            {"attribute_code": "plants", "value": "DE01,DE02"},
            {"attribute_code": "min_qty", "value": 12},
        ],
        "tier_prices": [
            {"qty": 10, "value": 185.15},
            {"qty": 50, "value": 180.4},  # 180.405: JSONata rounds half to even
            {"qty": 100, "value": 170.91},
        ],
        "tags": ["bolt", "steel"],
    }
    second = records[1]
    assert second["sku"] == "HV-200-SET" and second["status"] == 2 and second["name"] == "HV-200-SET"
    assert second["erp_id"] == 98765432109876540000 and second["erp_id_text"] == "98765432109876540000"
    assert "created" not in second and "changed" not in second  # SAP's empty date: nothing
    assert second["weight"] == -12.5 and second["net_weight"] == 0.30000000000000004
    assert "custom_attributes" not in second and "tier_prices" not in second  # every entry filtered out
    assert second["tags"] == [] and second["volume"] == 1500
    assert '"erp_id": 98765432109876540000,' in first  # JavaScript's digits, not Python's exact int
    third = records[2]
    assert third["weight"] == 2457 and '"weight": 2457,' in first
    assert third["tier_prices"] == {"qty": 1, "value": 1000}  # a single result is not wrapped in an array
    assert "erp_id" not in third and "volume" not in third and "tags" not in third


# -- errors and where they happened -------------------------------------------------------------

MAPPING = """\
/* ACME warehouse movement -> MSI source item */
{
  "sku": $materialNumber(material),
  "quantity": $number(available),
  "status": $decimal(available) > 0 ? 1 : 0
}
"""


def test_an_error_in_a_jsonata_file_names_file_line_column_code_client_flow_record(
    tmp_path: Path, backend: str
) -> None:
    mapping = tmp_path / "stock.jsonata"
    mapping.write_text(MAPPING, encoding="utf-8")
    expression = compile_expression(ExpressionSource(mapping.read_text(), str(mapping)), backend=backend)
    bindings = Bindings(client="acme", flow="inventory")
    with pytest.raises(TransformError) as caught:
        expression.evaluate({"material": "4711", "available": "12 pcs"}, bindings, record_id="5000012345")
    exc = caught.value
    assert (exc.file, exc.line, exc.column) == (str(mapping), 4, 15)
    assert (exc.code, exc.client, exc.flow, exc.record_id) == ("D3030", "acme", "inventory", "5000012345")
    assert str(exc) == (
        f"[acme/inventory] {mapping}:4:15: JSONata error D3030: Unable to cast value to a number: "
        '"12 pcs" (record 5000012345)'
    )
    assert isinstance(exc, TerminalError) and not exc.retryable
    assert exc.__cause__ is None and exc.__suppress_context__  # no library exception hangs off it


def test_an_error_in_a_yaml_block_is_placed_in_the_spec_file(backend: str) -> None:
    # the block's first line is line 20 of spec.yaml, indented 7 columns
    source = ExpressionSource(MAPPING, "specs/acme/seamline.yaml", line=20, column=7, style="block")
    expression = compile_expression(source, backend=backend)
    with pytest.raises(TransformError) as caught:
        expression.evaluate({"available": "viele"}, Bindings(client="acme", flow="inventory"), record_id="R-7")
    exc = caught.value
    assert (exc.file, exc.line, exc.column, exc.code) == ("specs/acme/seamline.yaml", 23, 7 + 14, "D3030")
    assert str(exc).startswith("[acme/inventory] specs/acme/seamline.yaml:23:21: JSONata error D3030")
    assert str(exc).endswith("(record R-7)")


def test_an_error_in_an_inline_expression_is_placed_in_the_spec_file(backend: str) -> None:
    # transform: '{ "qty": $number(available) }'  with the quote at line 9, column 16
    source = ExpressionSource('{ "qty": $number(available) }', "seamline.yaml", line=9, column=17, style="inline")
    with pytest.raises(TransformError) as caught:
        compile_expression(source, backend=backend).evaluate({"available": "n/a"}, record_id="R-1")
    assert (caught.value.file, caught.value.line, caught.value.column) == ("seamline.yaml", 9, 17 + 9)


SPEC = """\
seamline: 1
client: demo
constants:
  site: 7
systems:
  shop:
    connector: magento
    url: "https://shop.example"
    auth: { bearer: { token: "{{ secret.SHOP_TOKEN }}" } }
flows:
  block:
    trigger: { schedule: "0 */4 * * *" }
    source: { system: shop, read: products }
    transform: |
      {
        "sku": sku,
        "qty": $number(qty),
        "site": $constants.site
      }
    target: { system: shop, write: products }
  inline:
    trigger: { schedule: "0 */4 * * *" }
    source: { system: shop, read: products }
    transform: '{ "sku": sku, "qty": $number(qty) }'
    target: { system: shop, write: products }
  file:
    trigger: { schedule: "0 */4 * * *" }
    source: { system: shop, read: products }
    transform: transforms/product.jsonata
    target: { system: shop, write: products }
"""


@pytest.mark.parametrize(
    ("flow", "where"),
    [("block", "seamline.yaml:17:16"), ("inline", "seamline.yaml:24:38"), ("file", "transforms/product.jsonata:3:10")],
)
def test_errors_in_a_real_spec_point_into_the_file_that_holds_the_mapping(
    flow: str, where: str, backend: str, write_files: WriteFiles
) -> None:
    root = write_files(
        {"seamline.yaml": SPEC, "transforms/product.jsonata": '{\n  "sku": sku,\n  "qty": $number(qty)\n}\n'}
    )
    client = load_client(root / "seamline.yaml", backend=backend)
    expected = {"sku": "A", "qty": 3} | ({"site": 7} if flow == "block" else {})
    assert client.flow(flow).preview({"sku": "A", "qty": "3"}) == {"shop.products": expected}
    with pytest.raises(TransformError) as caught:
        client.flow(flow).preview({"sku": "A", "qty": "drei"}, record_id="A")
    file, line, column = where.rsplit(":", 2)
    exc = caught.value
    assert (exc.file, exc.line, exc.column) == (str(root / file), int(line), int(column))
    assert (exc.client, exc.flow, exc.record_id, exc.code) == ("demo", flow, "A", "D3030")


@pytest.mark.parametrize(
    ("text", "code", "line", "column", "message"),
    [
        ('{\n  "a": b,\n  "c": d e\n}', "S0202", 3, 10, 'Expected "}", got "e"'),
        ('{\n  "a": (b\n}', "S0202", 3, 1, 'Expected ")", got "}"'),
        ('{\n  "x": 1 ++ 2\n}', "S0211", 2, 11, 'The symbol "+" cannot be used as a unary operator'),
        ('/* ok */ 1 /* open\n{ "a": 1 }', "S0106", 1, 12, "Comment has no closing tag"),
    ],
)
def test_a_syntax_error_fails_at_compile_with_its_place(
    text: str, code: str, line: int, column: int, message: str, backend: str
) -> None:
    with pytest.raises(TransformError) as caught:
        compile_expression(ExpressionSource(text, "product.jsonata"), backend=backend)
    exc = caught.value
    assert (exc.file, exc.line, exc.column, exc.code) == ("product.jsonata", line, column, code)
    assert exc.message == f"JSONata syntax error {code}: {message}"
    assert not exc.record_id and not exc.client


def test_a_syntax_error_in_a_block_is_placed_in_the_spec(backend: str) -> None:
    source = ExpressionSource('{\n  "a": b,\n  "c": d e\n}', "seamline.yaml", line=30, column=7, style="block")
    with pytest.raises(TransformError) as caught:
        compile_expression(source, backend=backend)
    assert (caught.value.line, caught.value.column) == (32, 7 + 9)


@pytest.mark.parametrize("text", ["", "   \n  "])
def test_an_empty_expression(text: str, backend: str) -> None:
    with pytest.raises(TransformError, match="the JSONata expression is empty"):
        compile_expression(ExpressionSource(text, "empty.jsonata"), backend=backend)


@pytest.mark.parametrize(
    ("expression", "data", "code"),
    [
        ('"a" + qty', {"qty": 1}, "T2001"),
        ("$uppercase(qty)", {"qty": 5}, "T0410"),
        ("$undefinedFunction(1)", {}, "T1006"),
        ('$error("blocked customer")', {}, "D3137"),
        ("$single(items)", {"items": [1, 2]}, "D3138"),
    ],
)
def test_an_evaluation_error_happens_at_runtime(expression: str, data: Any, code: str, backend: str) -> None:
    expression_ = compiled(expression, backend)  # compiles fine
    with pytest.raises(TransformError) as caught:
        expression_.evaluate(data, Bindings(client="acme", flow="orders"), record_id="100000042")
    assert caught.value.code == code
    assert caught.value.record_id == "100000042" and caught.value.line == 1


# -- limits -------------------------------------------------------------------------------------

TIGHT = Limits(timeout=0.3, max_depth=200)


@pytest.mark.parametrize(
    "expression",
    [
        "($f := function($x){ $f($x) }; $f(1))",  # endless tail recursion
        "($loop := function($i){ $i < 100000000 ? $loop($i + 1) : $i }; $loop(0))",
        "$count([1..1000000].[1..100])",
    ],
)
def test_a_runaway_expression_ends_as_a_timeout(expression: str, backend: str) -> None:
    started = time.monotonic()
    with pytest.raises(TransformError) as caught:
        compiled(expression, backend, limits=TIGHT).evaluate({}, record_id="R-1")
    elapsed = time.monotonic() - started
    assert caught.value.code == "D1012", caught.value
    assert "timeout" in caught.value.message.lower()
    assert elapsed < TIGHT.timeout + 1.0


@pytest.mark.parametrize("depth", [200, 100000])
def test_deep_recursion_ends_as_D1011_never_a_recursion_error(depth: int, backend: str) -> None:
    expression = "($f := function($x){ $x > 0 ? 1 + $f($x - 1) : 0 }; $f(100000))"
    started = time.monotonic()
    with pytest.raises(TransformError) as caught:
        compiled(expression, backend, limits=Limits(timeout=5, max_depth=depth)).evaluate({})
    assert caught.value.code == "D1011"
    assert time.monotonic() - started < 3


def test_recursion_within_the_limits_works(backend: str) -> None:
    expression = "($f := function($x){ $x > 0 ? 1 + $f($x - 1) : 0 }; $f(20))"
    assert compiled(expression, backend, limits=TIGHT).evaluate({}) == 20


def test_the_depth_limit_counts_nesting_not_records(backend: str) -> None:
    # jsonata-python's own depth count grows by one per group here (300 groups > 200)
    data = {"days": {f"2019-{1 + i % 12:02d}-{i:03d}": i for i in range(300)}}
    expression = '$each(days, function($v, $k){ {"day": $k, "n": $v} }){$substring(day, 0, 7): $sum(n)}'
    result = compiled(expression, backend, limits=Limits()).evaluate(data)
    assert result["2019-01"] == sum(i for i in range(300) if i % 12 == 0)


# -- bindings -----------------------------------------------------------------------------------


def test_now_and_millis_are_fixed_by_the_bindings(backend: str) -> None:
    bindings = Bindings(now="2025-01-15T08:00:00.000Z")
    expression = '[$now(), $millis(), $now("[Y0001]-[M01]-[D01]"), $now("[H01]:[m01]", "+0100")]'
    assert evaluate(expression, backend, bindings=bindings) == [
        "2025-01-15T08:00:00.000Z",
        1736928000000,
        "2025-01-15",
        "09:00",
    ]
    offset = Bindings(now="2025-01-15T09:00:00+01:00")
    assert evaluate("$now()", backend, bindings=offset) == "2025-01-15T08:00:00.000Z"


def test_now_without_bindings_is_the_clock(backend: str) -> None:
    before = datetime.now(UTC).timestamp() * 1000
    millis = evaluate("$millis()", backend, bindings=Bindings())
    assert before - 1000 <= millis <= datetime.now(UTC).timestamp() * 1000 + 1000


def test_a_fixed_now_that_is_not_a_timestamp_is_a_usage_error() -> None:
    with pytest.raises(
        UsageError, match=r"'yesterday' \(--now\) is not an ISO 8601 timestamp; write e\.g\. 2025-01-15T08:00:00Z"
    ):
        Bindings(now="yesterday")


def test_constants_lookups_client_and_flow(backend: str) -> None:
    bindings = Bindings(
        client="acme",
        flow="inventory",
        constants={"sales_org": "DE01", "carton_size": 12, "ratio": 2.0},
        lookups={"plants": {"DE01": "acme_stuttgart", "DE02": "acme_leipzig"}, "units": UNITS},
    )
    expression = """{
      "who": $client & "/" & $flow,
      "org": $constants.sales_org,
      "cartons": qty / $constants.carton_size,
      "ratio": $constants.ratio,
      "source": $lookup($lookups.plants, plant),
      "by_path": $lookups.plants.DE01,
      "unknown": $lookup($lookups.plants, "XX"),
      "keys": $keys($lookups.plants),
      "literal": "$client, not the binding"
    }"""
    assert evaluate(expression, backend, {"qty": 24, "plant": "DE02"}, bindings) == {
        "who": "acme/inventory",
        "org": "DE01",
        "cartons": 2,
        "ratio": 2,
        "source": "acme_leipzig",
        "by_path": "acme_stuttgart",
        "keys": ["DE01", "DE02"],
        "literal": "$client, not the binding",
    }


# -- backend choice -----------------------------------------------------------------------------


def test_resolve_backend_by_name_env_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEAMLINE_TRANSFORM_BACKEND", raising=False)
    assert resolve_backend("jsonata-python") == "jsonata-python"
    assert resolve_backend("jlens") == "jlens"
    assert resolve_backend("auto") == "jlens"  # installed in CI, so auto picks it
    assert resolve_backend() == "jlens"
    monkeypatch.setenv("SEAMLINE_TRANSFORM_BACKEND", "jsonata-python")
    assert resolve_backend() == "jsonata-python"
    assert resolve_backend("jlens") == "jlens"  # an explicit name wins over the environment
    assert compile_expression(ExpressionSource("1", "x.jsonata")).backend == "jsonata-python"
    monkeypatch.setenv("SEAMLINE_TRANSFORM_BACKEND", "auto")
    assert resolve_backend() == "jlens"


def test_an_unknown_backend_is_a_usage_error_with_the_nearest_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEAMLINE_TRANSFORM_BACKEND", raising=False)
    with pytest.raises(UsageError) as caught:
        resolve_backend("jlns")
    assert str(caught.value) == (
        "unknown transform backend 'jlns' — did you mean 'jlens'?; choose one of: auto, jsonata-python, jlens"
    )
    assert caught.value.exit_code == 2
    monkeypatch.setenv("SEAMLINE_TRANSFORM_BACKEND", "fast")
    with pytest.raises(UsageError, match=r"'fast' \(from \$SEAMLINE_TRANSFORM_BACKEND\); choose one of: auto"):
        resolve_backend()
    with pytest.raises(UsageError, match="unknown transform backend 'fast'"):
        compile_expression(ExpressionSource("1", "x.jsonata"))


def test_a_backend_that_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "jlens" else real_find_spec(name, *a)
    )
    monkeypatch.delenv("SEAMLINE_TRANSFORM_BACKEND", raising=False)
    assert available_backends() == ["jsonata-python"]
    assert resolve_backend() == "jsonata-python"
    with pytest.raises(
        UsageError, match=r"transform backend 'jlens' is not installed \(pip install 'seamline\[fast\]'\)"
    ):
        resolve_backend("jlens")


def test_json_in_json_out_agrees_across_backends() -> None:
    texts = {}
    for name in BACKENDS:
        expression = compile_expression(ExpressionSource(ERP_TO_MAGENTO, "product.jsonata"), backend=name)
        texts[name] = [expression.evaluate_json(json.dumps(r), ERP_BINDINGS) for r in ERP_RECORDS]
        first_text = texts[name][0]
        assert first_text is not None and first_text.startswith('{"sku":"4711","erp_id":1234567890123456,')
        assert compile_expression(ExpressionSource("nothing", "x.jsonata"), backend=name).evaluate_json("{}") is None
    first, *others = texts.values()
    assert all(other == first for other in others)


def test_json_in_tells_null_from_nothing(backend: str) -> None:
    assert compiled("$", backend).evaluate_json("null") == "null"  # the document null
    assert compiled("$", backend).evaluate_json(None) is None  # no document: undefined
    assert compiled("$type($)", backend).evaluate_json(None) is None
    assert compiled("$type($)", backend).evaluate_json("null") == '"null"'
    assert compiled("a", backend).evaluate_json('{"a": null}') == "null"
    assert compiled("b", backend).evaluate_json('{"a": null}') is None
    assert compiled('{"a": a, "b": b}', backend).evaluate_json('{"a": null}') == '{"a":null}'
    assert compiled("a", backend).evaluate({"a": None}) is None  # the dict path: None for both


@pytest.mark.parametrize(
    "expression",
    [
        '$contains("Hello World", nothing)',  # jsonata-python: a raw RuntimeError
        "$toMillis('2018-05-22', '[Y]-[M]-[q]')",  # jsonata-python: a raw KeyError
        "$power(-2, 1/3)",  # jsonata-python: a raw TypeError (complex result)
    ],
)
def test_every_evaluation_failure_is_a_transform_error(expression: str, backend: str) -> None:
    try:
        compiled(expression, backend).evaluate({})
    except TransformError as exc:
        assert exc.line == 1
    # not raising is fine too (jlens answers some of these); anything but a TransformError fails


def test_an_expression_with_a_lone_surrogate_is_a_transform_error(backend: str) -> None:
    try:
        compiled("$encodeUrl('\ud800')", backend).evaluate({})
    except TransformError as exc:
        assert exc.file == "test.jsonata"


@pytest.mark.parametrize("text", ['{"a": ', "{'a': 1}", ""])
def test_json_in_that_is_not_json_is_a_transform_error(text: str, backend: str) -> None:
    expression = compiled("a", backend)
    with pytest.raises(TransformError) as caught:
        expression.evaluate_json(text, Bindings(client="acme", flow="orders"), record_id="line 7")
    exc = caught.value
    assert exc.message.startswith("input is not valid JSON: ") and "JSON: input is not" not in exc.message
    assert (exc.client, exc.record_id) == ("acme", "line 7")


def test_an_alias_of_a_builtin_never_renames_it_for_later_records(backend: str) -> None:
    """jsonata-python renamed a builtin's shared signature when an expression bound it to a variable."""
    assert evaluate('($g := $uppercase; $g("a"))', backend) == "A"
    exc = failure("$uppercase(qty)", backend, {"qty": 5})
    assert '"uppercase"' in exc.message
