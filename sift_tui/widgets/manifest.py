"""Master: the current manifest version, the recent versions with a change summary, the files."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Static

from sift_tui.format import human_age, human_size, plural, utc_time
from sift_tui.model import MasterState
from sift_tui.widgets.tables import KeyedTable, right

__all__ = ["ManifestView", "change_summary"]


def change_summary(version: dict[str, Any]) -> str:
    """``+3 ~1 -0`` (added, changed, removed files)."""
    return (
        f"+{version.get('added_count') or 0} "
        f"~{version.get('changed_count') or 0} "
        f"-{version.get('removed_count') or 0}"
    )


class ManifestView(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="manifest-summary", classes="summary")
        yield Label("Recent versions", classes="section")
        yield KeyedTable(
            [
                ("Version", "version"),
                ("Published (UTC)", "published"),
                ("Age", "age"),
                ("Files", "files"),
                ("Size", "bytes"),
                ("Changes (+~-)", "changes"),
                ("Bytes changed", "bytes_changed"),
            ],
            id="versions",
        )
        yield Label("Files", classes="section")
        yield KeyedTable([("Path", "path"), ("Size", "size"), ("Chunks", "chunks")], id="files")

    def show(self, state: MasterState, parts: set[str], now: float) -> None:
        s = state.status
        if "summary" in parts:
            chunks = s.get("chunks", 0)
            distinct = s.get("distinct_chunks")
            chunk_text = plural(chunks, "chunk") + (
                f" ({distinct} distinct)" if distinct is not None else ""
            )
            self.query_one("#manifest-summary", Static).update(
                f"[b]version {s.get('manifest_version', '-')}[/b]  ·  "
                f"{plural(s.get('files', 0), 'file')}  ·  "
                f"{human_size(s.get('bytes'))}  ·  {chunk_text}\n"
                f"watching [b]{s.get('watched_dir', '-')}[/b]  ·  master sent "
                f"{human_size(s.get('bytes_sent'))} in {s.get('chunks_sent', 0)} chunks"
            )
        if "versions" in parts or "clock" in parts:
            rows = {
                str(v.get("version")): (
                    v.get("version"),
                    utc_time(v.get("published_at")),
                    right(human_age(v.get("published_at"), now)),
                    right(str(v.get("files", "-"))),
                    right(human_size(v.get("bytes"))),
                    right(change_summary(v)),
                    right(human_size(v.get("bytes_changed"))),
                )
                for v in state.versions
            }
            self.query_one("#versions", KeyedTable).sync_rows(rows, "version", reverse=True)
        if "files" in parts:
            rows = {
                str(f.get("path")): (
                    str(f.get("path")),
                    right(human_size(f.get("size"))),
                    right(str(f.get("chunks", "-"))),
                )
                for f in state.files
            }
            self.query_one("#files", KeyedTable).sync_rows(rows, "path")
