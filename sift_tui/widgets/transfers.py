"""Rates over time: one sparkline per series (the last two minutes of the daemon's 1/s rate
events) and the current rate per peer or source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label

from sift_tui.format import human_rate
from sift_tui.model import MasterState, PeerState, RateHistory
from sift_tui.widgets.sparks import RateSpark
from sift_tui.widgets.tables import KeyedTable, right

__all__ = ["TransfersView"]

MASTER_SERIES = [
    ("master_out", "Master egress (chunks the master sends)"),
    ("p2p", "Peer-to-peer (chunks peers gain from each other)"),
]
PEER_SERIES = [("in", "Received"), ("out", "Served to other peers")]


class TransfersView(Vertical):
    def __init__(self, role: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.role = role
        self.series = MASTER_SERIES if role == "master" else PEER_SERIES

    def compose(self) -> ComposeResult:
        for key, title in self.series:
            yield RateSpark(title, id=f"rate-{key}".replace("_", "-"), classes="tall")
        if self.role == "master":
            yield Label("Per peer", classes="section")
            columns = [
                ("Peer", "peer"),
                ("Address", "addr"),
                ("In", "in"),
                ("Out", "out"),
                ("From master", "from_master"),
            ]
        else:
            yield Label("Per source", classes="section")
            columns = [("Source", "source"), ("In", "in"), ("Out", "out")]
        yield KeyedTable(columns, id=f"{self.role}-rates-table")

    def _show_series(self, history: RateHistory) -> None:
        for key, _title in self.series:
            spark = self.query_one(f"#rate-{key}".replace("_", "-"), RateSpark)
            spark.show(history.values(key))

    def _show_rows(self, rows: Mapping[str, Sequence[object]]) -> None:
        self.query_one(f"#{self.role}-rates-table", KeyedTable).sync_rows(rows)

    def show(self, state: MasterState | PeerState, parts: set[str], now: float) -> None:
        if not parts & {"rates", "peers", "sources"}:
            return
        self._show_series(state.history)
        if isinstance(state, MasterState):
            self._show_rows(
                {
                    node: (
                        node,
                        str(peer.get("addr") or "-"),
                        right(human_rate(peer.get("rate_in"))),
                        right(human_rate(peer.get("rate_out"))),
                        right(human_rate(peer.get("rate_from_master"))),
                    )
                    for node, peer in state.peers.items()
                }
            )
        else:
            self._show_rows(
                {
                    name: (name, right(human_rate(r["in"])), right(human_rate(r["out"])))
                    for name, r in state.source_rates.items()
                }
            )
