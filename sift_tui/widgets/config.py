"""The daemon's config file, edited through ``config.get``/``config.set``. The daemon validates
and writes (keeping comments); this view shows its one-line refusal inline, next to the value,
and marks keys whose new value waits for a restart."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, Static

from sift.control.client import ControlClosed, ControlError
from sift_tui.widgets.tables import KeyedTable

__all__ = ["ConfigView", "value_text"]

Caller = Callable[[str, dict[str, Any] | None], Awaitable[Any]]


MAX_CELL = 34  # characters of a value shown in the table; the edit field shows it whole


def _cell(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def value_text(value: Any) -> str:
    """A config value as an operator would type it: strings bare, the rest as TOML/JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


class ConfigView(Vertical):
    BINDINGS = [
        Binding("e", "edit", "Edit key", id="config-edit"),
        Binding("escape", "cancel", "Cancel edit", id="config-cancel"),
    ]

    def __init__(self, caller: Caller, **kwargs) -> None:
        super().__init__(**kwargs)
        self.caller = caller
        self.keys: dict[str, dict[str, Any]] = {}
        self.needs_restart: set[str] = set()
        self.editing: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("loading the daemon's config ...", classes="summary config-path")
        yield KeyedTable(
            [
                ("Key", "name"),
                ("Value in file", "value"),
                ("Default", "default"),
                ("Applies", "live"),
                ("", "state"),
            ],
            classes="config-table",
        )
        yield Static("", classes="config-description")
        with Horizontal(classes="config-edit-row"):
            yield Label("select a key and press Enter to edit it", classes="config-prompt")
            yield Input(placeholder="new value (empty: back to the default)", disabled=True)
        yield Static("", classes="config-feedback")

    # -- loading ---------------------------------------------------------------------------------
    @work(exclusive=True, group="config-load")
    async def reload(self) -> None:
        try:
            answer = await self.caller("config.get", None)
        except (ControlError, ControlClosed) as exc:
            self.query_one(".config-path", Static).update(
                f"[red]cannot read the config: {_reason(exc)}[/red]"
            )
            return
        self.show_config(answer)

    def show_config(self, answer: dict[str, Any]) -> None:
        self.keys = {str(k["name"]): k for k in answer.get("keys") or []}
        self.query_one(".config-path", Static).update(
            f"{answer.get('role', '')} config [b]{answer.get('path', '-')}[/b]  ·  "
            "changes are checked by the daemon and written with comments kept"
        )
        self.query_one(KeyedTable).sync_rows(
            {name: self._cells(key) for name, key in self.keys.items()}
        )
        self._describe(self._highlighted())

    def _cells(self, key: dict[str, Any]) -> tuple[str, ...]:
        name = str(key["name"])
        state = "[yellow]needs restart[/yellow]" if name in self.needs_restart else ""
        return (
            name,
            _cell(value_text(key.get("value"))) if key.get("set") else "",
            _cell(value_text(key.get("default"))),
            "live" if key.get("live") else "at restart",
            state,
        )

    def daemon_restarted(self) -> None:
        """A new daemon run reads the file afresh: nothing waits for a restart any more."""
        self.needs_restart.clear()

    # -- selecting and editing -------------------------------------------------------------------
    def _highlighted(self) -> str | None:
        table = self.query_one(KeyedTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def _describe(self, name: str | None) -> None:
        key = self.keys.get(name or "")
        text = ""
        if key is not None:
            text = f"[b]{name}[/b] ({key.get('type', '?')}): {key.get('description', '')}"
        self.query_one(".config-description", Static).update(text)

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._describe(event.row_key.value)

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.start_edit(event.row_key.value)

    def action_edit(self) -> None:
        self.start_edit(self._highlighted())

    def start_edit(self, name: str | None) -> None:
        key = self.keys.get(name or "")
        if key is None:
            return
        self.editing = str(name)
        self.query_one(".config-prompt", Label).update(f"[b]{name}[/b] =")
        field = self.query_one(Input)
        field.disabled = False
        field.value = value_text(key.get("value")) if key.get("set") else ""
        field.focus()
        self._feedback("")

    def action_cancel(self) -> None:
        self._end_edit()
        self._feedback("")

    def _end_edit(self) -> None:
        self.editing = None
        field = self.query_one(Input)
        field.value = ""
        field.disabled = True
        self.query_one(".config-prompt", Label).update("select a key and press Enter to edit it")
        self.query_one(KeyedTable).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.editing is not None:
            self.submit(self.editing, event.value)

    @work(exclusive=True, group="config-set")
    async def submit(self, name: str, text: str) -> None:
        value: Any = text if text.strip() else None
        try:
            answer = await self.caller("config.set", {"key": name, "value": value})
        except (ControlError, ControlClosed) as exc:
            self._feedback(f"[red]✗ refused: {_reason(exc)}[/red]  (the file is unchanged)")
            return
        applied = answer.get("applied")
        shown = value_text(answer.get("value")) or "(default)"
        if applied == "restart":
            self.needs_restart.add(name)
            self._feedback(
                f"[yellow]✓ {name} = {shown} saved; it takes effect when the daemon restarts"
                "[/yellow]"
            )
        else:
            self.needs_restart.discard(name)
            self._feedback(f"[green]✓ {name} = {shown} saved and applied[/green]")
        self._end_edit()
        self.reload()

    def _feedback(self, text: str) -> None:
        widget = self.query_one(".config-feedback", Static)
        widget.update(text)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ControlError):
        return exc.message or exc.code
    return str(exc) or "the daemon went away"
