"""Markdown tables of the reports."""

from __future__ import annotations

import pytest

from app import markdown


@pytest.mark.parametrize(
    ("header", "rows", "expected"),
    [
        (["a", "b"], [["1", "2"], ["3", "4"]], ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]),
        (["only"], [], ["| only |", "|---|"]),
        (["x", "y", "z"], iter([("p", "q", "r")]), ["| x | y | z |", "|---|---|---|", "| p | q | r |"]),
    ],
)
def test_table_has_a_header_a_rule_and_a_line_per_row(
    header: list[str], rows: list[list[str]], expected: list[str]
) -> None:
    assert markdown.table(header, rows) == expected
