"""ChunkHints: the master tells the other peers who it is sending which chunks to, and a peer
fetches hinted chunks from that peer instead of waiting for the master's own answers."""

from __future__ import annotations

import os
from pathlib import Path

from sift.core.chunk import DEFAULT_PARAMS
from sift.core.chunker import chunk_bytes
from sift.core.manifest import FileEntry, Manifest, encode_manifest
from sift.master.daemon import HINT_FANOUT
from tests.integration.cluster import Cluster, read_or_none, wait_for
from tests.integration.hostile import ListeningPeer, ScriptedMaster


def test_the_master_hints_other_peers_at_what_it_sends(cluster: Cluster, loop_thread):
    for i in range(3):
        (cluster.master_dir / f"f{i}.bin").write_bytes(os.urandom(600_000))
    cluster.start_master()
    listener = loop_thread.call(ListeningPeer(cluster.master_port, cluster.psk.encode()).start())
    try:
        cluster.add_peer()
        cluster.wait_converged()
        port = cluster.peers[0][2]
        chunks = cluster.status()["distinct_chunks"]
        # Every chunk went to peer1 from the master (nobody else held any), and the listener,
        # still missing all of them, was told each time, before the bytes left.
        wait_for(lambda: sum(len(h.hashes) for h in listener.hints) >= chunks, 10, "the hints")
        assert {h.addr for h in listener.hints} == {f"127.0.0.1:{port}"}
        assert len({c for h in listener.hints for c in h.hashes}) == chunks
        assert cluster.status()["hints_sent"] == sum(len(h.hashes) for h in listener.hints)
    finally:
        loop_thread.call(listener.stop())


def test_each_batch_is_hinted_to_at_most_the_fanout(cluster: Cluster, loop_thread):
    """However many peers are missing the data, each batch the master sends is hinted to at
    most HINT_FANOUT of them: the cost of hints on the master's link is bounded."""
    for i in range(2):
        (cluster.master_dir / f"f{i}.bin").write_bytes(os.urandom(600_000))
    cluster.start_master()
    count = HINT_FANOUT + 4
    listeners = [
        loop_thread.call(
            ListeningPeer(cluster.master_port, cluster.psk.encode(), f"listener{i}").start()
        )
        for i in range(count)
    ]
    try:
        cluster.add_peer()
        cluster.wait_converged()
        chunks = cluster.status()["distinct_chunks"]
        wait_for(lambda: cluster.status()["hints_sent"] >= HINT_FANOUT * chunks, 10, "the hints")
        told: dict[bytes, int] = {}
        for listener in listeners:
            for chunk in {c for hint in listener.hints for c in hint.hashes}:
                told[chunk] = told.get(chunk, 0) + 1
        assert len(told) == chunks
        assert set(told.values()) == {HINT_FANOUT}
        assert cluster.status()["hints_sent"] == HINT_FANOUT * chunks
    finally:
        for listener in listeners:
            loop_thread.call(listener.stop())


def test_a_peer_fetches_hinted_chunks_from_the_named_peer(tmp_path: Path, loop_thread):
    data = os.urandom(6_000_000)
    chunks: dict[bytes, bytes] = {}
    cut = chunk_bytes(data, DEFAULT_PARAMS)
    offset = 0
    for c in cut:
        chunks[c.hash] = data[offset : offset + c.length]
        offset += c.length
    manifest = Manifest.build(
        1, DEFAULT_PARAMS, [FileEntry.build("big.bin", len(data), 0o644, 10**18, cut)]
    )
    psk = "hint-test-psk-0123456789"
    master = loop_thread.call(
        ScriptedMaster(psk.encode(), {1: encode_manifest(manifest)}, chunks).start()
    )
    cluster = Cluster(tmp_path / "c", psk=psk)
    cluster.master_port = master.port
    try:
        cluster.add_peer()  # peer1 gets everything from the master, promptly
        wait_for(lambda: read_or_none(cluster.peers[0][1] / "big.bin") == data, 30, "peer1 synced")
        served_to_peer1 = master.chunks_served
        # From now on the master's answers are slow, and it points at peer1 for every chunk.
        master.hint_to = f"127.0.0.1:{cluster.peers[0][2]}"
        master.answer_delay = 3.0
        cluster.add_peer()
        wait_for(lambda: read_or_none(cluster.peers[1][1] / "big.bin") == data, 30, "peer2 synced")
        status = cluster.peer_status(1)
        assert status["hinted_chunks"] > 0
        assert status["bytes_from_peers"] > 0
        # Only the chunks already asked of the master before the hint came are its to send.
        assert master.chunks_served - served_to_peer1 == len(chunks) - status["hinted_chunks"]
    finally:
        cluster.close()
        loop_thread.call(master.stop())
