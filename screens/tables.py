"""Keyed DataTable updates: change only the cells that changed, keep the cursor on its row.

Rebuilding a table every refresh resets the cursor and scroll position every two seconds, which
makes a long table unusable; these helpers keep both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

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


Columns = tuple[tuple[str, str], ...]


class PaneTable(DataTable):
    """A row-cursor table that owns its columns (COLUMNS: (key, label), ...) and remembers the
    cells on screen, so a refresh changes only what changed and keeps the cursor on its row."""

    COLUMNS: ClassVar[Columns] = ()
    DEFAULT_ID: ClassVar[str | None] = None  # the id it is known by (tests and CSS use it)

    def __init__(self, *, id: str | None = None, classes: str | None = None, zebra_stripes: bool = False) -> None:
        super().__init__(id=id or self.DEFAULT_ID, classes=classes, cursor_type="row", zebra_stripes=zebra_stripes)
        self.shown: dict[str, tuple[Any, ...]] = {}
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)

    def sync(self, rows: dict[str, tuple[Any, ...]], order: Callable[[str], Any] | None = None) -> None:
        """Show exactly `rows` (row key -> cells, the first cell the key's text), sorted by `order`."""
        sync_rows(self, self.COLUMNS, rows, self.shown, order)

    def sync_ranked(self, rows: dict[str, tuple[Any, ...]], rank: dict[str, Any]) -> None:
        """`sync` in the order of each row's rank (a row without one first)."""
        self.sync(rows, order=lambda k: rank.get(k, 0))

    def sync_labelled(self, rows: dict[str, tuple[Any, ...]], rank: dict[str, Any]) -> None:
        """`sync_ranked` for rows that show a label, not their key: sorting goes by the first
        cell's text, so these are put in order here and re-added when the order changes."""
        wanted = sorted(rows, key=lambda k: rank.get(k, 0))
        if list(self.shown) != wanted:
            self.reset()
            for k in wanted:
                self.add_row(*rows[k], key=k)
                self.shown[k] = rows[k]
            return
        self.sync(rows)

    def reset(self) -> None:
        """Forget every row (another member's rows share no keys with these)."""
        self.clear()
        self.shown.clear()


class NodesTable(PaneTable):
    """A pane's member table above its tabs: as tall as its rows, up to 8."""

    DEFAULT_ID = "nodes"
    DEFAULT_CSS = """
    NodesTable { height: auto; max-height: 8; }
    """


class TabTable(PaneTable):
    """A table that fills what its tab leaves."""

    DEFAULT_CSS = """
    TabTable { height: 1fr; }
    """
