"""Command output: consoles, tables that never cut an amount or an id, and counts.

A table on a terminal wide enough for it; otherwise (piped, cron mail, CI logs, a
narrow terminal) plain aligned lines, as wide as they need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text


def stdout_console() -> Console:
    return Console(soft_wrap=True)


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True)


class Column(NamedTuple):
    header: str
    numeric: bool = False
    wrap: bool = False
    """Free text that may wrap on a terminal; ids, amounts and counts never do."""


Cell = str | Text


def print_table(
    console: Console,
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    *,
    title_style: str = "italic",
) -> None:
    """A table on a terminal it fits; otherwise plain aligned lines, as wide as needed."""
    cells = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]
    if console.is_terminal:
        table = Table(title=Text(title, style=title_style), title_justify="left")
        for column in columns:
            table.add_column(
                column.header,
                justify="right" if column.numeric else "left",
                no_wrap=not column.wrap,
                overflow="fold",
            )
        for row in cells:
            table.add_row(*row)
        if _table_width(columns, cells) <= console.width:
            console.print(table)
            return
    console.print(Text(title, style=title_style))
    header = [Text(column.header, style="bold") for column in columns]
    lines = [
        header,
        *[[Text(" ".join(c.plain.split()), style=c.style) for c in row] for row in cells],
    ]
    widths = [max(cell_len(line[i].plain) for line in lines) for i in range(len(columns))]
    for line in lines:
        out = Text()
        for i, (cell, column) in enumerate(zip(line, columns, strict=True)):
            pad = " " * (widths[i] - cell_len(cell.plain))
            last = i == len(columns) - 1
            out.append_text(Text(pad) + cell if column.numeric else cell + ("" if last else pad))
            if not last:
                out.append("  ")
        console.print(out, soft_wrap=True, crop=False)


def _table_width(columns: Sequence[Column], rows: Sequence[Sequence[Text]]) -> int:
    """The narrowest the table can be without cutting a cell of a column that does not wrap.

    Rich's own measure takes any cell to be wrappable at its spaces, and when a
    table is too wide it narrows every column; so this is computed here: whole
    cells for columns that do not wrap, the longest word for those that do,
    plus one space of padding on each side of a cell and a border between cells.
    """
    total = 3 * len(columns) + 1
    for i, column in enumerate(columns):
        texts = [column.header, *(row[i].plain for row in rows)]
        if column.wrap:
            total += max((cell_len(word) for text in texts for word in text.split()), default=1)
        else:
            total += max(cell_len(line) for text in texts for line in text.splitlines() or [""])
    return total


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """The count and its noun, plural unless the count is 1: ``3 events``."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"
