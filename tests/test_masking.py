"""Secrets are masked in every form they take on the way out, not only as typed.

A password travels URL-encoded in a query string or a form body, and JSON-escaped inside a request
body; that body, logged or dead-lettered, is JSON inside JSON, escaped twice. The daemon log and
`dlq show` once printed ``p%40ss%2Fw%22ord...`` and ``p@ss/w\\"ord\\\\\\u00fc...`` in clear, because
the masker knew only the raw value (and connectors added the base64 of a user:password pair).
"""

from __future__ import annotations

import io
import json
from urllib.parse import quote, quote_plus, urlencode

import pytest

from engine.runtime.logs import JsonLog
from engine.secrets import Masker

SECRET = 'p@ss/w"ord\\ü+1&x=y'  # a quote, a backslash, a slash, non-ASCII, and what URLs escape


def json_escaped(value: str, *, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)[1:-1]


FORMS = {
    "raw": SECRET,
    "quote": quote(SECRET, safe=""),
    "quote, '/' kept": quote(SECRET),
    "quote_plus": quote_plus(SECRET),
    "quote_plus, '/' kept": quote_plus(SECRET, safe="/"),
    "json": json_escaped(SECRET, ascii_only=False),
    "json, ASCII": json_escaped(SECRET, ascii_only=True),
    "json, '/' escaped (PHP)": json_escaped(SECRET, ascii_only=True).replace("/", "\\/"),
    "json in json": json_escaped(json_escaped(SECRET, ascii_only=False), ascii_only=False),
    "json in json, ASCII": json_escaped(json_escaped(SECRET, ascii_only=True), ascii_only=True),
    "quote in json": json_escaped(quote(SECRET), ascii_only=True).replace("/", "\\/"),
    "repr (in Python's error messages)": repr(SECRET)[1:-1],
}
# Pieces of the secret that no masked text may still hold, in any of the forms above.
FRAGMENTS = ("p@ss", "p%40ss", "ss/w", "ss%2Fw", "ss\\/w", "x=y", "x%3Dy", "1&x", "1%26x", "%22ord", '\\"ord')


def leaks(text: str) -> list[str]:
    return [f for f in FRAGMENTS if f in text]


def masker_for(*values: str) -> Masker:
    masker = Masker()
    for value in values:
        masker.add(value)
    return masker


@pytest.mark.parametrize("form", list(FORMS.values()), ids=list(FORMS))
def test_each_form_of_a_secret_is_masked(form: str) -> None:
    assert masker_for(SECRET)(f"before {form} after") == "before *** after"


def test_a_dead_letter_body_is_masked_and_stays_json() -> None:
    body = json.dumps(
        {
            "request": {"auth": {"login": "api", "password": SECRET}},
            "form": urlencode({"password": SECRET, "grant_type": "password"}),
            "url": "https://erp.example/login?p=" + quote(SECRET, safe=""),
            "response": json.dumps({"error": f"bad password {SECRET}"}),
        }
    )
    masked = masker_for(SECRET)(body)
    assert leaks(masked) == [], masked
    shown = json.loads(masked)
    assert shown["request"]["auth"] == {"login": "api", "password": "***"}
    assert shown["form"] == "password=***&grant_type=password"
    assert json.loads(shown["response"]) == {"error": "bad password ***"}


@pytest.mark.parametrize("ascii_only", [False, True], ids=["utf-8 log", "ascii log"])
def test_the_json_log_masks_every_form(ascii_only: bool) -> None:
    stream = io.StringIO()
    log = JsonLog("acme", masker_for(SECRET), stream)
    log.error(
        "write_failed",
        error=f"login refused for {SECRET}",
        url="https://erp.example/login?" + urlencode({"p": SECRET}),
        body=json.dumps({"password": SECRET}, ensure_ascii=ascii_only),
        attempt={"password": SECRET},
    )
    line = stream.getvalue()
    assert leaks(line) == [], line
    record = json.loads(line)
    assert record["error"] == "login refused for ***"
    assert record["url"] == "https://erp.example/login?p=***"
    assert json.loads(record["body"]) == {"password": "***"}
    assert record["attempt"] == {"password": "***"}


def test_short_values_are_not_masked_and_overlapping_secrets_are() -> None:
    masker = masker_for("abc", "s3cret", "s3cret-and-more")
    assert masker("abc s3cret s3cret-and-more") == "abc *** ***"


def test_a_secret_added_later_is_masked_too() -> None:
    masker = masker_for("first-secret")
    assert masker("first-secret") == "***"
    masker.add(SECRET)
    assert masker(json.dumps({"p": SECRET})) == '{"p": "***"}'
