"""SAP IDoc XML (MATMAS, DEBMAS, ORDERS and others): one record per ``<IDOC>``, segments kept by name.

An IDoc file as SAP's XML file port writes it::

    <MATMAS05>                        root: the basic type (or the extension, CIMTYP)
      <IDOC BEGIN="1">                one IDoc; a file may hold several
        <EDI_DC40 SEGMENT="1">...     the control record: DOCNUM, IDOCTYP, MESTYP, SNDPRN, ...
        <E1MARAM SEGMENT="1">         data segments; child segments nest inside their parent
          <MATNR>...</MATNR>          fields are elements with text
          <E1MAKTM SEGMENT="1">...

The record of one IDoc is the content of its ``<IDOC>`` as data, in the project's XML convention
(:func:`connectors.file.formats.node_data`): ``{"EDI_DC40": {...}, "E1MARAM": {"MATNR": "...",
"E1MAKTM": [{...}, {...}]}}``. A segment that repeats is a list, one that occurs once a map (JSONata
paths such as ``E1MARAM.E1MAKTM[SPRAS_ISO='DE'].MAKTX`` read both alike); field values stay text,
exactly as SAP wrote them (``MATNR`` keeps its leading zeros; IDoc numbers use a decimal point).
The ``SEGMENT`` and ``BEGIN`` markers carry no data and are left out; every segment is a map, even
an empty one.

Mandatory segments are checked per message type (from the control record's MESTYP, else its
IDOCTYP, else the root's name): an IDoc without them is a malformed record, dead-lettered with the
reason, while the file's other IDocs go on. The checks are those without which no flow can use the
IDoc (shapes from ``contracts-magento-erp.md`` §C.2):

* every IDoc: the control record ``EDI_DC40``;
* MATMAS: ``E1MARAM`` (material header) with ``MATNR`` (or S/4's ``MATNR_LONG``);
* DEBMAS: ``E1KNA1M`` (customer general data) with ``KUNNR``;
* ORDERS / ORDCHG / ORDRSP: ``E1EDK01`` (document header); ORDERS also a sold-to partner
  (``E1EDKA1`` with ``PARVW`` ``AG``) and at least one item ``E1EDP01``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from connectors.file.formats import Entry, Unreadable, Unwritable, XmlNode, build_element, node_data

__all__ = ["idoc_element", "missing_segments", "read_idocs"]

_MARKERS = frozenset({"SEGMENT", "BEGIN"})


def read_idocs(root: XmlNode) -> list[Entry]:
    """One entry per ``<IDOC>`` in document order; Unreadable when the file holds none."""
    idocs = _find_idocs(root)
    if not idocs:
        raise Unreadable(
            f"no <IDOC> element in <{root.name}>; is this an IDoc file? (format: xml reads other XML)",
            line=root.line,
            column=root.column,
        )
    entries: list[Entry] = []
    for index, idoc in enumerate(idocs):
        record = node_data(idoc, skip_attrs=_MARKERS, as_map=_is_segment)
        if not isinstance(record, dict):
            record = {}
        control = record.get("EDI_DC40")
        message_type = _message_type(control, root.name)
        missing = missing_segments(record, message_type)
        if missing:
            docnum = control.get("DOCNUM", "") if isinstance(control, dict) else ""
            which = f"IDoc {index + 1}" + (f" (DOCNUM {docnum})" if docnum else "")
            kind = message_type or "an IDoc"
            error = f"line {idoc.line}: {which}: {kind} needs {'; '.join(missing)}"
            entries.append(Entry(index, idoc.line, error=error, raw=_json(record)))
        else:
            entries.append(Entry(index, idoc.line, record))
    return entries


def _is_segment(node: XmlNode) -> bool:
    return node.name == "IDOC" or "SEGMENT" in node.attrs


def _find_idocs(root: XmlNode) -> list[XmlNode]:
    """Every <IDOC>, in order, wherever the envelope puts them (not looking inside an IDoc)."""
    if root.name == "IDOC":
        return [root]
    found: list[XmlNode] = []
    for child in root.children:
        found.extend(_find_idocs(child))
    return found


def _message_type(control: Any, root_name: str) -> str:
    if isinstance(control, dict):
        for field in ("MESTYP", "IDOCTYP"):
            value = control.get(field)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return root_name


def _segments(record: Any, name: str) -> list[dict[str, Any]]:
    value = record.get(name) if isinstance(record, dict) else None
    items = value if isinstance(value, list) else [value] if value is not None else []
    return [item for item in items if isinstance(item, dict)]


def _has_field(segment: dict[str, Any], *fields: str) -> bool:
    return any(isinstance(segment.get(f), str) and segment[f].strip() for f in fields)


def _matmas(record: dict[str, Any]) -> list[str]:
    headers = _segments(record, "E1MARAM")
    if not headers:
        return ["segment E1MARAM (material header); it is missing"]
    if not all(_has_field(h, "MATNR", "MATNR_LONG") for h in headers):
        return ["field MATNR (the material number) in E1MARAM; it is empty or missing"]
    return []


def _debmas(record: dict[str, Any]) -> list[str]:
    general = _segments(record, "E1KNA1M")
    if not general:
        return ["segment E1KNA1M (customer general data); it is missing"]
    if not all(_has_field(g, "KUNNR") for g in general):
        return ["field KUNNR (the customer number) in E1KNA1M; it is empty or missing"]
    return []


def _order_header(record: dict[str, Any]) -> list[str]:
    return [] if _segments(record, "E1EDK01") else ["segment E1EDK01 (document header); it is missing"]


def _orders(record: dict[str, Any]) -> list[str]:
    missing = _order_header(record)
    partners = _segments(record, "E1EDKA1")
    if not any(p.get("PARVW") == "AG" for p in partners):
        missing.append("a sold-to partner (segment E1EDKA1 with PARVW AG); there is none")
    if not _segments(record, "E1EDP01"):
        missing.append("at least one item (segment E1EDP01); there is none")
    return missing


_CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "MATMAS": _matmas,
    "DEBMAS": _debmas,
    "ORDERS": _orders,
    "ORDCHG": _order_header,
    "ORDRSP": _order_header,
}


def missing_segments(record: dict[str, Any], message_type: str) -> list[str]:
    """What the IDoc lacks for its message type ('MATMAS', or a basic type such as 'MATMAS05'); [] when whole."""
    missing = [] if _segments(record, "EDI_DC40") else ["the control record EDI_DC40; it is missing"]
    kind = message_type.upper()
    check = _CHECKS.get(kind) or next((c for name, c in _CHECKS.items() if kind.startswith(name)), None)
    if check is not None:
        missing.extend(check(record))
    return missing


def _json(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False)


# -- writing ----------------------------------------------------------------------------------------


def _mark_segment(element: ET.Element) -> None:
    element.set("SEGMENT", "1")


def idoc_element(record: Any) -> ET.Element:
    """The IDoc file for one record shaped as :func:`read_idocs` reads it; the root is CIMTYP or IDOCTYP."""
    if not isinstance(record, dict):
        raise Unwritable(f"an idoc drop takes one IDoc as a map of segments, not {type(record).__name__}")
    control = record.get("EDI_DC40")
    if not isinstance(control, dict):
        raise Unwritable("an IDoc needs its control record EDI_DC40 (a map with IDOCTYP, MESTYP, ...)")
    root_name = str(control.get("CIMTYP") or control.get("IDOCTYP") or "").strip()
    if not root_name:
        raise Unwritable("the control record EDI_DC40 has no IDOCTYP (e.g. MATMAS05): it names the file's root")
    root = ET.Element(root_name)
    idoc = build_element("IDOC", record, segment=_mark_segment)
    del idoc.attrib["SEGMENT"]  # IDOC is the envelope, not a segment
    idoc.set("BEGIN", "1")
    root.append(idoc)
    return root
