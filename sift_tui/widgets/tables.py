"""A DataTable whose rows are keyed and updated in place (dolphie's Processlist pattern): changed
cells get ``update_cell``, new keys ``add_row``, vanished keys ``remove_row``. The table is never
cleared and refilled, so the cursor and scroll position survive every update."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual.widgets import DataTable

__all__ = ["KeyedTable", "right"]


def right(text: str) -> Text:
    """A right-aligned cell, for numbers."""
    return Text(text, justify="right")


class KeyedTable(DataTable):
    DEFAULT_CSS = """
    KeyedTable { height: auto; max-height: 100%; }
    """

    def __init__(self, columns: Sequence[tuple[str, str]], **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._column_spec = list(columns)

    def on_mount(self) -> None:
        for label, key in self._column_spec:
            self.add_column(label, key=key)

    def sync_rows(
        self,
        rows: Mapping[str, Sequence[object]],
        sort_key: str | None = None,
        reverse: bool = False,
    ) -> bool:
        """Make the table show exactly ``rows`` (key -> cells in column order). Returns whether
        any row was added or removed."""
        column_keys = [key for _label, key in self._column_spec]
        focus = self._cursor_key()
        reshaped = False
        for row_key in [k for k in self.rows if k.value not in rows]:
            self.remove_row(row_key)
            reshaped = True
        for key, cells in rows.items():
            if key in self.rows:
                old = self.get_row(key)
                for column, before, after in zip(column_keys, old, cells, strict=True):
                    if before != after:
                        self.update_cell(key, column, after, update_width=True)
            else:
                self.add_row(*cells, key=key)
                reshaped = True
        if reshaped and sort_key is not None:
            self.sort(sort_key, key=_sort_value, reverse=reverse)
        if reshaped and focus is not None and focus in self.rows:
            # Rows above it came or went: keep the cursor on the same row, not the same index.
            self.move_cursor(row=self.get_row_index(focus), animate=False, scroll=False)
        return reshaped

    def _cursor_key(self) -> str | None:
        if not self.row_count or not self.is_valid_row_index(self.cursor_row):
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value


def _sort_value(cell: object) -> object:
    if isinstance(cell, Text):
        return cell.plain
    return cell
