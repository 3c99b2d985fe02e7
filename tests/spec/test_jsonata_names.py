"""Names a transform uses come from JSONata's syntax tree: strings, comments and regexes are not code."""

from __future__ import annotations

from engine.spec.jsonata_names import Name, names_used


def test_names_in_code_are_found_with_where_they_start() -> None:
    text = "$lookup($lookups.plants, p) & $constants.website_id & $uppercase(x)"
    assert names_used(text) == [
        Name("function", "lookup", 0),
        Name("lookups", "plants", 17),
        Name("constants", "website_id", 41),
        Name("function", "uppercase", 54),
    ]


def test_names_inside_strings_comments_and_regexes_are_not_code() -> None:
    text = '/* $nope() and $lookups.gone */ { "a": "$lookups.gone & $nope()", "b": $match(x, /\\$nope\\(/) }'
    assert [(n.kind, n.name) for n in names_used(text)] == [("function", "match")]


def test_a_function_the_expression_defines_is_not_checked() -> None:
    text = "($twice := function($v) { $v * 2 }; $twice(3))"
    assert names_used(text) == []


def test_a_table_given_by_its_name_is_found() -> None:
    (call, wrong) = names_used('$lookup("uom", unit)')
    assert call == Name("function", "lookup", 0)
    assert wrong == Name("table-as-string", "uom", 8)


def test_a_table_name_in_backquotes_is_one_name() -> None:
    assert names_used("$lookups.`my table`.a") == [Name("lookups", "my table", 9)]


def test_an_expression_that_does_not_parse_names_nothing() -> None:
    assert names_used("{ unclosed") == []
