"""Master: every connected peer in a keyed table updated in place, with master egress and
peer-to-peer traffic as sparklines."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Static

from sift_tui.format import human_percent, human_rate, plural
from sift_tui.model import MasterState
from sift_tui.widgets.sparks import RateSpark
from sift_tui.widgets.tables import KeyedTable, right

__all__ = ["PeersView", "peer_cells"]

COLUMNS = [
    ("Peer", "node_id"),
    ("Address", "addr"),
    ("Version", "version"),
    ("Chunks held / total", "chunks"),
    ("Complete", "complete"),
    ("In", "rate_in"),
    ("Out", "rate_out"),
    ("From master", "rate_from_master"),
]


def peer_cells(peer: dict[str, Any], manifest_version: Any) -> tuple[object, ...]:
    held = peer.get("chunks_held")
    total = peer.get("chunks_total")
    if peer.get("complete") and peer.get("version") == manifest_version:
        complete = "100% ✓"
    else:
        complete = human_percent(held, total)
    chunks = f"{held if held is not None else '-'} / {total if total is not None else '-'}"
    return (
        str(peer.get("node_id", "-")),
        str(peer.get("addr") or "-"),
        right(str(peer.get("version") if peer.get("version") is not None else "-")),
        right(chunks),
        right(complete),
        right(human_rate(peer.get("rate_in"))),
        right(human_rate(peer.get("rate_out"))),
        right(human_rate(peer.get("rate_from_master"))),
    )


class PeersView(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="peers-summary", classes="summary")
        yield KeyedTable(COLUMNS, id="peers-table")
        with Horizontal(classes="sparks"):
            yield RateSpark("Master egress", id="spark-master-out")
            yield RateSpark("Peer-to-peer", id="spark-p2p")
        yield Label("", id="peers-empty")

    def show(self, state: MasterState, parts: set[str], now: float) -> None:
        s = state.status
        if parts & {"peers", "summary"}:
            version = s.get("manifest_version")
            rows = {node: peer_cells(peer, version) for node, peer in state.peers.items()}
            self.query_one("#peers-table", KeyedTable).sync_rows(rows)
            in_sync = sum(
                1 for p in state.peers.values() if p.get("complete") and p.get("version") == version
            )
            self.query_one("#peers-summary", Static).update(
                f"[b]{plural(len(state.peers), 'peer')}[/b] connected  ·  "
                f"[b]{in_sync}[/b] in sync with version {version if version is not None else '-'}"
            )
            self.query_one("#peers-empty", Label).update(
                "" if state.peers else "No peer is connected yet."
            )
        if "rates" in parts:
            self.query_one("#spark-master-out", RateSpark).show(state.history.values("master_out"))
            self.query_one("#spark-p2p", RateSpark).show(state.history.values("p2p"))
