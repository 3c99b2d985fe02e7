"""The file connector over real files: formats, encodings, IDocs, archive/rejected, crash safety, writes.

Event-trigger tests go through the runtime's own path (``engine.runtime.triggers.consume_queue``)
into a real SQLite state store, so what is asserted is what the daemon would hold: inbox items and
dead letters with their reasons. Waits are for conditions with deadlines, never for durations.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from connectors.file import CONNECTOR, FileOptions
from connectors.file.client import REJECT_HEADER, Disk, FileConnection, Settle
from connectors.file.formats import parse_number, read_entries
from engine.cli import main
from engine.connector import ConnectContext, Message, ReadItem
from engine.errors import TerminalError, TransientError
from engine.flow import CompiledFlow, load_client
from engine.runtime.inbox import Inbox
from engine.runtime.metrics import Metrics
from engine.runtime.triggers import consume_queue
from engine.state import StateStore, open_store

DATA = Path(__file__).parent / "data" / "files"
SAP_MATMAS_DE = Path(__file__).parent / "data" / "sap_matmas_de.csv"
MATERIALS_DE: dict[str, Any] = {
    "pattern": "materials_*.csv",
    "format": "csv",
    "delimiter": ";",
    "decimal_comma": True,
    "numbers": ["LABST"],
}


# -- helpers ----------------------------------------------------------------------------------------


def open_files(directory: Path, drops: dict[str, Any], **options: Any) -> FileConnection:
    """A connection through the connector's own ``connect``, as the runtime opens it."""
    validated = FileOptions.model_validate(
        {"connector": "file", "directory": str(directory), "poll": "10ms", "drops": drops, **options}
    )
    connection = CONNECTOR.open(validated, ConnectContext(system="erp_files", client="filetest"))
    assert isinstance(connection, FileConnection)
    return connection


def drop_file(directory: Path, sample: str, name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (name or sample)
    shutil.copyfile(DATA / sample, target)
    return target


async def read_all(connection: FileConnection, entity: str, **kwargs: Any) -> list[list[Any]]:
    pages: AsyncIterator[list[Any]] = connection.read(entity, **kwargs)
    return [page async for page in pages]


def items_of(pages: list[list[Any]]) -> list[ReadItem]:
    """Every entry of every page; a file drop wraps each row in a ReadItem (its id, maybe its rejection)."""
    items = [item for page in pages for item in page]
    assert all(isinstance(item, ReadItem) for item in items), items
    return items


def records_of(pages: list[list[Any]]) -> list[Any]:
    """The data of the rows handed over as data (rejected rows left out)."""
    return [item.data for item in items_of(pages) if not item.rejected]


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Yield to the loop until ``condition`` holds (bounded: a test never hangs)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0)


SPEC = """\
seamline: 1
client: filetest
systems:
  drops:
    connector: file
    directory: {inbox}
    poll: 10ms
    drops:
      stock: {{ pattern: "stock_*.csv", format: csv, delimiter: ";", decimal_comma: true, numbers: [available] }}
      prices: {{ pattern: "prices_*.csv", format: csv, delimiter: ";", decimal_comma: true, numbers: [KBETR] }}
      materials: {{ pattern: "MATMAS*.xml", format: idoc }}
      exports: {{ pattern: "*.xml", format: xml, record_path: Materials/Material }}
      lines: {{ pattern: "*.jsonl", format: jsonl }}
      marked: {{ pattern: "*.csv", format: csv, delimiter: ";", done_marker: .done }}
  outbox:
    connector: file
    directory: {outbox}
    drops:
      stock: {{ pattern: "STOCK_*.json", format: json }}
flows:
{flows}
"""


def event_flow(name: str, queue: str, id_field: str | None = None) -> str:
    trigger_id = f", id: {id_field}" if id_field else ""
    return (
        f"  {name}:\n"
        f"    trigger: {{ event: {{ system: drops, queue: {queue}{trigger_id} }} }}\n"
        f"    target: {{ system: outbox, write: stock }}\n"
    )


class Runtime:
    """A compiled flow, a SQLite store and the file system, wired the way the daemon wires an event trigger."""

    def __init__(self, root: Path, flows: str) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.outbox = root / "outbox"
        self.inbox.mkdir(parents=True, exist_ok=True)
        spec = root / "spec" / "seamline.yaml"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(SPEC.format(inbox=self.inbox, outbox=self.outbox, flows=flows), encoding="utf-8")
        self.client = load_client(spec, environ={})
        self.state_url = f"sqlite:///{root / 'state.db'}"
        self.store: StateStore = open_store(self.state_url)
        self.metrics = Metrics("filetest")

    def flow(self, name: str) -> CompiledFlow:
        return self.client.flows[name]

    def connection(self) -> FileConnection:
        options = self.client.report.systems["drops"]
        assert isinstance(options, FileOptions)
        return FileConnection(options, ConnectContext(system="drops", client="filetest"))

    def restart(self) -> None:
        """What a new daemon process sees: the same store file, opened again; new counters."""
        self.store.close()
        self.store = open_store(self.state_url)
        self.metrics = Metrics("filetest")

    def consume(self, flow: str, queue: str, connection: FileConnection | None = None) -> asyncio.Task[None]:
        return asyncio.create_task(
            consume_queue(self.flow(flow), connection or self.connection(), queue, Inbox(self.store), self.metrics)
        )

    def inbox_rows(self, flow: str) -> list[tuple[str, Any, str]]:
        with sqlite3.connect(self.root / "state.db") as db:
            rows = db.execute("SELECT key, payload, status FROM inbox WHERE flow = ? ORDER BY id", (flow,)).fetchall()
        return [(key, json.loads(payload), status) for key, payload, status in rows]

    def pending(self, flow: str) -> list[Any]:
        return [payload for _key, payload, status in self.inbox_rows(flow) if status == "pending"]


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Callable[[str], Runtime]]:
    made: list[Runtime] = []

    def make(flows: str) -> Runtime:
        made.append(Runtime(tmp_path, flows))
        return made[-1]

    yield make
    for rt in made:
        rt.store.close()


# -- CSV, encodings, numbers --------------------------------------------------------------------------


def test_csv_with_bom_semicolons_and_decimal_comma_keeps_codes_as_text(tmp_path: Path) -> None:
    drop_file(tmp_path, "materials_de.csv")
    connection = open_files(tmp_path, {"materials": MATERIALS_DE})
    pages = asyncio.run(read_all(connection, "materials"))
    first, second, third = records_of(pages)
    assert first == {
        "MATNR": "000000000000004711",  # a code: its leading zeros stay
        "MAKTX": "Kugelventil DN 25 Messing",
        "WERKS": "1000",  # no comma: a plant code, text
        "MEINS": "ST",
        "BRGEW": 1.25,  # a decimal comma: a number
        "NETPR": 1234.5,  # 1.234,50
        "LABST": 10.0,  # named in numbers
    }
    assert second["LABST"] == 0 and second["NETPR"] == 89.9
    assert third["MAKTX"] == 'Hydraulik-Set "Profi"' and third["LABST"] == -5.0  # SAP's trailing minus
    assert (tmp_path / "archive" / "materials_de.csv").exists() and not (tmp_path / "materials_de.csv").exists()
    assert not (tmp_path / "archive" / "materials_de.csv.reason.txt").exists()  # nothing was rejected


@pytest.mark.parametrize(
    ("text", "decimal_comma", "expected"),
    [
        ("1.234,50", True, 1234.5),
        ("12,5-", True, -12.5),
        ("-0,75", True, -0.75),
        ("1.500", True, 1500),
        ("4711", True, 4711),
        ("1,234.50", False, 1234.5),
        ("  ", True, None),
    ],
)
def test_numbers_in_either_notation(text: str, decimal_comma: bool, expected: float | None) -> None:
    assert parse_number(text, decimal_comma=decimal_comma) == expected


@pytest.mark.parametrize("text", ["12,3x", "1.5", "1,2,3", "-12,5-", "12 500,00"])
def test_what_is_not_a_german_number(text: str) -> None:
    with pytest.raises(ValueError):
        parse_number(text, decimal_comma=True)


def test_cp1252_umlauts_read_with_the_encoding_option(tmp_path: Path) -> None:
    drop_file(tmp_path, "customers_cp1252.csv")
    drop = {"pattern": "customers_*.csv", "format": "csv", "delimiter": ";", "encoding": "cp1252"}
    records = records_of(asyncio.run(read_all(open_files(tmp_path, {"customers": drop}), "customers")))
    assert [r["NAME1"] for r in records] == ["Müller Präzisionstechnik GmbH", "Bäckerei Weiß"]
    assert records[0]["STRAS"] == "Hauptstraße 5" and records[0]["ORT01"] == "Köln"
    assert records[0]["NOTE"] == "Rabatt 5 € – bis 31.12."
    assert records[0]["KUNNR"] == "0000012345" and records[1]["PSTLZ"] == "04109"


def test_cp1252_bytes_in_a_utf8_drop_are_rejected_with_line_column_and_a_hint(tmp_path: Path) -> None:
    drop_file(tmp_path, "customers_cp1252.csv")
    drop = {"pattern": "customers_*.csv", "format": "csv", "delimiter": ";"}
    pages = asyncio.run(read_all(open_files(tmp_path, {"customers": drop}), "customers"))
    assert pages == []
    reason = (tmp_path / "rejected" / "customers_cp1252.csv.reason.txt").read_text(encoding="utf-8")
    assert "line 2, column 13: byte 0xfc" in reason  # the ü of Müller
    assert "cannot be read as utf-8" in reason and "set encoding: cp1252 on the drop" in reason
    assert (tmp_path / "rejected" / "customers_cp1252.csv").exists()


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_a_byte_order_mark_wins_over_the_encoding_option(tmp_path: Path, codec: str) -> None:
    text = "sku;name\nA-1;Grüße\n"
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = b"\xfe\xff" + data  # the BOM Windows tools write before big-endian text
    (tmp_path / "items_1.csv").write_bytes(data)
    drop = {"pattern": "items_*.csv", "format": "csv", "delimiter": ";", "encoding": "cp1252"}
    records = records_of(asyncio.run(read_all(open_files(tmp_path, {"items": drop}), "items")))
    assert records == [{"sku": "A-1", "name": "Grüße"}]


# -- JSON, JSONL, XML ---------------------------------------------------------------------------------


def test_json_array_and_json_lines(tmp_path: Path) -> None:
    drop_file(tmp_path, "orders.json")
    drop_file(tmp_path, "stock.jsonl")
    connection = open_files(
        tmp_path,
        {"orders": {"pattern": "orders*.json", "format": "json"}, "stock": {"pattern": "*.jsonl", "format": "jsonl"}},
    )
    orders = records_of(asyncio.run(read_all(connection, "orders")))
    assert [o["increment_id"] for o in orders] == ["000000101", "000000102"]
    assert orders[1]["items"][1] == {"sku": "HV-200-SET", "qty_ordered": 1}
    stock = asyncio.run(read_all(connection, "stock", page_size=2))
    assert [len(page) for page in stock] == [2, 1]  # pages of page_size; the blank line is no record
    assert records_of(stock)[2] == {"material": "HV-200-SET", "plant": "2000", "available": 5}


def test_json_records_at_a_path_and_a_filter(tmp_path: Path) -> None:
    document = {"data": {"items": [{"sku": "A", "status": "active"}, {"sku": "B", "status": "blocked"}]}}
    (tmp_path / "export.json").write_text(json.dumps(document), encoding="utf-8")
    drop = {"pattern": "*.json", "format": "json", "record_path": "data.items"}
    pages = asyncio.run(read_all(open_files(tmp_path, {"items": drop}), "items", filter={"status": "active"}))
    assert records_of(pages) == [{"sku": "A", "status": "active"}]


def test_xml_records_at_a_record_path(tmp_path: Path) -> None:
    drop_file(tmp_path, "materials.xml")
    drop = {"pattern": "*.xml", "format": "xml", "record_path": "Materials/Material"}
    records = records_of(asyncio.run(read_all(open_files(tmp_path, {"materials": drop}), "materials")))
    assert records == [
        {
            "@number": "000000000000004711",
            "Description": [
                {"@lang": "DE", "#text": "Kugelventil DN 25 Messing"},
                {"@lang": "EN", "#text": "Ball valve DN 25 brass"},
            ],
            "Unit": "ST",
            "Weight": {"@unit": "KG", "#text": "1.250"},
        },
        {
            "@number": "000000000000004712",
            "Description": {"@lang": "DE", "#text": "Absperrschieber DN 50"},
            "Unit": "ST",
            "Weight": {"@unit": "KG", "#text": "12.500"},
        },
    ]


def test_xml_with_a_dtd_is_refused_before_any_entity_expands(tmp_path: Path) -> None:
    laughs = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n'
        "<Materials><Material>&lol2;</Material></Materials>\n"
    )
    (tmp_path / "evil.xml").write_text(laughs, encoding="utf-8")
    drop = {"pattern": "*.xml", "format": "xml", "record_path": "Material"}
    assert asyncio.run(read_all(open_files(tmp_path, {"materials": drop}), "materials")) == []
    reason = (tmp_path / "rejected" / "evil.xml.reason.txt").read_text(encoding="utf-8")
    assert "line 2: the document has a DOCTYPE; DTDs are refused" in reason


def test_a_wrong_record_path_is_a_reason_not_an_empty_file(tmp_path: Path) -> None:
    drop_file(tmp_path, "materials.xml")
    drop = {"pattern": "*.xml", "format": "xml", "record_path": "Materials/Matrial"}
    assert asyncio.run(read_all(open_files(tmp_path, {"materials": drop}), "materials")) == []
    reason = (tmp_path / "rejected" / "materials.xml.reason.txt").read_text(encoding="utf-8")
    assert "no element at record_path 'Materials/Matrial': <Export/Materials> has no <Matrial>" in reason
    assert "(its children: Material)" in reason


# -- SAP IDocs ----------------------------------------------------------------------------------------


def idoc_records(sample: str) -> list[Any]:
    from connectors.file import Drop

    entries = read_entries((DATA / sample).read_bytes(), Drop(pattern="*.xml", format="idoc"))
    assert all(e.ok for e in entries), [e.error for e in entries]
    return [e.data for e in entries]


def test_matmas05_segments_by_name() -> None:
    first, second = idoc_records("MATMAS05_0001.xml")
    assert first["EDI_DC40"]["IDOCTYP"] == "MATMAS05" and first["EDI_DC40"]["DOCNUM"] == "0000000000123456"
    header = first["E1MARAM"]
    assert header["MATNR"] == "000000000000004711" and header["BRGEW"] == "1.250"  # IDoc values stay as SAP wrote
    assert [t["MAKTX"] for t in header["E1MAKTM"]] == ["Kugelventil DN 25 Messing", "Ball valve DN 25 brass"]
    assert header["E1MARCM"]["E1MARDM"] == {"LGORT": "0001"}  # child segments nest inside their parent
    assert "@SEGMENT" not in header and "@BEGIN" not in first  # markers without data are left out
    assert second["E1MARAM"]["E1MAKTM"] == {"SPRAS_ISO": "DE", "MAKTX": "Absperrschieber DN 50"}
    assert second["E1MARAM"]["LVORM"] == "X"


def test_debmas07_sales_area_and_partner_functions() -> None:
    (customer,) = idoc_records("DEBMAS07_0001.xml")
    general = customer["E1KNA1M"]
    assert general["KUNNR"] == "0000012345" and general["NAME1"] == "Müller Präzisionstechnik GmbH"
    assert [p["PARVW"] for p in general["E1KNVVM"]["E1KNVPM"]] == ["AG", "WE"]
    assert general["E1KNB1M"]["AKONT"] == "0000140000"


def test_orders05_header_partners_and_items() -> None:
    (order,) = idoc_records("ORDERS05_0001.xml")
    assert order["E1EDK01"]["BELNR"] == "4500012345"
    sold_to = next(p for p in order["E1EDKA1"] if p["PARVW"] == "AG")
    assert sold_to["PARTN"] == "0000012345"
    item = order["E1EDP01"]
    assert item["MENGE"] == "2.000" and item["E1EDP19"]["IDTNR"] == "000000000000004711"
    assert order["E1EDK02"]["BELNR"] == "000000101"  # the shop's order number, for the way back


@pytest.mark.parametrize(
    ("idoc", "expected"),
    [
        ("<DEBMAS07><IDOC BEGIN='1'><EDI_DC40 SEGMENT='1'><MESTYP>DEBMAS</MESTYP></EDI_DC40></IDOC></DEBMAS07>",
         "DEBMAS needs segment E1KNA1M (customer general data); it is missing"),
        ("<DEBMAS07><IDOC BEGIN='1'><EDI_DC40 SEGMENT='1'><MESTYP>DEBMAS</MESTYP></EDI_DC40>"
         "<E1KNA1M SEGMENT='1'><NAME1>x</NAME1></E1KNA1M></IDOC></DEBMAS07>",
         "field KUNNR (the customer number) in E1KNA1M"),
        ("<ORDERS05><IDOC BEGIN='1'><EDI_DC40 SEGMENT='1'><IDOCTYP>ORDERS05</IDOCTYP></EDI_DC40>"
         "<E1EDK01 SEGMENT='1'/></IDOC></ORDERS05>",
         "ORDERS05 needs a sold-to partner (segment E1EDKA1 with PARVW AG); there is none; at least one item"),
        ("<MATMAS05><IDOC BEGIN='1'><E1MARAM SEGMENT='1'><MATNR>1</MATNR></E1MARAM></IDOC></MATMAS05>",
         "MATMAS05 needs the control record EDI_DC40"),
    ],
)  # fmt: skip
def test_idocs_missing_mandatory_segments_say_which(idoc: str, expected: str) -> None:
    from connectors.file import Drop

    (entry,) = read_entries(idoc.encode(), Drop(pattern="*.xml", format="idoc"))
    assert not entry.ok and expected in entry.error, entry.error


# -- the event trigger into the real state store ------------------------------------------------------


def test_idoc_missing_a_segment_is_dead_lettered_and_the_file_goes_on(runtime: Callable[[str], Runtime]) -> None:
    rt = runtime(event_flow("materials", "materials"))
    drop_file(rt.inbox, "MATMAS05_missing_segment.xml")

    async def scenario() -> None:
        task = rt.consume("materials", "materials")
        await until(lambda: (rt.inbox / "archive" / "MATMAS05_missing_segment.xml").exists(), "the file archived")
        await stop(task)

    asyncio.run(scenario())
    (good,) = rt.pending("materials")
    assert good["E1MARAM"]["MATNR"] == "000000000000004712"
    (dead,) = rt.store.dead_letters("materials")
    told = dead.reason + dead.payload["raw"]
    assert (
        "MATMAS05_missing_segment.xml: line 32: IDoc 2 (DOCNUM 0000000000123458): "
        "MATMAS needs segment E1MARAM (material header); it is missing"
    ) in told
    assert "Segment ohne Kopf" in told  # the IDoc itself is kept with its reason
    reason = (rt.inbox / "archive" / "MATMAS05_missing_segment.xml.reason.txt").read_text(encoding="utf-8")
    assert "line 32: IDoc 2 (DOCNUM 0000000000123458): MATMAS needs segment E1MARAM" in reason  # beside the file


def test_a_bad_csv_number_is_dead_lettered_with_its_reason_and_the_other_rows_delivered(
    runtime: Callable[[str], Runtime],
) -> None:
    rt = runtime(event_flow("prices", "prices", id_field="MATNR"))
    drop_file(rt.inbox, "prices_bad_number.csv")

    async def scenario() -> None:
        task = rt.consume("prices", "prices")
        await until(lambda: (rt.inbox / "archive" / "prices_bad_number.csv").exists(), "the file archived")
        await stop(task)

    asyncio.run(scenario())
    assert [(p["MATNR"], p["KBETR"]) for p in rt.pending("prices")] == [
        ("000000000000004711", 1234.5),
        ("000000000000004713", 99.0),
    ]
    (dead,) = rt.store.dead_letters("prices")
    reason = "prices_bad_number.csv: line 3: column 'KBETR' holds '12,3x', which is not a number"
    assert reason in dead.reason + dead.payload["raw"]
    assert '"MATNR": "000000000000004712"' in dead.payload["raw"]
    beside = (rt.inbox / "archive" / "prices_bad_number.csv.reason.txt").read_text(encoding="utf-8")
    assert "line 3: column 'KBETR' holds '12,3x'" in beside and "other 2 record(s) were handed over" in beside


def test_a_malformed_record_is_a_message_marked_rejected_with_a_stable_id(tmp_path: Path) -> None:
    drop_file(tmp_path, "prices_bad_number.csv")
    drop = {"pattern": "prices_*.csv", "format": "csv", "delimiter": ";", "decimal_comma": True, "numbers": ["KBETR"]}
    connection = open_files(tmp_path, {"prices": drop})
    received: list[Message] = []

    async def scenario() -> None:
        async def handler(message: Message) -> None:
            received.append(message)

        task = asyncio.create_task(connection.consume("prices", handler))
        await until(lambda: (tmp_path / "archive" / "prices_bad_number.csv").exists(), "the file archived")
        await stop(task)

    asyncio.run(scenario())
    digest = hashlib.sha256((DATA / "prices_bad_number.csv").read_bytes()).hexdigest()[:12]
    assert [m.message_id for m in received] == [f"prices_bad_number.csv:{digest}:{i}" for i in range(3)]
    good, bad, _ = received
    assert json.loads(good.body)["KBETR"] == 1234.5 and REJECT_HEADER not in good.headers
    assert bad.headers[REJECT_HEADER].startswith("prices_bad_number.csv: line 3: column 'KBETR'")
    assert bad.headers["line"] == 3
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.body)  # never mistaken for a record, even by a runtime that ignores the header


def test_broken_xml_goes_to_rejected_with_its_reason_and_the_next_file_is_processed(
    runtime: Callable[[str], Runtime],
) -> None:
    rt = runtime(event_flow("exports", "exports"))
    drop_file(rt.inbox, "broken.xml")
    drop_file(rt.inbox, "materials.xml")

    async def scenario() -> None:
        task = rt.consume("exports", "exports")
        await until(lambda: (rt.inbox / "archive" / "materials.xml").exists(), "the good file archived")
        await until(lambda: (rt.inbox / "rejected" / "broken.xml").exists(), "the broken file rejected")
        await stop(task)

    asyncio.run(scenario())
    reason = (rt.inbox / "rejected" / "broken.xml.reason.txt").read_text(encoding="utf-8")
    assert "file: broken.xml" in reason
    assert "line 5, column 17: not well-formed XML: mismatched tag" in reason
    assert "nothing from this file was handed over" in reason
    assert [p["@number"] for p in rt.pending("exports")] == ["000000000000004711", "000000000000004712"]
    assert not (rt.inbox / "broken.xml").exists()


def test_a_file_without_its_done_marker_is_not_taken(runtime: Callable[[str], Runtime]) -> None:
    rt = runtime(event_flow("marked", "marked"))
    half = rt.inbox / "half.csv"
    half.write_text("sku;qty\nA;1\nB;", encoding="utf-8")  # the sender is still writing
    (rt.inbox / "whole.csv").write_text("sku;qty\nC;3\n", encoding="utf-8")
    (rt.inbox / "whole.csv.done").touch()

    async def scenario() -> None:
        task = rt.consume("marked", "marked")
        await until(lambda: (rt.inbox / "archive" / "whole.csv").exists(), "the marked file archived")
        # Several polls have passed since: the unmarked file was seen and left alone each time.
        assert half.exists() and [p["sku"] for p in rt.pending("marked")] == ["C"]
        with half.open("a", encoding="utf-8") as rest:
            rest.write("2\n")
        (rt.inbox / "half.csv.done").touch()
        await until(lambda: (rt.inbox / "archive" / "half.csv").exists(), "the file archived once marked")
        await stop(task)

    asyncio.run(scenario())
    assert [p["sku"] for p in rt.pending("marked")] == ["C", "A", "B"]
    assert not (rt.inbox / "half.csv.done").exists() and not (rt.inbox / "whole.csv.done").exists()


def test_a_file_is_taken_only_once_it_held_still_for_a_poll() -> None:
    settle = Settle()
    assert settle.look({"a.csv": (10, 1, 7)}) == set()  # first seen: maybe still being written
    assert settle.look({"a.csv": (20, 2, 7)}) == set()  # it grew since
    assert settle.look({"a.csv": (20, 2, 7), "b.csv": (5, 3, 8)}) == {"a.csv"}
    assert settle.look({"b.csv": (5, 3, 8)}) == {"b.csv"}
    assert settle.look({"a.csv": (20, 2, 7)}) == set()  # came back (a new file of the same name): wait again


def test_a_file_must_hold_still_for_the_hold_time_on_the_daemons_clock() -> None:
    now = [100.0]
    settle = Settle(hold=1.0, clock=lambda: now[0])
    assert settle.look({"a.csv": (10, 1, 7)}) == set()
    now[0] += 0.4
    assert settle.look({"a.csv": (10, 1, 7)}) == set()  # unchanged, but only for 0.4 s
    now[0] += 0.7
    assert settle.look({"a.csv": (10, 1, 7)}) == {"a.csv"}  # 1.1 s since its signature was first seen


def test_a_watched_directory_is_looked_at_when_a_file_arrives_not_at_the_next_poll(tmp_path: Path) -> None:
    """poll: 1h, so only the change notice can bring the file in before the deadline."""
    drop = {"pattern": "prices_*.csv", "format": "csv", "delimiter": ";", "decimal_comma": True}
    connection = open_files(tmp_path, {"prices": drop}, poll="1h", settle="50ms")
    received: list[Message] = []

    async def scenario() -> None:
        async def handler(message: Message) -> None:
            received.append(message)

        task = asyncio.create_task(connection.consume("prices", handler))
        await asyncio.sleep(0.2)  # the first look: an empty directory, now watched
        drop_file(tmp_path, "prices_bad_number.csv")
        await until(lambda: (tmp_path / "archive" / "prices_bad_number.csv").exists(), "the file archived", 20)
        await stop(task)

    asyncio.run(scenario())
    assert len(received) == 3


def test_a_change_notice_at_the_moment_of_a_cancel_does_not_swallow_it(tmp_path: Path) -> None:
    """Stopping the event path must stop it, even when a notice arrives in the same turn of the loop
    (asyncio.wait_for on Python 3.11 returned normally then, and the consumer polled on for good)."""
    from connectors.file.client import _Watch
    from engine.connector import system_log

    async def scenario() -> None:
        watch = _Watch(tmp_path, enabled=False, log=system_log("file", "drops"))
        waiting = asyncio.create_task(watch.changed(10))
        await asyncio.sleep(0)  # waiting for a notice
        watch._event.set()  # a notice ...
        waiting.cancel()  # ... and the daemon stopping the consumer, in the same turn
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(scenario())


def test_crash_half_way_through_a_file_then_restart_stores_each_record_once(
    runtime: Callable[[str], Runtime],
) -> None:
    rt = runtime(event_flow("stock", "stock", id_field="material"))
    rows = [f"{4700 + i:018d};DE0{1 + i % 2};{i},5" for i in range(10)]
    (rt.inbox / "stock_0001.csv").write_text("material;plant;available\n" + "\n".join(rows) + "\n", encoding="utf-8")

    async def first_run() -> int:
        task = rt.consume("stock", "stock")
        await until(lambda: len(rt.pending("stock")) >= 3, "three records stored")
        await stop(task)  # the daemon dies with the file half done
        return len(rt.pending("stock"))

    stored_before = asyncio.run(first_run())
    assert 3 <= stored_before < 10
    assert (rt.inbox / "stock_0001.csv").exists() and not (rt.inbox / "archive").exists()

    rt.restart()

    async def second_run() -> None:
        task = rt.consume("stock", "stock")
        await until(lambda: (rt.inbox / "archive" / "stock_0001.csv").exists(), "the file archived")
        await stop(task)

    asyncio.run(second_run())
    rows_in_inbox = rt.inbox_rows("stock")
    assert len(rows_in_inbox) == 10 and len({key for key, _, _ in rows_in_inbox}) == 10
    assert [p["material"] for _, p, _ in rows_in_inbox] == [f"{4700 + i:018d}" for i in range(10)]
    assert [p["available"] for _, p, _ in rows_in_inbox] == [i + 0.5 for i in range(10)]
    assert rt.metrics.get("duplicates", "stock") == stored_before  # read again, stored once
    assert rt.metrics.get("received", "stock") == 10 - stored_before
    assert not (rt.inbox / "stock_0001.csv").exists()


def test_a_missing_directory_is_waited_for_not_fatal(runtime: Callable[[str], Runtime]) -> None:
    rt = runtime(event_flow("stock", "stock"))
    rt.inbox.rmdir()  # the share is not mounted yet

    async def scenario() -> None:
        connection = rt.connection()
        task = rt.consume("stock", "stock", connection)
        for _ in range(5):
            await asyncio.sleep(connection.poll)  # a few polls against a missing directory
        assert not task.done()  # still polling
        rt.inbox.mkdir()  # mounted
        (rt.inbox / "stock_1.csv").write_text("material;plant;available\nX-1;DE01;1\n", encoding="utf-8")
        await until(lambda: (rt.inbox / "archive" / "stock_1.csv").exists(), "the file archived")
        await stop(task)

    asyncio.run(scenario())
    assert rt.pending("stock") == [{"material": "X-1", "plant": "DE01", "available": 1}]


def test_a_file_whose_header_lacks_a_numbers_column_is_rejected(tmp_path: Path) -> None:
    drop_file(tmp_path, "prices_bad_number.csv", "materials_1.csv")
    assert asyncio.run(read_all(open_files(tmp_path, {"materials": MATERIALS_DE}), "materials")) == []
    reason = (tmp_path / "rejected" / "materials_1.csv.reason.txt").read_text(encoding="utf-8")
    assert "line 1: the header row has no column 'LABST' (named in the drop's numbers)" in reason


def test_an_unknown_drop_is_terminal_with_the_nearest_name(tmp_path: Path) -> None:
    connection = open_files(tmp_path, {"materials": MATERIALS_DE})

    async def handler(_message: Message) -> None:
        return None

    with pytest.raises(TerminalError, match="has no drop 'material' to event — did you mean 'materials'"):
        asyncio.run(connection.consume("material", handler))


# -- the schedule trigger's read path -------------------------------------------------------------------


def test_read_hands_a_bad_row_over_rejected_in_its_place_and_archives_the_file_with_its_reasons(
    tmp_path: Path,
) -> None:
    drop_file(tmp_path, "prices_bad_number.csv")
    drop = {"pattern": "prices_*.csv", "format": "csv", "delimiter": ";", "decimal_comma": True, "numbers": ["KBETR"]}
    first, bad, third = items_of(asyncio.run(read_all(open_files(tmp_path, {"prices": drop}), "prices")))
    digest = hashlib.sha256((DATA / "prices_bad_number.csv").read_bytes()).hexdigest()[:12]
    assert [i.id for i in (first, bad, third)] == [f"prices_bad_number.csv:{digest}:{n}" for n in range(3)]
    assert [first.data["MATNR"], third.data["MATNR"]] == ["000000000000004711", "000000000000004713"]
    assert not first.rejected and not third.rejected
    problem = "line 3: column 'KBETR' holds '12,3x', which is not a number (this drop writes numbers as 1.234,50)"
    assert bad.rejected == f"prices_bad_number.csv: {problem}"
    assert set(bad.data) == {"raw"} and '"KBETR": "12,3x"' in bad.data["raw"]
    assert (tmp_path / "archive" / "prices_bad_number.csv").exists() and not (tmp_path / "rejected").exists()
    reason = (tmp_path / "archive" / "prices_bad_number.csv.reason.txt").read_text(encoding="utf-8")
    assert reason.startswith("file: prices_bad_number.csv\narchived at: ")
    assert f"rejected at read (1 record(s), each handed over to dead letters with its reason):\n  {problem}\n" in reason
    assert "the file's other 2 record(s) were handed over" in reason


def test_a_filter_keeps_rejected_rows_whose_fields_cannot_be_judged(tmp_path: Path) -> None:
    drop_file(tmp_path, "prices_bad_number.csv")
    drop = {"pattern": "prices_*.csv", "format": "csv", "delimiter": ";", "decimal_comma": True, "numbers": ["KBETR"]}
    connection = open_files(tmp_path, {"prices": drop})
    items = items_of(asyncio.run(read_all(connection, "prices", filter={"MATNR": "000000000000004713"})))
    assert [(i.id.rsplit(":", 1)[1], bool(i.rejected)) for i in items] == [("1", True), ("2", False)]
    reason = (tmp_path / "archive" / "prices_bad_number.csv.reason.txt").read_text(encoding="utf-8")
    assert "the file's other 1 record(s) were handed over" in reason  # the filtered-out one was not


def test_read_leaves_the_file_in_place_when_the_trigger_stops_before_storing_its_last_page(tmp_path: Path) -> None:
    drop_file(tmp_path, "stock.jsonl")
    connection = open_files(tmp_path, {"stock": {"pattern": "*.jsonl", "format": "jsonl"}})

    async def scenario() -> None:
        pages = connection.read("stock", page_size=2)
        assert len(await anext(pages)) == 2
        await pages.aclose()  # the schedule pass failed while storing: the generator is closed

    asyncio.run(scenario())
    assert (tmp_path / "stock.jsonl").exists() and not (tmp_path / "archive").exists()


def test_a_file_of_the_same_name_again_is_archived_beside_the_first(tmp_path: Path) -> None:
    connection = open_files(tmp_path, {"stock": {"pattern": "*.jsonl", "format": "jsonl"}})
    for _ in range(2):
        drop_file(tmp_path, "stock.jsonl")
        asyncio.run(read_all(connection, "stock"))
    archived = sorted(p.name for p in (tmp_path / "archive").iterdir())
    assert len(archived) == 2 and archived[-1] == "stock.jsonl"
    assert archived[0].startswith("stock.") and archived[0].endswith("Z.jsonl")


def test_run_once_reads_a_drop_and_writes_another_end_to_end(tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    flows = (
        "  nightly:\n"
        "    trigger: { schedule: '0 3 * * *' }\n"
        "    source: { system: drops, read: stock, id: material }\n"
        '    transform: \'{ "sku": $string($number(material)), "plant": plant, "qty": available }\'\n'
        "    target: { system: outbox, write: stock, key: sku }\n"
    )
    spec = tmp_path / "spec" / "seamline.yaml"
    spec.parent.mkdir()
    spec.write_text(SPEC.format(inbox=inbox, outbox=outbox, flows=flows), encoding="utf-8")
    inbox.mkdir()
    outbox.mkdir()
    (inbox / "stock_0001.csv").write_text("material;plant;available\n000000000000004711;DE01;12,5\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(spec.parent), "--once", "--state", f"sqlite:///{tmp_path / 's.db'}"])
    assert result.exit_code == 0, result.output
    (written,) = outbox.glob("STOCK_*.json")
    assert written.name.startswith("STOCK_4711-")
    assert json.loads(written.read_text(encoding="utf-8")) == {"sku": "4711", "plant": "DE01", "qty": 12.5}
    assert (inbox / "archive" / "stock_0001.csv").exists()


# -- ReadItems: ids, groups, rejected rows ---------------------------------------------------------------

SAP_MATMAS: dict[str, Any] = {"pattern": "sap_matmas_*.csv", "format": "csv", "delimiter": ";", "decimal_comma": True}
# The fixture's rows in file order (index: MATNR, SPRAS); the export lists 4712 and 4713 interleaved
# and 4714's English row first, so grouping by MATNR has to reorder.
SAP_ROWS = [("4711", "DE"), ("4711", "EN"), ("4712", "DE"), ("4713", "DE"),
            ("4712", "EN"), ("4713", "EN"), ("4714", "EN"), ("4714", "DE")]  # fmt: skip
SAP_GROUPED = [0, 1, 2, 4, 3, 5, 6, 7]  # row indices in the order a MATNR-grouped read hands them over


def read_sap_materials(directory: Path, **kwargs: Any) -> list[list[Any]]:
    """Drop the SAP material fixture into ``directory`` and read it on a schedule, whole."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SAP_MATMAS_DE, directory / SAP_MATMAS_DE.name)
    return asyncio.run(read_all(open_files(directory, {"materials": SAP_MATMAS}), "materials", **kwargs))


def test_the_sap_material_fixture_reads_as_german_locale_text_and_numbers(tmp_path: Path) -> None:
    first, *_, last = records_of(read_sap_materials(tmp_path))
    assert first == {
        "MATNR": "000000000000004711",  # leading zeros kept: a code
        "SPRAS": "DE",
        "MAKTX": "Kugelventil DN 25 Messing",
        "MTART": "HAWA",
        "MEINS": "ST",
        "BRGEW": 1.25,  # 1,250
        "NTGEW": 1.1,
        "GEWEI": "KG",
        "LVORM": "",  # not flagged for deletion
    }
    assert last["MAKTX"] == "Schmierfett, lose (Lithiumseife, weiß)"  # a comma in text stays text
    records = records_of(read_sap_materials(tmp_path / "again"))
    assert [(r["MATNR"][-4:], r["SPRAS"]) for r in records] == SAP_ROWS
    assert {r["MATNR"][-4:]: (r["BRGEW"], r["GEWEI"], r["LVORM"]) for r in records} == {
        "4711": (1.25, "KG", ""),
        "4712": (12500.0, "G", "X"),  # 12.500,000 g; flagged for deletion
        "4713": (4.5, "G", ""),
        "4714": (1.05, "KG", ""),
    }


@pytest.mark.parametrize("page_size", range(1, 10))
def test_pages_grouped_by_matnr_never_split_a_material(tmp_path: Path, page_size: int) -> None:
    pages = read_sap_materials(tmp_path, page_size=page_size, group_by=["MATNR"])
    digest = hashlib.sha256(SAP_MATMAS_DE.read_bytes()).hexdigest()[:12]
    assert [item.id for item in items_of(pages)] == [f"sap_matmas_de.csv:{digest}:{i}" for i in SAP_GROUPED]
    where: dict[str, int] = {}
    for number, page in enumerate(pages):
        assert len(page) <= max(page_size, 2)  # a group (2 rows) larger than the page is a page of its own
        for item in page:
            assert where.setdefault(item.data["MATNR"], number) == number, f"{item.data['MATNR']} split"
    assert len(where) == 4 and (tmp_path / "archive" / "sap_matmas_de.csv").exists()


@pytest.mark.parametrize(
    ("page_size", "layout"),
    [
        (1, [["4711", "4711"], ["4712", "4712"], ["4713", "4713"], ["4714", "4714"]]),
        (3, [["4711", "4711"], ["4712", "4712"], ["4713", "4713"], ["4714", "4714"]]),
        (4, [["4711", "4711", "4712", "4712"], ["4713", "4713", "4714", "4714"]]),
        (7, [["4711", "4711", "4712", "4712", "4713", "4713"], ["4714", "4714"]]),
        (100, [["4711", "4711", "4712", "4712", "4713", "4713", "4714", "4714"]]),
    ],
)
def test_grouped_pages_are_cut_only_between_groups(tmp_path: Path, page_size: int, layout: list[list[str]]) -> None:
    pages = read_sap_materials(tmp_path, page_size=page_size, group_by=["MATNR"])
    assert [[item.data["MATNR"][-4:] for item in page] for page in pages] == layout
    languages = [item.data["SPRAS"] for item in items_of(pages)]
    assert languages == ["DE", "EN", "DE", "EN", "DE", "EN", "EN", "DE"]  # file order within a group


def test_without_group_by_pages_keep_file_order(tmp_path: Path) -> None:
    pages = read_sap_materials(tmp_path, page_size=3)
    assert [len(page) for page in pages] == [3, 3, 2]
    assert [(i.data["MATNR"][-4:], i.data["SPRAS"]) for i in items_of(pages)] == SAP_ROWS


def test_ids_are_the_same_each_time_a_file_is_read_and_new_when_it_changes(tmp_path: Path) -> None:
    first = [i.id for i in items_of(read_sap_materials(tmp_path, group_by=["MATNR"]))]
    again = [i.id for i in items_of(read_sap_materials(tmp_path, group_by=["MATNR"]))]  # dropped again
    assert first == again and len(set(first)) == 8
    assert sorted(p.name for p in (tmp_path / "archive").iterdir())[-1] == "sap_matmas_de.csv"  # and a stamped one
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "sap_matmas_de.csv").write_bytes(SAP_MATMAS_DE.read_bytes().replace(b"1,250", b"1,260"))
    later = [i.id for i in items_of(asyncio.run(read_all(open_files(changed, {"materials": SAP_MATMAS}), "materials")))]
    assert [i.rsplit(":", 1)[1] for i in later] == [str(n) for n in range(8)]
    assert not set(later) & set(first)  # new content: no row is mistaken for an old one


def test_rejected_rows_belong_to_no_group_and_keep_their_place(tmp_path: Path) -> None:
    (tmp_path / "stock_1.csv").write_text(
        "sku;plant;qty\nA;1000;1\nB;1000;2\nA;2000;x\nB;2000;3\nA;3000;4\n", encoding="utf-8"
    )
    drop = {"pattern": "stock_*.csv", "format": "csv", "delimiter": ";", "numbers": ["qty"]}
    pages = asyncio.run(read_all(open_files(tmp_path, {"stock": drop}), "stock", page_size=2, group_by=["sku"]))
    laid_out = [[(i.id.rsplit(":", 1)[1], i.data.get("sku", "rejected")) for i in page] for page in pages]
    assert laid_out == [[("0", "A"), ("4", "A")], [("1", "B"), ("3", "B")], [("2", "rejected")]]
    (bad,) = [i for i in items_of(pages) if i.rejected]
    assert bad.rejected.startswith("stock_1.csv: line 4: column 'qty' holds 'x', which is not a number")
    assert (tmp_path / "archive" / "stock_1.csv.reason.txt").exists()


def test_groups_by_a_dotted_path_into_idoc_segments() -> None:
    from connectors.file import Drop
    from connectors.file.pages import pages, read_items, units

    entries = read_entries((DATA / "MATMAS05_0001.xml").read_bytes(), Drop(pattern="*.xml", format="idoc"))
    entries = [replace(e, index=n) for n, e in enumerate([*entries, *entries])]  # both materials, twice
    items = read_items("MATMAS05_0001.xml", "0" * 12, entries, None)
    (page,) = list(pages(units(items, ["E1MARAM.MATNR"]), 10))
    assert [i.id.rsplit(":", 1)[1] for i in page] == ["0", "2", "1", "3"]
    assert [len(u) for u in units(items, [])] == [1, 1, 1, 1]  # an empty group_by groups nothing


def test_a_mixed_idoc_file_hands_over_one_record_and_one_rejection_then_is_archived_with_its_reason(
    tmp_path: Path,
) -> None:
    drop_file(tmp_path, "MATMAS05_missing_segment.xml")
    connection = open_files(tmp_path, {"materials": {"pattern": "MATMAS*.xml", "format": "idoc"}})
    good, bad = items_of(asyncio.run(read_all(connection, "materials", group_by=["E1MARAM.MATNR"])))
    digest = hashlib.sha256((DATA / "MATMAS05_missing_segment.xml").read_bytes()).hexdigest()[:12]
    assert (good.id, bad.id) == (f"MATMAS05_missing_segment.xml:{digest}:0", f"MATMAS05_missing_segment.xml:{digest}:1")
    assert not good.rejected and good.data["E1MARAM"]["MATNR"] == "000000000000004712"
    problem = "line 32: IDoc 2 (DOCNUM 0000000000123458): MATMAS needs segment E1MARAM (material header); it is missing"
    assert bad.rejected == f"MATMAS05_missing_segment.xml: {problem}"
    assert set(bad.data) == {"raw"} and "Segment ohne Kopf" in bad.data["raw"]
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == [
        "MATMAS05_missing_segment.xml",
        "MATMAS05_missing_segment.xml.reason.txt",
    ]
    assert not (tmp_path / "rejected").exists() and not (tmp_path / "MATMAS05_missing_segment.xml").exists()
    reason = (tmp_path / "archive" / "MATMAS05_missing_segment.xml.reason.txt").read_text(encoding="utf-8")
    assert "file: MATMAS05_missing_segment.xml\n" in reason and f"  {problem}\n" in reason
    assert "the file's other 1 record(s) were handed over" in reason


def test_an_archived_file_with_a_stamped_name_has_its_reason_file_beside_it(tmp_path: Path) -> None:
    connection = open_files(tmp_path, {"materials": {"pattern": "MATMAS*.xml", "format": "idoc"}})
    for _ in range(2):
        drop_file(tmp_path, "MATMAS05_missing_segment.xml")
        asyncio.run(read_all(connection, "materials"))
    names = sorted(p.name for p in (tmp_path / "archive").iterdir())
    assert len(names) == 4
    stamped = next(n for n in names if n.endswith("Z.xml"))
    assert f"{stamped}.reason.txt" in names and "MATMAS05_missing_segment.xml.reason.txt" in names


# -- writing --------------------------------------------------------------------------------------------


def write(connection: FileConnection, entity: str, record: Any, key: Any = None, idem: str = "k1") -> str:
    return asyncio.run(connection.write(entity, record, key=key, mode="upsert", idempotency_key=idem))


def test_a_write_is_one_whole_file_named_by_key_and_a_rewrite_is_a_no_op(tmp_path: Path) -> None:
    connection = open_files(tmp_path, {"orders": {"pattern": "ORDERS_*.json", "format": "json"}})
    record = {"number": "SO-1", "customer": "Müller", "total": 12.5}
    name = write(connection, "orders", record, key="SO/1", idem="orders:SO-1@1#erp.orders")
    assert name.startswith("ORDERS_SO_1-") and name.endswith(".json")
    assert json.loads((tmp_path / name).read_text(encoding="utf-8")) == record
    assert write(connection, "orders", {**record, "total": 99}, key="SO/1", idem="orders:SO-1@1#erp.orders") == name
    assert json.loads((tmp_path / name).read_text(encoding="utf-8")) == record  # the first write stands
    assert write(connection, "orders", record, key="SO/1", idem="orders:SO-1@2#erp.orders") != name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_csv_writes_in_the_drops_locale_and_idocs_round_trip(tmp_path: Path) -> None:
    drops = {
        "prices": {"pattern": "prices_*.csv", "format": "csv", "delimiter": ";", "decimal_comma": True},
        "materials": {"pattern": "MATMAS_*.xml", "format": "idoc"},
    }
    connection = open_files(tmp_path, drops)
    name = write(connection, "prices", {"MATNR": "000000000000004711", "KBETR": 1234.5, "KPEIN": 1}, key="4711")
    assert (tmp_path / name).read_bytes() == b"MATNR;KBETR;KPEIN\r\n000000000000004711;1234,5;1\r\n"
    first, _ = idoc_records("MATMAS05_0001.xml")
    name = write(connection, "materials", first, key=first["E1MARAM"]["MATNR"])
    written = (tmp_path / name).read_text(encoding="utf-8")
    assert written.startswith("<?xml version='1.0' encoding='utf-8'?>\n<MATMAS05>\n  <IDOC BEGIN=\"1\">")
    assert '<E1MARAM SEGMENT="1">' in written
    (again,) = read_entries((tmp_path / name).read_bytes(), connection.options.drops["materials"])
    assert again.data == first


@pytest.mark.parametrize(
    ("drop", "record", "message"),
    [
        ({"pattern": "o_*.csv", "format": "csv"}, {"sku": "A", "lines": [1]}, "field 'lines' holds a list"),
        (
            {"pattern": "o_*.csv", "format": "csv", "encoding": "cp1252"},
            {"name": "深圳 Trading"},
            "field 'name' holds '深' (U+6DF1), which cp1252 cannot write",
        ),
        ({"pattern": "o_*.xml", "format": "xml"}, {"a": 1, "b": 2}, "an xml drop writes one root element"),
        ({"pattern": "o_*.xml", "format": "xml"}, {"order": {"1st": "x"}}, "'1st' cannot be an XML element"),
        ({"pattern": "o_*.xml", "format": "idoc"}, {"E1MARAM": {}}, "an IDoc needs its control record EDI_DC40"),
        ({"pattern": "orders.json", "format": "json"}, {"a": 1}, "needs exactly one '*'"),
    ],
)
def test_a_record_the_drop_cannot_hold_is_terminal(
    tmp_path: Path, drop: dict[str, Any], record: Any, message: str
) -> None:
    connection = open_files(tmp_path, {"out": drop})
    with pytest.raises(TerminalError, match=r"erp_files\.out: ") as failure:
        write(connection, "out", record)
    assert message in str(failure.value)
    assert list(tmp_path.iterdir()) == []


def test_json_keeps_characters_its_encoding_lacks_as_escapes(tmp_path: Path) -> None:
    connection = open_files(tmp_path, {"out": {"pattern": "o_*.json", "format": "json", "encoding": "cp1252"}})
    name = write(connection, "out", {"name": "深圳 Müller"})
    assert json.loads((tmp_path / name).read_bytes().decode("cp1252")) == {"name": "深圳 Müller"}


def test_a_missing_directory_or_a_full_disk_is_transient(tmp_path: Path) -> None:
    drops = {"out": {"pattern": "o_*.json", "format": "json"}}
    with pytest.raises(TransientError, match="it is not there \\(a network share not mounted\\?\\) \\(ENOENT\\)"):
        write(open_files(tmp_path / "gone", drops), "out", {"a": 1})

    class FullDisk(Disk):
        def publish(self, path: Path, data: bytes) -> bool:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    options = FileOptions.model_validate({"connector": "file", "directory": str(tmp_path), "drops": drops})
    full = FileConnection(options, ConnectContext(system="erp_files", client="t"), disk=FullDisk())
    with pytest.raises(TransientError, match="the disk is full \\(ENOSPC\\)"):
        write(full, "out", {"a": 1})


# -- options --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ({"pattern": "*.csv", "format": "csv", "encoding": "cp1525"}, "encoding 'cp1525' — did you mean 'cp1252'"),
        ({"pattern": "*.json", "format": "json", "numbers": ["x"]}, "numbers applies to csv drops only"),
        ({"pattern": "*.csv", "format": "csv", "record_path": "a"}, "record_path applies to json and xml drops only"),
        ({"pattern": "../*.csv", "format": "csv"}, "must be a glob inside the system's directory"),
        ({"pattern": "/srv/in/*.csv", "format": "csv"}, "must be a glob inside the system's directory"),
    ],
)  # fmt: skip
def test_drop_options_that_do_not_fit_are_spec_errors(drop: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FileOptions.model_validate({"connector": "file", "directory": "in", "drops": {"d": drop}})


def test_a_relative_directory_without_a_base_is_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    connection = open_files(Path("drops"), {"materials": MATERIALS_DE})
    assert connection.directory == tmp_path / "drops" and connection.archive == tmp_path / "drops" / "archive"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "cp1252", "iso-8859-1"])
def test_xml_writes_read_back_whole_in_any_encoding(tmp_path: Path, encoding: str) -> None:
    connection = open_files(tmp_path, {"out": {"pattern": "o_*.xml", "format": "xml", "encoding": encoding}})
    record = {"order": {"@id": "SO-1", "customer": "Müller & Söhne <GmbH>", "note": "5 € – 深圳", "line": ["A", "B"]}}
    name = write(connection, "out", record)
    (entry,) = read_entries((tmp_path / name).read_bytes(), connection.options.drops["out"])
    assert entry.data == record  # characters the encoding lacks travel as character references


def test_idoc_files_in_utf16_or_windows_1252_are_read_by_their_declaration(tmp_path: Path) -> None:
    from connectors.file import Drop

    text = (DATA / "DEBMAS07_0001.xml").read_text(encoding="utf-8")
    drop = Drop(pattern="*.xml", format="idoc")
    for codec, declared in (("utf-16", "UTF-16"), ("cp1252", "windows-1252")):
        data = text.replace('encoding="UTF-8"', f'encoding="{declared}"').encode(codec)
        (entry,) = read_entries(data, drop)
        assert entry.data["E1KNA1M"]["ORT01"] == "Köln"
    undeclared = text.split("\n", 1)[1].encode("cp1252")
    (entry,) = read_entries(undeclared, Drop(pattern="*.xml", format="idoc", encoding="cp1252"))
    assert entry.data["E1KNA1M"]["STRAS"] == "Hauptstraße 5"
    (tmp_path / "DEBMAS07_1.xml").write_bytes(undeclared)
    connection = open_files(tmp_path, {"customers": {"pattern": "DEBMAS*.xml", "format": "idoc"}})
    assert asyncio.run(read_all(connection, "customers")) == []
    reason = (tmp_path / "rejected" / "DEBMAS07_1.xml.reason.txt").read_text(encoding="utf-8")
    assert "not well-formed (invalid token); the file is not utf-8 and does not declare its encoding" in reason
