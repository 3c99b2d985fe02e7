"""Functions seamline adds to every transform, for the data ERPs actually send.

Each is plain Python, registered on both JSONata backends, so both give the same answer.
A helper returns None for "nothing" (JSONata's undefined: the key is left out of an object)
and raises :class:`HelperError` with a JSONata-style code when its input is wrong.

=======================================  =====================================================
``$sapDate("20240131")``                 ``"2024-01-31"``; also ``"31.01.2024"``,
                                         ``"/Date(1706659200000)/"`` (OData V2) and ISO dates;
                                         SAP's empty date ``"00000000"`` gives nothing
``$sapTimestamp("20240131143000")``      ``"2024-01-31T14:30:00Z"``; also ``/Date(ms)/``
``$decimal("1.234,50")``                 ``1234.5``; ``"12,50-"`` (SAP's trailing minus) is
                                         ``-12.5``; ``$decimal("1.234", ",")`` names the decimal
                                         separator when a value is ambiguous
``$uom(2, "KAR", $lookups.units)``       ``24`` when the table says a KAR is 12 pieces
``$materialNumber("000000000000012345")`` ``"12345"``: SAP's leading zeros removed (alphanumeric
                                         numbers are left as they are)
``$padMaterial("12345")``                ``"000000000000012345"`` (18 wide; ``$padMaterial(x, 40)``
                                         for S/4HANA's long material numbers)
=======================================  =====================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

__all__ = ["HELPERS", "HelperError"]


class HelperError(ValueError):
    """A helper was given a value it cannot read; ``code`` is JSONata-style (D for dynamic errors)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_ODATA_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
_NUMBER_TEXT = re.compile(r"^[+-]?\d+(\.\d+)?$")


def _is_nothing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str:
    """A helper's argument as text, the same under both backends: jsonata-python hands over an
    integral number as a float (``4711.0``), jlens as an int; both must read as ``4711``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value).strip()


def sap_date(value: Any = None) -> str | None:
    if _is_nothing(value):
        return None
    text = _text(value)
    if text in ("00000000", "0000-00-00", "00.00.0000"):
        return None
    odata = _ODATA_DATE.match(text)
    try:
        if odata:
            return datetime.fromtimestamp(int(odata.group(1)) / 1000, tz=UTC).date().isoformat()
        if re.fullmatch(r"\d{8}", text):
            return date(int(text[:4]), int(text[4:6]), int(text[6:])).isoformat()
        if re.fullmatch(r"\d{1,2}\.\d{1,2}\.\d{4}", text):
            day, month, year = (int(p) for p in text.split("."))
            return date(year, month, day).isoformat()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].*)?", text):
            return date.fromisoformat(text[:10]).isoformat()
    except (ValueError, OverflowError) as exc:
        raise HelperError("D3140", f"$sapDate: '{text}' is not a valid date ({exc})") from None
    raise HelperError("D3140", f"$sapDate: cannot read '{text}' as a date; expected YYYYMMDD, DD.MM.YYYY or /Date(ms)/")


def sap_timestamp(value: Any = None) -> str | None:
    if _is_nothing(value):
        return None
    text = _text(value)
    odata = _ODATA_DATE.match(text)
    try:
        if odata:
            stamp = datetime.fromtimestamp(int(odata.group(1)) / 1000, tz=UTC)
        elif re.fullmatch(r"\d{14}", text):
            if text == "0" * 14:
                return None
            stamp = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        else:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
            stamp = stamp.astimezone(UTC) if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise HelperError(
            "D3140", f"$sapTimestamp: cannot read '{text}'; expected YYYYMMDDhhmmss, /Date(ms)/ or ISO 8601"
        ) from None
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def decimal(value: Any = None, separator: Any = None) -> int | float | None:
    if isinstance(value, bool):
        raise HelperError("D3030", "$decimal: expected a number or a numeric string, got a boolean")
    if isinstance(value, int | float):
        return value
    if _is_nothing(value):
        return None
    if separator not in (None, ",", "."):
        raise HelperError("D3030", f"$decimal: the decimal separator must be ',' or '.', not {separator!r}")
    text = _text(value).replace(" ", "").replace("\u00a0", "").replace("'", "")
    negative = text.endswith("-") or text.startswith("-")
    body = text.strip("+-")
    decimal_sep = separator or _guess_separator(body)
    thousands = "." if decimal_sep == "," else ","
    fraction = body.partition(decimal_sep)[2]
    if thousands in fraction or decimal_sep in fraction:
        raise HelperError(
            "D3030",
            f"$decimal: cannot read '{value}' with '{decimal_sep}' as the decimal separator"
            + (f"; is it written with '{thousands}'?" if separator else ""),
        )
    normalised = body.replace(thousands, "").replace(decimal_sep, ".")
    if not _NUMBER_TEXT.match(normalised):
        raise HelperError("D3030", f"$decimal: cannot read '{value}' as a number")
    number = float(normalised)
    if negative:
        number = -number
    return int(number) if number.is_integer() and "." not in normalised else number


def _guess_separator(body: str) -> str:
    if "," in body and "." in body:
        return "," if body.rfind(",") > body.rfind(".") else "."
    if body.count(",") == 1:
        return ","
    if body.count(",") > 1:
        return "."  # 1,234,567: commas group thousands
    return "." if body.count(".") <= 1 else ","


def uom(quantity: Any = None, unit: Any = None, table: Any = None) -> int | float | None:
    if quantity is None or unit is None:
        return None  # undefined in, undefined out, as JSONata's own functions do
    amount = decimal(quantity)
    if amount is None:
        return None
    if not isinstance(table, Mapping):
        raise HelperError("D3031", "$uom: the third argument must be a code table, e.g. $lookups.units")
    if unit not in table:
        known = ", ".join(sorted(str(k) for k in table))
        raise HelperError("D3032", f"$uom: unit '{unit}' is not in the table (known: {known})")
    factor = decimal(table[unit])
    if factor is None:
        raise HelperError("D3032", f"$uom: the table has no factor for unit '{unit}'")
    result = amount * factor
    return int(result) if float(result).is_integer() else result


def material_number(value: Any = None) -> str | None:
    if _is_nothing(value):
        return None
    text = _text(value)
    if text.isdigit():
        return text.lstrip("0") or "0"
    return text


def pad_material(value: Any = None, length: Any = 18) -> str | None:
    if _is_nothing(value):
        return None
    text = _text(value)
    width = int(length) if isinstance(length, int | float) and not isinstance(length, bool) else 18
    if text.isdigit():
        if len(text.lstrip("0")) > width:
            raise HelperError("D3033", f"$padMaterial: '{text}' is longer than {width} digits")
        return text.zfill(width)
    return text


HELPERS: dict[str, Callable[..., Any]] = {
    "sapDate": sap_date,
    "sapTimestamp": sap_timestamp,
    "decimal": decimal,
    "uom": uom,
    "materialNumber": material_number,
    "padMaterial": pad_material,
}
