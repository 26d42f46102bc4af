"""The control socket of real daemons: status, the event stream, config editing, rescan."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from sift.control.client import ControlClient, ControlError, control_call
from tests.integration.cluster import wait_for
from tests.integration.faultproxy import FaultProxy
from tests.integration.test_sync import make_tree, run_sift

EVENT_TIMEOUT = 30.0


async def wait_event(client: ControlClient, predicate, timeout: float = EVENT_TIMEOUT) -> dict:
    """The first event matching ``predicate``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("no matching event in time")
        event = await asyncio.wait_for(client.next_event(), remaining)
        if predicate(event):
            return event


def test_status_through_the_control_socket(cluster):
    make_tree(cluster.master_dir, big_mib=1)
    cluster.start_master()
    cluster.add_peer()
    cluster.wait_converged()

    result = run_sift("status", "--control", str(cluster.master_socket), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    network = cluster.status()
    assert status["manifest_version"] == network["manifest_version"]
    assert status["role"] == "master"
    assert status["connected_peers"] == 1
    assert status["control_socket"] == str(cluster.master_socket)
    assert status["versions"][0]["version"] == status["manifest_version"]

    lean = asyncio.run(control_call(cluster.master_socket, "status", {"file_list": False}))
    assert "file_list" not in lean
    assert lean["manifest_version"] == status["manifest_version"]

    human = run_sift("status", "--control", str(cluster.master_socket))
    assert f"Manifest version : {status['manifest_version']}" in human.stdout

    peer = run_sift("status", "--control", str(cluster.peer_socket(0)))
    assert peer.returncode == 0, peer.stderr
    assert "Synced version" in peer.stdout

    missing = run_sift("status", "--control", str(cluster.base / "nothing.sock"))
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == f"sift: no control socket at {cluster.base / 'nothing.sock'} (is the daemon running?)"
    )


async def test_events_follow_a_change_from_master_to_peer(cluster):
    make_tree(cluster.master_dir, big_mib=1)
    await asyncio.to_thread(cluster.start_master)
    await asyncio.to_thread(cluster.add_peer)
    await asyncio.to_thread(cluster.wait_converged)
    version = (await control_call(cluster.master_socket, "status"))["manifest_version"]

    master = await ControlClient.connect(cluster.master_socket)
    peer = await ControlClient.connect(cluster.peer_socket(0))
    async with master, peer:
        await master.subscribe()
        await peer.subscribe()
        (cluster.master_dir / "sub" / "deeper").mkdir(parents=True)
        (cluster.master_dir / "sub" / "deeper" / "new.bin").write_bytes(os.urandom(3 << 20))

        # (The watcher may publish the new directories alone first; the file comes with them
        # or in the next version.)
        published = await wait_event(
            master, lambda e: e["type"] == "manifest.published" and e["data"]["added"]
        )
        data = published["data"]
        assert data["version"] >= version + 1
        assert data["added"] == ["sub/deeper/new.bin"]  # its new directories are not counted
        assert data["added_count"] == 1
        assert data["bytes_changed"] == 3 << 20

        started = await wait_event(
            peer,
            lambda e: e["type"] == "sync.started" and e["data"]["version"] == data["version"],
        )
        finished = await wait_event(
            peer,
            lambda e: e["type"] == "sync.finished" and e["data"]["version"] == data["version"],
        )
        assert finished["data"]["bytes_from_master"] == 3 << 20
        assert finished["id"] > started["id"]

        held = await wait_event(
            master, lambda e: e["type"] == "peer.holdings" and e["data"]["complete"]
        )
        assert held["data"]["chunks_held"] == held["data"]["chunks_total"]
        rates = await wait_event(master, lambda e: e["type"] == "rates")
        assert rates["data"]["total"]["out"] > 0
        assert rates["data"]["peers"]  # per peer, keyed by node id

    # Resuming from an id replays what came after it.
    async with await ControlClient.connect(cluster.master_socket) as again:
        await again.subscribe(since=published["id"] - 1)
        replayed = await asyncio.wait_for(again.next_event(), 5)
        assert replayed == published


async def test_config_set_is_validated_written_with_comments_and_applied(cluster):
    await asyncio.to_thread(cluster.start_master)
    config = cluster.master.config
    config.write_text("# the lab's master\n" + config.read_text() + "# end\n")

    async with await ControlClient.connect(cluster.master_socket) as client:
        await client.subscribe(types=["config."])
        before = config.read_text()
        with pytest.raises(ControlError) as err:
            await client.call("config.set", {"key": "debounce_ms", "value": "-1"})
        assert err.value.code == "invalid"
        assert "debounce_ms" in err.value.message
        assert config.read_text() == before

        answer = await client.call("config.set", {"key": "debounce_ms", "value": "50"})
        assert answer == {"key": "debounce_ms", "value": 50, "applied": "live"}
        text = config.read_text()
        assert text.startswith("# the lab's master\n")
        assert "rescan_interval = 30\n# end\n" in text
        assert "debounce_ms = 50\n" in text
        event = await asyncio.wait_for(client.next_event(), 5)
        assert event["type"] == "config.changed"
        assert event["data"]["applied"] == "live"

        answer = await client.call("config.set", {"key": "chunk_avg_size", "value": 131072})
        assert answer["applied"] == "restart"
        keys = {k["name"]: k for k in (await client.call("config.get"))["keys"]}
        assert keys["chunk_avg_size"]["value"] == 131072
        assert keys["psk"]["value"] == "<hidden>"

    # The watcher restarted with the new debounce and still publishes changes.
    version = (await control_call(cluster.master_socket, "status"))["manifest_version"]
    (cluster.master_dir / "after.txt").write_text("x")
    await asyncio.to_thread(
        wait_for,
        lambda: cluster.status()["manifest_version"] > version,
        30,
        "a version after the debounce change",
    )


async def test_rescan_publishes_before_answering(cluster):
    await asyncio.to_thread(cluster.start_master, rescan_interval=0, debounce_ms=60_000)
    before = (await control_call(cluster.master_socket, "status"))["manifest_version"]
    (cluster.master_dir / "quiet.txt").write_text("the watcher waits a minute for this")
    answer = await control_call(cluster.master_socket, "rescan")
    assert answer == {"version": before + 1, "changed": True}
    status = await control_call(cluster.master_socket, "status")
    assert "quiet.txt" in [f["path"] for f in status["file_list"]]
    assert await control_call(cluster.master_socket, "rescan") == {
        "version": before + 1,
        "changed": False,
    }
    await asyncio.to_thread(cluster.add_peer)
    await asyncio.to_thread(cluster.wait_converged)
    with pytest.raises(ControlError) as err:
        await control_call(cluster.peer_socket(0), "rescan")
    assert err.value.code == "unknown_method"


async def test_warnings_reach_the_event_stream(cluster):
    await asyncio.to_thread(cluster.start_master)
    async with await ControlClient.connect(cluster.master_socket) as client:
        await client.subscribe(types=["log"])
        await asyncio.to_thread(cluster.add_peer, psk="the-wrong-key")
        event = await wait_event(client, lambda e: "refused" in e["data"]["message"])
        assert event["data"]["level"] == "warning"
        assert "the-wrong-key" not in json.dumps(event)


def test_identity_and_recent_versions_survive_a_master_restart(cluster):
    cluster.start_master()
    (cluster.master_dir / "a.txt").write_text("one")
    wait_for(lambda: cluster.status()["manifest_version"] >= 2, 30, "version 2")
    before = asyncio.run(control_call(cluster.master_socket, "status"))
    cluster.master.stop()
    cluster.start_master()
    after = asyncio.run(control_call(cluster.master_socket, "status"))
    assert after["node_id"] == before["node_id"]
    assert after["started_at"] > before["started_at"]
    assert [v["version"] for v in after["versions"]][: len(before["versions"])] == [
        v["version"] for v in before["versions"]
    ]


async def test_a_slow_sync_reports_progress_sources_and_rates(cluster):
    (cluster.master_dir / "big.bin").write_bytes(os.urandom(6 << 20))
    await asyncio.to_thread(cluster.start_master)
    with FaultProxy(("127.0.0.1", cluster.master_port)) as proxy:
        proxy.throttle(2_000_000)  # about 3 s for the file: several progress reports
        await asyncio.to_thread(cluster.add_peer, master_addr=proxy.addr)
        await asyncio.to_thread(
            wait_for, lambda: cluster.peer_socket(0).exists(), 30, "the peer's control socket"
        )
        async with await ControlClient.connect(cluster.peer_socket(0)) as peer:
            await peer.subscribe(since=0)
            started = await wait_event(peer, lambda e: e["type"] == "sync.started")
            assert started["data"]["bytes_total"] == 6 << 20
            progress = await wait_event(
                peer,
                lambda e: e["type"] == "sync.progress" and 0 < e["data"]["bytes_done"] < 6 << 20,
            )
            assert progress["data"]["current"] == ["big.bin"]
            assert progress["data"]["sources"]["master"] > 0
            status = await peer.call("status")
            assert status["syncing"]
            assert status["progress"]["bytes_total"] == 6 << 20
            rates = await wait_event(peer, lambda e: e["type"] == "rates")
            assert 0 < rates["data"]["peers"]["master"]["in"] < 4_000_000
            finished = await wait_event(peer, lambda e: e["type"] == "sync.finished")
            assert finished["data"]["bytes_from_master"] == 6 << 20
        await asyncio.to_thread(cluster.wait_converged)
