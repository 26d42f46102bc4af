"""Shown while no daemon answers: which socket was tried, what went wrong, when the next try is."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Center, Middle, Vertical
from textual.widgets import Static

__all__ = ["OfflineView"]


class OfflineView(Middle):
    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="offline-box"):
            yield Static("[b]Not connected[/b]", id="offline-title")
            yield Static("", id="offline-detail")
            yield Static("", id="offline-hint")

    def show_connecting(self, socket: Path, attempt: int) -> None:
        self.query_one("#offline-title", Static).update("[b]Connecting ...[/b]")
        self.query_one("#offline-detail", Static).update(f"socket  {socket}")
        self.query_one("#offline-hint", Static).update(f"attempt {attempt}")

    def show_down(self, socket: Path, error: str, retry_in: int, attempt: int) -> None:
        self.query_one("#offline-title", Static).update("[b]No sift daemon is answering[/b]")
        self.query_one("#offline-detail", Static).update(
            f"socket  {socket}\nerror   [red]{error}[/red]\n\n"
            f"retrying in {retry_in} s  (attempt {attempt})"
        )
        self.query_one("#offline-hint", Static).update(
            "Start one with [b]sift master start --config FILE[/b] or "
            "[b]sift peer start --config FILE[/b];\nthe console attaches by itself. "
            "Press [b]n[/b] to retry now, [b]q[/b] to quit."
        )
