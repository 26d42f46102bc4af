"""Consoles attached to scripted daemons: what the snapshot tests draw and what
docs/tui.svg shows. ``python -m tests.tui.scripted [master|peer|offline]`` runs one in
this terminal, to look at the layout by hand."""

from __future__ import annotations

import sys

from sift_tui.app import SiftConsole
from tests.tui.fake import (
    PEER_SOCKET,
    SOCKET,
    FakeDaemon,
    frozen_clock,
    master_config,
    master_events,
    master_status,
    never,
    peer_events,
    peer_status,
)

SIZE = (120, 36)


def scripted_app(daemon: FakeDaemon, socket=SOCKET, *, interactive: bool = False) -> SiftConsole:
    app = SiftConsole(
        socket,
        connect=daemon.connect,
        sleep=None if interactive else never,
        clock=frozen_clock,
        refresh_interval=None,
    )
    if not interactive:
        app.animation_level = "none"
    return app


def master_daemon() -> FakeDaemon:
    return FakeDaemon(master_status(), master_events(), master_config())


def peer_daemon() -> FakeDaemon:
    config = master_config()
    config["role"], config["path"] = "peer", "/etc/sift/peer.toml"
    return FakeDaemon(peer_status(), peer_events(), config)


def offline_daemon() -> FakeDaemon:
    return FakeDaemon(None)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "master"
    daemon = {"master": master_daemon, "peer": peer_daemon, "offline": offline_daemon}[which]()
    scripted_app(daemon, PEER_SOCKET if which == "peer" else SOCKET, interactive=True).run()
