"""The two consoles: a master's (manifest, peers, transfers, config) and a peer's (sync,
transfers, config). Each is a TabbedContent. Only the visible pane is redrawn; the others
remember what changed and catch up when their tab is shown."""

from __future__ import annotations

from collections.abc import Callable

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
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


class _Console(Vertical):
    role = ""
    tabs: tuple[str, ...] = ()

    def __init__(self, caller: Caller, clock: Callable[[], float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.caller = caller
        self.clock = clock
        self._state: MasterState | PeerState | None = None
        self._now = 0.0
        self._pending: dict[str, set[str]] = {tab: set() for tab in self.tabs}

    # Tab name -> the view drawn from the state (the config view draws itself).
    VIEWS: dict[str, type[Widget]] = {}

    def views(self) -> dict[str, Widget]:
        return {tab: self.query_one(cls) for tab, cls in self.VIEWS.items()}

    def show(self, state: MasterState | PeerState, parts: set[str], now: float) -> None:
        self._state, self._now = state, now
        for pending in self._pending.values():
            pending.update(parts)
        self._flush()

    def _flush(self) -> None:
        active = self.query_one(TabbedContent).active.removeprefix(f"{self.role}-")
        view = self.views().get(active)
        parts = self._pending.get(active)
        if view is None or not parts or self._state is None:
            return
        self._pending[active] = set()
        view.show(self._state, parts, self._now)  # type: ignore[attr-defined]

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        self._now = self.clock()
        self._flush()


class MasterConsole(_Console):
    role = "master"
    tabs = MASTER_TABS
    VIEWS = {"manifest": ManifestView, "peers": PeersView, "transfers": TransfersView}

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


class PeerConsole(_Console):
    role = "peer"
    tabs = PEER_TABS
    VIEWS = {"sync": SyncView, "transfers": TransfersView}

    def compose(self) -> ComposeResult:
        with TabbedContent(id="peer-tabs"):
            with TabPane("Sync", id="peer-sync"):
                yield SyncView()
            with TabPane("Transfers", id="peer-transfers"):
                yield TransfersView("peer")
            with TabPane("Config", id="peer-config"):
                yield ConfigView(self.caller)
