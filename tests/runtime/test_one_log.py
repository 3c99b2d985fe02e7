"""One log (issue 15 item 7): connectors' and libraries' Python loggers write into the daemon's JSON log,
masked, bound to their system, with ISO-8601 timestamps; the level is the operator's choice."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

from engine.connector import system_log
from engine.runtime.logs import JsonLog, iso_time, routed
from engine.secrets import Masker

SECRET = "s3cr3t-Pa55word"
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    out = []
    for line in stream.getvalue().splitlines():
        out.append(json.loads(line))  # every line is JSON: nothing plain, no traceback lines
    return out


def a_log(level: str = "info") -> tuple[JsonLog, io.StringIO]:
    masker = Masker()
    masker.add(SECRET)
    stream = io.StringIO()
    return JsonLog("acme", masker, stream, level=level), stream


def test_a_connector_warning_is_one_masked_json_line_bound_to_its_system() -> None:
    log, stream = a_log()
    with routed(log):
        system_log("file", "erp").warning("cannot read %s with password %s", "drop.csv", SECRET)
    (line,) = lines(stream)
    assert line["level"] == "warning"
    assert line["event"] == "connector_log"
    assert line["system"] == "erp"
    assert line["logger"] == "seamline.connectors.file"
    assert line["client"] == "acme"
    assert SECRET not in stream.getvalue()
    assert "drop.csv" in line["message"]
    assert ISO.match(line["ts"]), line["ts"]


def test_connector_info_lines_are_kept_and_debug_follows_the_level() -> None:
    log, stream = a_log("info")
    with routed(log):
        system_log("amqp", "bus").info("consuming queue %r", "stock")
        system_log("amqp", "bus").debug("a detail")
    assert [line["message"] for line in lines(stream)] == ["consuming queue 'stock'"]

    log, stream = a_log("debug")
    with routed(log):
        system_log("amqp", "bus").debug("a detail")
    assert [line["message"] for line in lines(stream)] == ["a detail"]


def test_a_library_exception_is_one_line_with_its_error_and_the_stack_only_at_debug() -> None:
    def broker_drop() -> None:
        try:
            raise ConnectionResetError(f"connection reset by amqp://guest:{SECRET}@broker")
        except ConnectionResetError:
            logging.getLogger("aiormq.connection").exception("Unexpected connection close")

    log, stream = a_log("info")
    with routed(log):
        broker_drop()
    (line,) = lines(stream)
    assert line["event"] == "library_log"
    assert line["level"] == "error"
    assert line["logger"] == "aiormq.connection"
    assert line["error"].startswith("ConnectionResetError: connection reset by")
    assert "traceback" not in line
    assert SECRET not in stream.getvalue()

    log, stream = a_log("debug")
    with routed(log):
        broker_drop()
    (line,) = lines(stream)
    assert "Traceback" in line["traceback"]
    assert SECRET not in stream.getvalue()


def test_chatty_libraries_speak_at_warning_unless_debugging() -> None:
    log, stream = a_log("info")
    with routed(log):
        logging.getLogger("httpx").info('HTTP Request: GET http://erp/items "HTTP/1.1 200 OK"')
        logging.getLogger("httpx").warning("something worth seeing")
    assert [line["message"] for line in lines(stream)] == ["something worth seeing"]

    log, stream = a_log("debug")
    with routed(log):
        logging.getLogger("httpx").info("HTTP Request: GET http://erp/items")
    assert len(lines(stream)) == 1


def test_the_level_warning_drops_info_and_the_routing_is_undone_afterwards() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    httpx_level = logging.getLogger("httpx").level
    log, stream = a_log("warning")
    with routed(log):
        system_log("queue", "q").info("not shown")
        system_log("queue", "q").error("shown")
    assert [line["message"] for line in lines(stream)] == ["shown"]
    assert root.handlers == handlers and root.level == level
    assert logging.getLogger("httpx").level == httpx_level
    system_log("queue", "q").error("after: not in the log")
    assert "after" not in stream.getvalue()


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1_796_000_000.5) == "2026-11-30T00:53:20.500Z"
