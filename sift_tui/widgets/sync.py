"""Peer: where this mirror stands, the running sync's progress and where its bytes come from."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ProgressBar, Static

from sift_tui.format import human_duration, human_percent, human_rate, human_size, plural
from sift_tui.model import PeerState
from sift_tui.widgets.tables import KeyedTable, right

__all__ = ["SyncView", "last_sync_text"]

MAX_CURRENT = 5  # paths of files being written shown at once


def last_sync_text(last: dict[str, Any] | None) -> str:
    if not last:
        return "no sync finished since the daemon started"
    return (
        f"version {last.get('version', '-')} in {human_duration(last.get('seconds'))}: "
        f"{last.get('files_written', 0)} written, {last.get('files_deleted', 0)} deleted; "
        f"{human_size(last.get('bytes_from_peers'))} from peers, "
        f"{human_size(last.get('bytes_from_master'))} from the master, "
        f"{human_size(last.get('bytes_copied_locally'))} copied locally"
        + (
            f", {human_size(last['bytes_reused'])} kept from the previous versions"
            if last.get("bytes_reused")
            else ""
        )
    )


class SyncView(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="sync-summary", classes="summary")
        yield Label("Progress", classes="section")
        yield Static(id="sync-progress-text")
        yield ProgressBar(total=1, show_eta=False, id="sync-progress")
        yield Static(id="sync-current")
        yield Label("Sources", classes="section")
        yield KeyedTable(
            [("Source", "source"), ("Bytes this sync", "bytes"), ("In", "in"), ("Out", "out")],
            id="sources-table",
        )
        yield Label("Last sync", classes="section")
        yield Static(id="sync-last")
        yield Static(id="sync-banned", classes="warning")

    def show(self, state: PeerState, parts: set[str], now: float) -> None:
        s = state.status
        if "summary" in parts:
            up = s.get("master_connected")
            link = "[green]connected[/green]" if up else "[red]disconnected[/red]"
            synced, latest = s.get("synced_version"), s.get("master_version")
            if s.get("syncing"):
                where = f"[yellow]syncing[/yellow] to version {latest}"
            elif synced is not None and synced == latest:
                where = "[green]in sync[/green]"
            else:
                where = "behind"
            self.query_one("#sync-summary", Static).update(
                f"master [b]{s.get('master_addr', '-')}[/b] {link}  ·  master version "
                f"[b]{latest if latest is not None else '-'}[/b]  ·  synced "
                f"[b]{synced if synced is not None else '-'}[/b]  ·  {where}\n"
                f"mirror [b]{s.get('local_dir', '-')}[/b]  ·  "
                f"{plural(s.get('files', 0), 'file')}  ·  {human_size(s.get('bytes'))}  ·  "
                f"{plural(s.get('chunks_held', 0), 'chunk')} held"
            )
            self.query_one("#sync-last", Static).update(last_sync_text(s.get("last_sync")))
            banned = s.get("banned_sources") or []
            self.query_one("#sync-banned", Static).update(
                "\n".join(f"not fetching from {b.get('addr')}: {b.get('reason')}" for b in banned)
            )
        if "progress" in parts:
            self._show_progress(state.progress)
        if parts & {"sources", "progress", "rates"}:
            rows = {
                name: (
                    name,
                    right(human_size(r["bytes"])),
                    right(human_rate(r["in"])),
                    right(human_rate(r["out"])),
                )
                for name, r in state.sources().items()
            }
            self.query_one("#sources-table", KeyedTable).sync_rows(rows)

    def _show_progress(self, progress: dict[str, Any] | None) -> None:
        bar = self.query_one("#sync-progress", ProgressBar)
        text = self.query_one("#sync-progress-text", Static)
        current = self.query_one("#sync-current", Static)
        if not progress:
            text.update("idle: nothing to fetch")
            bar.update(total=1, progress=1)
            current.update("")
            return
        done, total = progress.get("bytes_done") or 0, progress.get("bytes_total")
        files = progress.get("files_to_write", progress.get("files_total"))
        deletes = progress.get("files_to_delete")
        plan = f"{plural(files, 'file')} to write"
        if deletes:
            plan += f", {deletes} to delete"
        if total is None:
            text.update(f"version [b]{progress.get('version', '-')}[/b]: planning ...")
            bar.update(total=1, progress=0)
        else:
            text.update(
                f"version [b]{progress.get('version', '-')}[/b]: {human_size(done)} of "
                f"{human_size(total)} ({human_percent(done, total)}), {plan}"
            )
            bar.update(total=max(total, 1), progress=done)
        paths = list(progress.get("current") or [])
        more = len(paths) - MAX_CURRENT
        lines = [f"writing {p}" for p in paths[:MAX_CURRENT]]
        if more > 0:
            lines.append(f"... and {more} more")
        current.update("\n".join(lines))
