"""Keyed DataTable updates: change only the cells that changed, keep the cursor on its row.

Rebuilding a table every refresh resets the cursor and scroll position every two seconds, which
makes a long table unusable; these helpers keep both.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from textual.widgets import DataTable


def cursor_key(table: DataTable) -> str | None:
    if table.row_count == 0:
        return None
    return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)


def sync_rows(
    table: DataTable,
    columns: Sequence[tuple[str, str]],
    rows: dict[str, tuple[Any, ...]],
    cache: dict[str, tuple[Any, ...]],
    order: Callable[[str], Any] | None = None,
) -> None:
    """Make `table` show exactly `rows` (row key -> cells). `cache` holds what is on screen and
    is updated in place. `order(row_key)` sorts the rows; the cursor stays on its row.
    The first cell of each row must be the row key's text."""
    selected = cursor_key(table)
    for key in [k for k in cache if k not in rows]:
        table.remove_row(key)
        del cache[key]
    for key, cells in rows.items():
        old = cache.get(key)
        if old is None:
            table.add_row(*cells, key=key)
        elif old != cells:
            for (col, _), new, before in zip(columns, cells, old):
                if new != before:
                    table.update_cell(key, col, new, update_width=True)
        cache[key] = cells
    if order is not None and table.row_count > 1:
        # DataTable.sort hands the key function a cell, not a row key: every table here shows
        # its row key as the first column, so that cell's text is the row key.
        table.sort(columns[0][0], key=lambda cell: order(str(cell)))
    if selected is not None and selected in cache:
        table.move_cursor(row=table.get_row_index(selected), animate=False)
