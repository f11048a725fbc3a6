"""Readable renderings of the same documents ``--json`` prints, for people at a terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from mxgateway_cli._output import Output

__all__ = ["flatten", "plain_columns", "print_mapping", "print_rows", "print_table"]


def flatten(document: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested mappings into ``(dotted.key, text)`` rows, lists joined by ``, ``."""
    rows: list[tuple[str, str]] = []
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for index, item in enumerate(value):
                rows.extend(flatten(item, f"{name}[{index}]."))
        elif isinstance(value, list):
            rows.append((name, ", ".join(str(v) for v in value)))
        else:
            rows.append((name, str(value)))
    return rows


def print_mapping(console: Console, document: Mapping[str, Any], title: str | None = None) -> None:
    """Print a document as a two-column field/value table."""
    from rich.table import Table

    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in flatten(document):
        table.add_row(key, value)
    console.print(table)


def print_rows(
    console: Console,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    title: str | None = None,
) -> None:
    """Print rows as a table; ``columns`` are ``(key, header)`` pairs, missing keys blank.
    Piped (not a terminal), plain columns instead (see :func:`plain_columns`)."""
    if not console.is_terminal:
        console.file.write((f"{title}\n" if title else "") + plain_columns(rows, columns))
        console.file.flush()
        return
    from rich.table import Table

    table = Table(title=title)
    for _, header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for key, _ in columns))
    console.print(table)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in flatten(value))
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def plain_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as plain text columns (header line, two spaces between columns, no borders and
    no wrapping): what ``cut``, ``awk`` and ``grep`` expect when the output is piped."""
    table = [[header for _, header in columns]]
    table += [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    return "\n".join(lines) + "\n"


def print_table(
    out: Output, rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]
) -> None:
    """A table for people: on a terminal, a rich table that fits its width (long cells
    fold); piped, :func:`plain_columns`."""
    if not out.stdout_is_tty:
        out.write(plain_columns(rows, columns))
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for _, header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for key, _ in columns))
    out.console.print(table)
