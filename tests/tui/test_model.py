"""The folding rules (snapshot + events -> what the views show) and the text formats."""

from __future__ import annotations

import pytest

from sift_tui.format import (
    human_age,
    human_duration,
    human_percent,
    human_rate,
    human_size,
    utc_time,
)
from sift_tui.model import HISTORY_SAMPLES, MasterState, PeerState, RateHistory
from tests.tui.fake import NOW, master_status, peer_status


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**6, "3072.0 PiB"),
    ],
)
def test_human_size(n, text):
    assert human_size(n) == text


def test_rates_percent_durations_and_times():
    assert human_rate(0.4) == "0 B/s"
    assert human_rate(2.5 * 1024 * 1024) == "2.5 MiB/s"
    assert human_percent(1, 3) == "33.3%"
    assert human_percent(9999, 10000) == "99.9%"  # never 100% before the end
    assert human_percent(5, 0) == "-"
    assert human_duration(0.42) == "0.4 s"
    assert human_duration(75) == "1 min 15 s"
    assert human_duration(7260) == "2 h 1 min"
    assert human_duration(3 * 86400 + 3600) == "3 d 1 h"
    assert human_age(NOW - 0.5, NOW) == "just now"
    assert human_age(NOW - 42, NOW) == "42 s ago"
    assert human_age(NOW - 3700, NOW) == "1 h 1 min ago"
    assert utc_time(NOW) == "2026-11-26 08:00:00Z"


def test_rate_history_keeps_a_fixed_window_ending_now():
    history = RateHistory(("a", "b"), samples=4)
    assert history.values("a") == [0.0] * 4
    history.add(NOW, a=5.0)
    history.add(NOW + 1, a=7.0, b=1.0)
    assert history.values("a") == [0.0, 0.0, 5.0, 7.0]
    assert history.values("b") == [0.0, 0.0, 0.0, 1.0]
    assert history.latest("a") == 7.0
    assert history.peak("a") == 7.0
    # Still moving: no made-up zeros even when the daemon is late.
    assert not history.idle_tick(NOW + 5, 1.0)
    history.add(NOW + 6, a=0.0, b=0.0)  # the daemon's "stopped" sample
    assert not history.idle_tick(NOW + 6.5, 1.0)
    assert history.idle_tick(NOW + 8, 1.0)
    assert history.values("a") == [5.0, 7.0, 0.0, 0.0]


def test_master_state_folds_events_into_the_snapshot():
    state = MasterState()
    parts = state.apply_status(master_status())
    assert {"peers", "versions", "files"} <= parts
    assert len(state.history.values("p2p")) == HISTORY_SAMPLES

    state.apply_event("peer.connected", {"node_id": "p9", "addr": "10.0.0.9:1", "version": 0}, NOW)
    assert state.peers["p9"]["addr"] == "10.0.0.9:1"
    assert state.status["connected_peers"] == 4
    hold = {"node_id": "p9", "version": 7, "chunks_held": 5, "chunks_total": 9, "complete": False}
    assert state.apply_event("peer.holdings", hold, NOW) == {"peers"}
    assert state.peers["p9"]["chunks_held"] == 5
    # Holdings of a peer the console does not know are ignored, not invented.
    assert state.apply_event("peer.holdings", {**hold, "node_id": "ghost"}, NOW) == set()
    assert "ghost" not in state.peers
    state.apply_event("peer.disconnected", {"node_id": "p9"}, NOW)
    assert "p9" not in state.peers

    published = {
        "version": 8,
        "files": 16,
        "chunks": 57,
        "bytes": 42,
        "added": ["new.bin"],
        "changed": [],
        "removed": [],
        "bytes_changed": 42,
    }
    state.apply_event("manifest.published", published, NOW)
    assert state.status["manifest_version"] == 8
    assert state.versions[0]["version"] == 8
    assert state.versions[0]["published_at"] == NOW
    assert state.versions[0]["added_count"] == 1  # counted from the path list when absent
    state.apply_event("manifest.published", published, NOW)  # a replay does not duplicate it
    assert [v["version"] for v in state.versions].count(8) == 1

    rates = {
        "total": {"in": 0.0, "out": 300.0},
        "p2p": 900.0,
        "peers": {"peer-a1f3": {"in": 100.0, "out": 50.0, "from_master": 25.0}},
    }
    state.apply_event("rates", rates, NOW, NOW)
    assert state.history.latest("master_out") == 300.0
    assert state.history.latest("p2p") == 900.0
    assert state.peers["peer-a1f3"]["rate_from_master"] == 25.0


def test_peer_state_follows_a_sync():
    state = PeerState()
    state.apply_status(peer_status(syncing=False))
    assert state.progress is None
    state.apply_event(
        "sync.started",
        {"version": 8, "files_to_write": 3, "files_to_delete": 1, "bytes_total": 1000},
        NOW,
    )
    assert state.status["syncing"]
    assert state.progress["bytes_total"] == 1000
    state.apply_event(
        "sync.progress",
        {
            "version": 8,
            "bytes_done": 400,
            "bytes_total": 1000,
            "current": ["a"],
            "sources": {
                "master": 100,
                "10.0.0.11:7778": 300,
            },
        },
        NOW,
    )
    state.apply_event(
        "rates", {"total": {"in": 50.0, "out": 0.0}, "peers": {"peer-x": {"in": 50.0}}}, NOW, NOW
    )
    sources = state.sources()
    assert list(sources) == ["master", "10.0.0.11:7778", "peer-x"]
    assert sources["10.0.0.11:7778"]["bytes"] == 300
    assert sources["peer-x"]["in"] == 50.0
    state.apply_event("sync.finished", {"version": 8, "seconds": 1.5, "files_written": 3}, NOW)
    assert state.progress is None
    assert state.status["synced_version"] == 8
    assert state.status["last_sync"]["finished_at"] == NOW
    state.apply_event("master.disconnected", {"addr": "10.0.0.2:7777", "reason": "eof"}, NOW)
    assert state.status["master_connected"] is False


def test_master_state_takes_a_file_list_in_only_when_the_version_moves():
    state = MasterState()
    status = master_status()
    assert "files" in state.apply_status(status)
    assert "files" not in state.apply_status(master_status())  # the same version: no redraw
    state.apply_event("manifest.published", {"version": 8, "files": 16}, NOW)
    newer = master_status()
    newer["manifest_version"] = 8
    newer["file_list"] = [*newer["file_list"], {"path": "new.bin", "size": 1, "chunks": 1}]
    assert "files" in state.apply_status(newer)
    assert state.files[-1]["path"] == "new.bin"


def test_a_refresh_without_the_file_list_keeps_the_one_shown():
    state = MasterState()
    full = master_status()
    state.apply_status(full)
    files = list(state.files)
    assert files
    partial = {k: v for k, v in full.items() if k != "file_list"}
    parts = state.apply_status(partial)
    assert "files" not in parts
    assert state.files == files


def test_last_sync_text_names_bytes_kept_from_the_previous_version():
    from sift_tui.widgets.sync import last_sync_text

    last = {"version": 4, "seconds": 1.5, "files_written": 1, "bytes_copied_locally": 0}
    assert "kept from the previous" not in last_sync_text(last)
    text = last_sync_text({**last, "bytes_reused": 3 * 1024 * 1024})
    assert text.endswith(", 3.0 MiB kept from the previous versions")
