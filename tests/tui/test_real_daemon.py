"""The console attached to a real `sift master start` subprocess through its real control socket:
config edits checked and written by the daemon, a version bump seen live, and reconnection
after the daemon restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from sift_tui.app import SiftConsole
from sift_tui.widgets.config import ConfigView
from sift_tui.widgets.tables import KeyedTable
from tests.integration.cluster import Cluster
from tests.tui.scripted import SIZE

pytestmark = pytest.mark.slow
DEADLINE = 60.0


async def until(pilot: Pilot, predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


@pytest.fixture
def cluster(tmp_path: Path):
    c = Cluster(tmp_path)
    (c.master_dir / "notes.txt").write_text("first\n")
    try:
        yield c
    finally:
        c.close()


def control_socket(cluster: Cluster) -> Path:
    return cluster.base / "master" / "state" / "control.sock"


def console(cluster: Cluster) -> SiftConsole:
    app = SiftConsole(control_socket(cluster), backoff=(1,))
    app.animation_level = "none"
    return app


async def test_config_edits_go_through_the_real_daemon(cluster: Cluster):
    await asyncio.to_thread(cluster.start_master)
    config_file = cluster.master.config
    original = "# operator notes: rescans are slow on this box\n" + config_file.read_text().replace(
        "rescan_interval = 30", "rescan_interval = 30  # seconds, tuned by hand"
    )
    config_file.write_text(original)

    app = console(cluster)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.online, "the console to connect")
        await pilot.press("c")
        view = app.query_one("#master-config").query_one(ConfigView)
        await until(pilot, lambda: "rescan_interval" in view.keys, "config.get")
        table = view.query_one(KeyedTable)
        feedback = view.query_one(".config-feedback")

        # Refused: the daemon's reason inline, the file byte for byte as it was.
        table.move_cursor(row=table.get_row_index("rescan_interval"))
        await pilot.press("enter", "ctrl+u", *"soon", "enter")
        await until(pilot, lambda: "refused" in str(feedback.render()), "the refusal")
        assert "rescan_interval" in str(feedback.render())
        assert "expected" in str(feedback.render())
        assert config_file.read_text() == original

        # Accepted and applied live: written with the comments kept.
        await pilot.press("ctrl+u", *"120", "enter")
        await until(pilot, lambda: "applied" in str(feedback.render()), "the live change")
        text = config_file.read_text()
        assert "rescan_interval = 120" in text
        assert "# operator notes: rescans are slow on this box" in text
        assert "# seconds, tuned by hand" in text
        await until(
            pilot,
            lambda: table.get_cell("rescan_interval", "value") in ("120", "120.0"),
            "the table to show the new value",
        )

        # A key that needs a restart is marked as such.
        table.focus()
        table.move_cursor(row=table.get_row_index("debounce_ms"))
        table.move_cursor(row=table.get_row_index("max_frame_size"))
        await pilot.press("e", "ctrl+u", *"8388608", "enter")
        await until(pilot, lambda: "restarts" in str(feedback.render()), "the restart note")
        await until(
            pilot,
            lambda: "needs restart" in str(table.get_cell("max_frame_size", "state")),
            "the needs-restart marker",
        )
        assert "max_frame_size = 8388608" in config_file.read_text()


async def test_console_follows_a_version_bump_and_a_daemon_restart(cluster: Cluster):
    await asyncio.to_thread(cluster.start_master)
    app = console(cluster)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.online, "the console to connect")
        assert app.state.status["manifest_version"] == 1
        versions = app.query_one("#versions", KeyedTable)
        files = app.query_one("#files", KeyedTable)
        assert [k.value for k in files.rows] == ["notes.txt"]

        (cluster.master_dir / "notes.txt").write_text("second\n")
        (cluster.master_dir / "new.csv").write_text("a,b\n1,2\n")
        await until(pilot, lambda: "2" in versions.rows, "version 2 in the versions table")
        await until(pilot, lambda: "new.csv" in files.rows, "the new file in the file list")
        summary = str(app.query_one("#manifest-summary").render())
        assert "version 2" in summary
        seen = app.connection.last_event_id
        assert seen is not None

        # The daemon goes away: the offline screen names the socket and the error.
        await asyncio.to_thread(cluster.master.stop)
        await until(pilot, lambda: not app.online, "the console to notice")
        detail = str(app.query_one("#offline-detail").render())
        assert str(control_socket(cluster)) in detail
        assert "retrying in" in detail

        # It comes back (same state dir, so versions keep counting up): the console reattaches
        # by itself and the next change shows.
        await asyncio.to_thread(cluster.start_master)
        await until(pilot, lambda: app.online, "the console to reconnect")
        (cluster.master_dir / "third.txt").write_text("3\n")
        await until(pilot, lambda: "3" in versions.rows, "version 3 after the restart")
        assert app.connection.last_event_id > seen
