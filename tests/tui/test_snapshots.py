"""Snapshots of every view, drawn from scripted daemons with a frozen clock at 120x36.

Regenerate after an intended change with ``pytest tests/tui --snapshot-update`` and look at the
SVGs under ``__snapshots__/`` before committing them."""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import Input

from tests.tui.conftest import settle
from tests.tui.fake import PEER_SOCKET
from tests.tui.scripted import (
    SIZE,
    master_daemon,
    offline_daemon,
    peer_daemon,
    scripted_app,
)


def test_manifest_view(snap_compare):
    daemon = master_daemon()

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, daemon)

    assert snap_compare(scripted_app(daemon), terminal_size=SIZE, run_before=run_before)


def test_peers_view(snap_compare):
    daemon = master_daemon()

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, daemon)
        await pilot.press("p")
        await settle(pilot, daemon)

    assert snap_compare(scripted_app(daemon), terminal_size=SIZE, run_before=run_before)


def test_transfers_view(snap_compare):
    daemon = master_daemon()

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, daemon)
        await pilot.press("t")
        await settle(pilot, daemon)

    assert snap_compare(scripted_app(daemon), terminal_size=SIZE, run_before=run_before)


def test_config_view_with_restart_marker_and_inline_error(snap_compare):
    daemon = master_daemon()

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, daemon)
        await pilot.press("c")
        await settle(pilot, daemon)
        pilot.app.query_one(Input).cursor_blink = False
        await pilot.press("down", "enter", "ctrl+u", *"0.0.0.0:7800", "enter")
        await settle(pilot, daemon)
        await pilot.press("down", "down", "down", "enter", "ctrl+u", *"soon", "enter")
        await settle(pilot, daemon)

    assert snap_compare(scripted_app(daemon), terminal_size=SIZE, run_before=run_before)


def test_peer_attached_sync_view(snap_compare):
    daemon = peer_daemon()

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, daemon)

    app = scripted_app(daemon, PEER_SOCKET)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_peer_transfers_view(snap_compare):
    daemon = peer_daemon()

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot, daemon)
        await pilot.press("t")
        await settle(pilot, daemon)

    app = scripted_app(daemon, PEER_SOCKET)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_disconnected_screen(snap_compare):
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)

    app = scripted_app(offline_daemon())
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
