"""The console against scripted daemons: key bindings, in-place table updates, the message
queue's replace rule, reconnection with ``since``, the command palette, the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.widgets import ContentSwitcher, Input, TabbedContent

from sift.config import ConfigError
from sift_tui.app import build_parser, main, socket_from_config
from sift_tui.messages import PeerHoldings, RatesUpdated, SyncProgress
from sift_tui.widgets.config import ConfigView
from sift_tui.widgets.offline import OfflineView
from sift_tui.widgets.tables import KeyedTable
from tests.tui.conftest import settle, wait_until
from tests.tui.fake import (
    FIRST_EVENT,
    PEER_SOCKET,
    SOCKET,
    FakeDaemon,
    event,
    master_status,
    peer_status,
)
from tests.tui.scripted import SIZE, master_daemon, peer_daemon, scripted_app, write_screenshots


async def no_wait(_seconds: float) -> None:
    await asyncio.sleep(0)


def active_tab(app) -> str:
    return app.query_one(f"#{app.role}-tabs", TabbedContent).active


async def test_master_bindings_switch_views_and_hide_the_peer_ones():
    daemon = master_daemon()
    app = scripted_app(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, daemon)
        assert active_tab(app) == "master-manifest"
        for key, tab in [("p", "peers"), ("t", "transfers"), ("c", "config"), ("m", "manifest")]:
            await pilot.press(key)
            await settle(pilot, daemon)
            assert active_tab(app) == f"master-{tab}"
        await pilot.press("s")  # a peer's view: not offered on a master
        assert active_tab(app) == "master-manifest"
        shown = {b.binding.id for b in app.active_bindings.values() if b.enabled}
        assert {"show-manifest", "show-peers", "rescan", "quit"} <= shown
        assert "show-sync" not in shown
        assert "retry-now" not in shown
        await pilot.press("r")
        await settle(pilot, daemon)
        assert ("rescan", None) in daemon.calls
        await pilot.press("q")
    assert app.return_code == 0


async def test_peer_console_shows_sync_progress_and_its_own_bindings():
    daemon = peer_daemon()
    app = scripted_app(daemon, PEER_SOCKET)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, daemon)
        assert app.role == "peer"
        assert active_tab(app) == "peer-sync"
        assert not app.check_action("show", ("peers",))
        assert not app.check_action("rescan", ())
        sources = app.query_one("#sources-table", KeyedTable)
        assert [k.value for k in sources.rows] == ["10.0.0.11:7778", "10.0.0.13:7778", "master"]
        await pilot.press("t")
        assert active_tab(app) == "peer-transfers"
        daemon.status = {**peer_status(syncing=False), "synced_version": 7}
        daemon.push(event(500, "sync.finished", version=7, seconds=2.0, files_written=2))
        await settle(pilot, daemon)
        assert app.state.progress is None
        assert app.state.status["synced_version"] == 7


async def test_peers_table_is_updated_in_place(monkeypatch):
    def no_clearing(*_args, **_kwargs):
        raise AssertionError("the peers table was cleared instead of updated in place")

    monkeypatch.setattr(KeyedTable, "clear", no_clearing)
    daemon = master_daemon()
    app = scripted_app(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, daemon)
        await pilot.press("p")
        table = app.query_one("#peers-table", KeyedTable)
        assert [k.value for k in table.rows] == ["peer-a1f3", "peer-b7c2", "peer-d9e8"]
        table.move_cursor(row=1)
        daemon.push(
            event(
                900,
                "peer.holdings",
                node_id="peer-b7c2",
                version=7,
                chunks_held=400,
                chunks_total=412,
                complete=False,
            )
        )
        await settle(pilot, daemon)
        assert table.get_cell("peer-b7c2", "chunks").plain == "400 / 412"
        assert table.get_cell("peer-b7c2", "complete").plain == "97.1%"
        daemon.push(event(901, "peer.disconnected", node_id="peer-a1f3", reason="bye"))
        await settle(pilot, daemon)
        assert [k.value for k in table.rows] == ["peer-b7c2", "peer-d9e8"]
        assert table.cursor_row == 0  # still on peer-b7c2, which moved up one row
        daemon.push(event(902, "peer.connected", node_id="peer-e1", addr="10.0.0.15:7778"))
        await settle(pilot, daemon)
        assert [k.value for k in table.rows] == ["peer-b7c2", "peer-d9e8", "peer-e1"]


def test_high_rate_messages_replace_queued_ones():
    older = RatesUpdated(1, "rates", 1.0, {"p2p": 1})
    newer = RatesUpdated(2, "rates", 2.0, {"p2p": 2})
    assert older.can_replace(newer)
    assert newer.samples() == [{"p2p": 1}, {"p2p": 2}]  # the history keeps both samples
    assert SyncProgress(1, "sync.progress", 1.0, {}).can_replace(
        SyncProgress(2, "sync.progress", 2.0, {})
    )
    a1 = PeerHoldings(1, "peer.holdings", 1.0, {"node_id": "a"})
    assert a1.can_replace(PeerHoldings(2, "peer.holdings", 2.0, {"node_id": "a"}))
    assert not a1.can_replace(PeerHoldings(3, "peer.holdings", 3.0, {"node_id": "b"}))
    assert not older.can_replace(a1)


async def test_reconnects_after_the_daemon_restarts_and_resumes_with_since():
    daemon = master_daemon()
    app = scripted_app(daemon)
    app.connection._sleep = no_wait
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, daemon)
        last_seen = app.connection.last_event_id
        assert last_seen == daemon.events[-1]["id"]
        assert daemon.subscribed_since == [FIRST_EVENT]  # first contact: after the snapshot

        daemon.down = True
        daemon.drop_clients()
        await wait_until(pilot, lambda: not app.online, "the offline screen")
        assert app.query_one("#body", ContentSwitcher).current == "offline"
        # Retries run back to back here (no_wait), so the detail alternates between "connecting"
        # and the last error: wait for the error rather than read it at one instant.
        await wait_until(
            pilot,
            lambda: "no such socket" in str(app.query_one("#offline-detail").render()),
            "the error on the offline screen",
        )

        status = master_status()
        status["manifest_version"] = 8
        status["events_last_id"] = last_seen + 10
        daemon.status = status
        daemon.push(event(800, "manifest.published", version=8, files=15, bytes=1))
        daemon.down = False
        await wait_until(pilot, lambda: app.online, "the reconnection")
        await settle(pilot, daemon)
        assert app.online
        assert daemon.subscribed_since[-1] == last_seen
        assert app.state.status["manifest_version"] == 8
        assert app.query_one("#body", ContentSwitcher).current == "master"


async def test_offline_screen_counts_down_and_retry_now_cuts_it_short():
    ticks: list[asyncio.Future] = []

    async def manual_tick(_seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        ticks.append(future)
        await future

    daemon = FakeDaemon(None)
    app = scripted_app(daemon)
    app.connection._sleep = manual_tick
    app.connection.backoff = (3,)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        view = app.query_one(OfflineView)
        detail = lambda: str(view.query_one("#offline-detail").render())  # noqa: E731
        assert "retrying in 3 s  (attempt 1)" in detail()
        assert str(SOCKET) in detail()
        ticks[-1].set_result(None)
        await settle(pilot)
        assert "retrying in 2 s" in detail()
        await pilot.press("n")
        await settle(pilot)
        assert "attempt 2" in detail()
        assert "retrying in 3 s" in detail()


async def test_command_palette_jumps_to_a_config_key():
    daemon = master_daemon()
    app = scripted_app(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, daemon)
        await pilot.press("ctrl+p")
        await settle(pilot, daemon)
        await pilot.press(*"debounce")
        for _ in range(100):
            await pilot.pause(0.01)
        await pilot.press("enter")
        await settle(pilot, daemon)
        assert active_tab(app) == "master-config"
        view = app.query_one("#master-config").query_one(ConfigView)
        assert view.editing == "debounce_ms"
        assert app.focused is view.query_one(Input)


async def test_config_edit_refusal_is_shown_inline_and_escape_cancels():
    daemon = master_daemon()
    app = scripted_app(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, daemon)
        await pilot.press("c")
        await settle(pilot, daemon)
        view = app.query_one("#master-config").query_one(ConfigView)
        table = view.query_one(KeyedTable)
        table.move_cursor(row=table.get_row_index("debounce_ms"))
        await pilot.press("e", "ctrl+u", *"fast", "enter")
        await settle(pilot, daemon)
        feedback = str(view.query_one(".config-feedback").render())
        assert "refused: debounce_ms: expected an integer" in feedback
        assert view.editing == "debounce_ms"  # still editing, to fix the value
        await pilot.press("escape")
        assert view.editing is None
        assert app.focused is table


def test_cli_finds_the_socket_in_a_config_file(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    master = tmp_path / "master.toml"
    master.write_text(f'watched_dir = "{data}"\npsk = "k"\nstate_dir = "{tmp_path / "st"}"\n')
    assert socket_from_config(master) == tmp_path / "st" / "control.sock"
    peer = tmp_path / "peer.toml"
    peer.write_text(
        f'master_addr = "127.0.0.1:7777"\npsk = "k"\nlocal_dir = "{tmp_path / "m"}"\n'
        f'control_socket = "{tmp_path / "p.sock"}"\n'
    )
    assert socket_from_config(peer) == tmp_path / "p.sock"
    neither = tmp_path / "neither.toml"
    neither.write_text('psk = "k"\n')
    with pytest.raises(ConfigError, match="neither watched_dir"):
        socket_from_config(neither)
    with pytest.raises(ConfigError, match="config file not found"):
        socket_from_config(tmp_path / "missing.toml")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--socket", "a", "--config", "b"])


async def test_snapshots_are_refreshed_on_a_beat_even_while_events_flow():
    daemon = master_daemon()
    app = scripted_app(daemon)
    app.connection.refresh_interval = 0.05
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, daemon)
        for i in range(20):
            daemon.push(event(1000 + i, "rates", total={"in": 0.0, "out": 1.0}, p2p=0.0))
            await pilot.pause(0.02)
        await settle(pilot, daemon)
        refreshes = [c for c in daemon.calls if c[0] == "status"]
        assert len(refreshes) >= 3  # the first snapshot and at least two on the beat


def test_docs_screenshots_are_current(tmp_path: Path):
    """docs/tui-*.svg are drawn from the scripted daemons; redraw them after a visible change
    with ``python -m tests.tui.scripted --screenshots docs``."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    for path in write_screenshots(tmp_path):
        assert path.read_text() == (docs / path.name).read_text(), f"docs/{path.name} is stale"


def test_cli_refuses_a_bad_config_in_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("watched_dir = [\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sift-tui: ")
    assert "TOML syntax error" in err
    assert len(err.splitlines()) == 1


async def test_needs_restart_marks_survive_a_dropped_connection_but_not_a_restart():
    daemon = master_daemon()
    daemon.status["started_at"] = 1000.0
    app = scripted_app(daemon)
    app.connection._sleep = no_wait

    async def reconnect(pilot) -> None:
        daemon.down = True
        daemon.drop_clients()
        await wait_until(pilot, lambda: not app.online, "the offline screen")
        daemon.down = False
        await wait_until(pilot, lambda: app.online, "the reconnection")
        await settle(pilot, daemon)

    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, daemon)
        view = app.query_one(ConfigView)
        view.needs_restart.add("max_frame_size")
        await reconnect(pilot)  # the same run of the daemon: the change still waits
        assert view.needs_restart == {"max_frame_size"}
        daemon.status["started_at"] = 2000.0  # a new run has read the file
        await reconnect(pilot)
        assert view.needs_restart == set()
