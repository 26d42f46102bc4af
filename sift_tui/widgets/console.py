"""The two consoles: a master's (manifest, peers, transfers, config) and a peer's (sync,
transfers, config). Each is a TabbedContent; the app routes state changes to the visible panes."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import TabbedContent, TabPane

from sift_tui.model import MasterState, PeerState
from sift_tui.widgets.config import Caller, ConfigView
from sift_tui.widgets.manifest import ManifestView
from sift_tui.widgets.peers import PeersView
from sift_tui.widgets.sync import SyncView
from sift_tui.widgets.transfers import TransfersView

__all__ = ["MASTER_TABS", "PEER_TABS", "MasterConsole", "PeerConsole"]

MASTER_TABS = ("manifest", "peers", "transfers", "config")
PEER_TABS = ("sync", "transfers", "config")


class MasterConsole(Vertical):
    role = "master"
    tabs = MASTER_TABS

    def __init__(self, caller: Caller, **kwargs) -> None:
        super().__init__(**kwargs)
        self.caller = caller

    def compose(self) -> ComposeResult:
        with TabbedContent(id="master-tabs"):
            with TabPane("Manifest", id="master-manifest"):
                yield ManifestView()
            with TabPane("Peers", id="master-peers"):
                yield PeersView()
            with TabPane("Transfers", id="master-transfers"):
                yield TransfersView("master")
            with TabPane("Config", id="master-config"):
                yield ConfigView(self.caller)

    def show(self, state: MasterState, parts: set[str], now: float) -> None:
        self.query_one(ManifestView).show(state, parts, now)
        self.query_one(PeersView).show(state, parts)
        self.query_one(TransfersView).show(state, parts)


class PeerConsole(Vertical):
    role = "peer"
    tabs = PEER_TABS

    def __init__(self, caller: Caller, **kwargs) -> None:
        super().__init__(**kwargs)
        self.caller = caller

    def compose(self) -> ComposeResult:
        with TabbedContent(id="peer-tabs"):
            with TabPane("Sync", id="peer-sync"):
                yield SyncView()
            with TabPane("Transfers", id="peer-transfers"):
                yield TransfersView("peer")
            with TabPane("Config", id="peer-config"):
                yield ConfigView(self.caller)

    def show(self, state: PeerState, parts: set[str], now: float) -> None:
        self.query_one(SyncView).show(state, parts)
        self.query_one(TransfersView).show(state, parts)
