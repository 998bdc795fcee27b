"""Markdown tables for the reports the project writes (evaluation, load-test comparison, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: the header, its rule, then one line per row."""
    return [row_line(header), "|" + "---|" * len(header), *(row_line(row) for row in rows)]


def row_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
