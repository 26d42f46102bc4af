"""sift-tui: the live console for a sift master or peer, over its control socket.

``main()`` is the ``sift-tui`` command; ``run_console(socket_path)`` runs the same app in the
foreground (``sift demo`` uses it). All daemon I/O happens in the connection worker and in
short ``@work`` workers; handlers here only fold messages into the model and redraw.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import ContentSwitcher, DataTable, Footer, Header, TabbedContent

from sift.config import ConfigError, control_socket_of
from sift.control.client import ControlClosed, ControlError
from sift_tui.commands import ConfigKeyCommands
from sift_tui.connection import BACKOFF, Connection, Connector, Sleep
from sift_tui.messages import (
    Connected,
    Connecting,
    DaemonEvent,
    Disconnected,
    RatesUpdated,
    StatusRefreshed,
)
from sift_tui.model import MasterState, PeerState, state_for
from sift_tui.widgets.config import ConfigView
from sift_tui.widgets.console import MASTER_TABS, PEER_TABS, MasterConsole, PeerConsole
from sift_tui.widgets.offline import OfflineView

__all__ = ["SiftConsole", "main", "run_console", "socket_from_config"]

AGE_REFRESH = 5.0  # seconds between redraws of "published ... ago"
IDLE_TICK = 1.0  # the daemons' rates cadence; idle seconds add zero samples at this pace

TAB_TITLES = {
    "manifest": "Manifest",
    "peers": "Peers",
    "sync": "Sync",
    "transfers": "Transfers",
    "config": "Config",
}


class SiftConsole(App[None]):
    CSS_PATH = "sift.tcss"
    TITLE = "sift"
    COMMANDS = App.COMMANDS | {ConfigKeyCommands}
    BINDINGS = [
        Binding("m", "show('manifest')", "Manifest", id="show-manifest"),
        Binding("p", "show('peers')", "Peers", id="show-peers"),
        Binding("s", "show('sync')", "Sync", id="show-sync"),
        Binding("t", "show('transfers')", "Transfers", id="show-transfers"),
        Binding("c", "show('config')", "Config", id="show-config"),
        Binding("r", "rescan", "Rescan", id="rescan"),
        Binding("n", "retry_now", "Retry now", id="retry-now"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        connect: Connector | None = None,
        sleep: Sleep | None = None,
        clock: Callable[[], float] = time.time,
        refresh_interval: float | None = 5.0,
        backoff: tuple[int, ...] = BACKOFF,
    ) -> None:
        super().__init__()
        self.socket_path = Path(socket_path)
        self.clock = clock
        options: dict[str, Any] = {"refresh_interval": refresh_interval, "backoff": backoff}
        if connect is not None:
            options["connect"] = connect
        if sleep is not None:
            options["sleep"] = sleep
        self.connection = Connection(self.socket_path, self.post_message, **options)
        self.state: MasterState | PeerState | None = None
        self.online = False
        self.ever_connected = False
        self.daemon_started_at: object = None  # status["started_at"] of the run we talk to

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with ContentSwitcher(initial="offline", id="body"):
            yield OfflineView(id="offline")
            yield MasterConsole(self.connection.call, self.clock, id="master")
            yield PeerConsole(self.connection.call, self.clock, id="peer")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = str(self.socket_path)
        self.run_connection()
        self.set_interval(AGE_REFRESH, self._redraw_ages)
        self.set_interval(IDLE_TICK, self._idle_tick)

    @work(exclusive=True, group="connection")
    async def run_connection(self) -> None:
        await self.connection.run()

    def _alive(self) -> bool:
        """False once the app is shutting down and its widgets are gone (messages from the
        connection may still be queued then)."""
        return bool(self.query("#body"))

    @property
    def role(self) -> str | None:
        return self.state.role if self.state is not None else None

    def active_console(self) -> MasterConsole | PeerConsole | None:
        if self.role == "master":
            return self.query_one(MasterConsole)
        if self.role == "peer":
            return self.query_one(PeerConsole)
        return None

    def config_view(self) -> ConfigView | None:
        console = self.active_console() if self._alive() else None
        return console.query_one(ConfigView) if console is not None else None

    def _redraw(self, parts: set[str]) -> None:
        console = self.active_console() if self._alive() else None
        if console is not None and self.state is not None and parts:
            try:
                console.show(self.state, parts, self.clock())  # type: ignore[arg-type]
            except NoMatches:
                # Only while the app closes and its views are taken down (messages from the
                # connection can still be queued then); every selector is drawn by the tests.
                return

    def _redraw_ages(self) -> None:
        if self.online:
            self._redraw({"clock"})

    def _idle_tick(self) -> None:
        state = self.state
        if self.online and state is not None and state.history.idle_tick(self.clock(), IDLE_TICK):
            self._redraw({"rates"})

    # -- messages from the connection ------------------------------------------------------------
    def on_connecting(self, message: Connecting) -> None:
        if not self.online and self._alive():
            self.query_one(OfflineView).show_connecting(message.socket, message.attempt)

    def on_disconnected(self, message: Disconnected) -> None:
        self.online = False
        if not self._alive():
            return
        self.query_one(OfflineView).show_down(
            message.socket, message.error, message.retry_in, message.attempt
        )
        self.query_one("#body", ContentSwitcher).current = "offline"
        self.sub_title = f"disconnected · {message.socket}"
        self.refresh_bindings()

    def on_connected(self, message: Connected) -> None:
        if not self._alive():
            return
        status = message.status
        role = str(status.get("role"))
        fresh = self.state is None or self.state.role != role
        if fresh:
            self.state = state_for(role)
        # A new run of the daemon (not just a dropped connection) has read its config afresh.
        started = status.get("started_at")
        restarted = self.ever_connected and started != self.daemon_started_at
        self.daemon_started_at = started
        self.online = self.ever_connected = True
        parts = self.state.apply_status(status)
        self.query_one("#body", ContentSwitcher).current = role
        self.sub_title = f"{role} {status.get('node_id', '')} · {message.socket}"
        self._redraw(parts)
        console = self.active_console()
        if fresh and console is not None:
            self.action_show(console.tabs[0])  # its table takes the focus, for the arrow keys
        view = self.config_view()
        if view is not None:
            if restarted:
                view.daemon_restarted()
            view.reload()
        self.refresh_bindings()

    def on_status_refreshed(self, message: StatusRefreshed) -> None:
        if self.state is not None and message.status.get("role") == self.state.role:
            self._redraw(self.state.apply_status(message.status))

    def on_daemon_event(self, message: DaemonEvent) -> None:
        if message.type == "log":
            level = str(message.data.get("level", "warning"))
            self.notify(
                str(message.data.get("message", "")),
                title=str(message.data.get("logger", "daemon")),
                severity="error" if level == "error" else "warning",
            )
            return
        if message.type == "config.changed":
            view = self.config_view()
            if view is not None:
                view.reload()
            return
        if self.state is not None:
            self._redraw(self.state.apply_event(message.type, message.data, message.time))

    def on_rates_updated(self, message: RatesUpdated) -> None:
        if self.state is None:
            return
        parts: set[str] = set()
        for sample in message.samples():  # every sample the queue merged into this message
            parts |= self.state.apply_event(message.type, sample, message.time, self.clock())
        self._redraw(parts)

    # The other high-rate subclasses have their own handler names; they fold in the same way.
    on_sync_progress = on_daemon_event
    on_peer_holdings = on_daemon_event

    # -- actions ---------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "show":
            tabs = MASTER_TABS if self.role == "master" else PEER_TABS
            return self.online and bool(parameters) and parameters[0] in tabs
        if action == "rescan":
            return self.online and self.role == "master"
        if action == "retry_now":
            return not self.online
        return True

    def action_show(self, tab: str) -> None:
        console = self.active_console()
        if console is None or tab not in console.tabs:
            return
        console.query_one(TabbedContent).active = f"{console.role}-{tab}"
        pane = console.query_one(f"#{console.role}-{tab}")
        tables = pane.query(DataTable)
        if tables:
            tables.first().focus()

    def action_retry_now(self) -> None:
        self.connection.retry_now()

    @work(exclusive=True, group="rescan")
    async def action_rescan(self) -> None:
        self.notify("rescanning the watched directory ...", timeout=2)
        try:
            answer = await self.connection.call("rescan")
        except (ControlError, ControlClosed) as exc:
            self.notify(f"rescan failed: {getattr(exc, 'message', exc)}", severity="error")
            return
        changed = "a new version" if answer.get("changed") else "no change"
        self.notify(f"rescan done: {changed} (version {answer.get('version')})")

    def edit_config_key(self, name: str) -> None:
        self.action_show("config")
        view = self.config_view()
        if view is not None:
            view.start_edit(name)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        console = self.active_console()
        if self.online and console is not None:
            for tab in console.tabs:
                yield SystemCommand(
                    f"Show {TAB_TITLES[tab]}",
                    f"Switch to the {TAB_TITLES[tab].lower()} view",
                    lambda tab=tab: self.action_show(tab),
                )
            if self.role == "master":
                yield SystemCommand(
                    "Rescan now", "Scan watched_dir now and publish", self.action_rescan
                )
        else:
            yield SystemCommand(
                "Retry now", "Try to connect to the daemon again", self.action_retry_now
            )


# --------------------------------------------------------------------------------------------------
# Entry points


def default_socket() -> Path:
    """Where a master started without ``control_socket`` or ``state_dir`` listens
    (``$XDG_STATE_HOME/sift/master/control.sock``, as in docs/config.md)."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "sift" / "master" / "control.sock"


def socket_from_config(path: str | os.PathLike[str]) -> Path:
    """The control socket of the daemon configured by ``path``: a file with ``watched_dir`` is a
    master's, one with ``master_addr`` a peer's. Raises ConfigError with a one-line message."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config file not found", path=Path(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", path=Path(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML syntax error: {exc}", path=Path(path)) from None
    if "watched_dir" in data or "master_addr" in data:
        # Only the socket's keys are read: the operator may not be allowed to read the key file,
        # and a NixOS config has no key at all.
        return control_socket_of(path)
    raise ConfigError(
        "neither watched_dir (a master's) nor master_addr (a peer's) is set", path=Path(path)
    )


def run_console(socket_path: Path) -> None:
    """Run the console attached to ``socket_path`` in the foreground until the user quits."""
    SiftConsole(socket_path).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sift-tui",
        description="Live console for a sift master or peer, over its local control socket.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="S", help="the daemon's control socket")
    where.add_argument(
        "--config", metavar="F", help="the daemon's config file (its control_socket is used)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.socket:
        socket_path = Path(args.socket)
    elif args.config:
        try:
            socket_path = socket_from_config(args.config)
        except ConfigError as exc:
            print(f"sift-tui: {exc}", file=sys.stderr)
            return 2
    else:
        socket_path = default_socket()
    run_console(socket_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
