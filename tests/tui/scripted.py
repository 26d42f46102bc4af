"""Consoles attached to scripted daemons: what the snapshot tests draw and what the screenshots
in docs/ show.

``python -m tests.tui.scripted [master|peer|offline]`` runs one in this terminal, to look at the
layout by hand; ``python -m tests.tui.scripted --screenshots docs`` rewrites docs/tui-*.svg.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

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


async def _settled_screenshot(app: SiftConsole, daemon: FakeDaemon, keys: list[str]) -> str:
    from tests.tui.conftest import settle

    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, daemon)
        await pilot.press(*keys)
        await settle(pilot, daemon)
        return app.export_screenshot(title="sift-tui")


SCREENSHOTS = {
    "tui-peers.svg": (master_daemon, SOCKET, ["p"]),
    "tui-manifest.svg": (master_daemon, SOCKET, []),
    "tui-peer-sync.svg": (peer_daemon, PEER_SOCKET, []),
}


def write_screenshots(directory: Path) -> list[Path]:
    written = []
    for name, (make_daemon, socket, keys) in SCREENSHOTS.items():
        daemon = make_daemon()
        svg = asyncio.run(_settled_screenshot(scripted_app(daemon, socket), daemon, keys))
        path = directory / name
        path.write_text(svg)
        written.append(path)
    return written


if __name__ == "__main__":
    if sys.argv[1:2] == ["--screenshots"]:
        for path in write_screenshots(Path(sys.argv[2])):
            print(path)
        sys.exit(0)
    which = sys.argv[1] if len(sys.argv) > 1 else "master"
    daemon = {"master": master_daemon, "peer": peer_daemon, "offline": offline_daemon}[which]()
    scripted_app(daemon, PEER_SOCKET if which == "peer" else SOCKET, interactive=True).run()
