"""Lying sources and poisoned manifests against real peer daemons.

A lying peer is refused chunk by chunk, demoted, banned (visible in status) and the sync completes
from the others. A manifest with escaping paths, duplicates or absurd sizes is refused whole:
nothing is written, inside `local_dir` or outside it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sift.core.chunk import DEFAULT_PARAMS, HASH_SIZE, Chunk
from sift.core.chunker import chunk_bytes
from sift.core.manifest import (
    FORMAT_VERSION,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    MANIFEST_TAG,
    MAX_FILE_SIZE,
    FileEdit,
    FileEntry,
    Manifest,
    chunk_list_digest,
    encode_delta,
    encode_manifest,
    make_delta,
)
from tests.integration.cluster import Cluster, free_port, read_or_none, wait_for
from tests.integration.hostile import LyingPeer, PoisonMaster, ScriptedMaster, pack


def _write_dataset(root: Path, files: int = 4, size: int = 700_000) -> None:
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(os.urandom(size))


def test_lying_peers_are_banned_and_the_sync_completes_from_others(cluster: Cluster, loop_thread):
    _write_dataset(cluster.master_dir)
    # Small chunks (~43 of them): a liar that is asked at all gets a batch of several, enough for
    # the three strikes of a ban. With the default 256 KiB chunks a batch can hold one or two.
    cluster.start_master(chunk_min_size=16384, chunk_avg_size=65536, chunk_max_size=262144)
    cluster.add_peer()
    cluster.wait_converged()  # peer1 holds everything honestly

    liars = [
        loop_thread.call(LyingPeer(cluster.master_port, cluster.psk.encode(), mode).start())
        for mode in ("wrong", "truncated", "foreign")
    ]
    wait_for(lambda: cluster.status()["connected_peers"] == 4, 20, "the liars to join the master")
    cluster.add_peer()
    cluster.wait_converged()

    status = cluster.peer_status(1)
    banned = {b["addr"]: b for b in status["banned_sources"]}
    asked = [liar for liar in liars if liar.requests]
    assert asked, "the master never pointed the new peer at a liar: the test proves nothing"
    for liar in asked:
        assert liar.addr in banned, (liar.mode, status["banned_sources"])
        ban = banned[liar.addr]
        assert "fail verification" in ban["reason"]
        assert ban["until"] > time.time() + 200  # banned for minutes, not for this sync
        assert ban["bad_chunks"] >= 3
    # Complete and byte-identical (wait_converged compared every file), from the others.
    last = status["last_sync"]
    assert last["bytes_from_master"] + last["bytes_from_peers"] > 0
    log = cluster.peers[1][0].log_text()
    assert "banning source" in log
    # Operators see the bans on the event stream too.
    events = cluster.events(cluster.peer_socket(1))
    banned_events = {e["data"]["addr"] for e in events if e["type"] == "source.banned"}
    assert {liar.addr for liar in asked} <= banned_events
    # peer1 never met the liars as sources and keeps a clean record.
    assert cluster.peer_status(0)["banned_sources"] == []
    for liar in liars:
        loop_thread.call(liar.stop())


# -- poisoned manifests -----------------------------------------------------------------------

H = [bytes([i]) * HASH_SIZE for i in range(1, 9)]
PARAMS = [64, 256, 1024]


def _file(path: str, lengths=(100,), size=None) -> list:
    hashes = H[: len(lengths)]
    digest = chunk_list_digest(Chunk(h, n) for h, n in zip(hashes, lengths, strict=True))
    return [
        KIND_FILE,
        path,
        sum(lengths) if size is None else size,
        0o644,
        0,
        b"".join(hashes),
        list(lengths),
        digest,
    ]


def _manifest(entries: list) -> bytes:
    return pack([MANIFEST_TAG, FORMAT_VERSION, 1, PARAMS, entries])


# Each holds one harmless file next to the poison: refusing "as a whole" means that one is not
# written either.
POISON = {
    "traversal": [_file("../escaped.txt"), _file("ok.txt")],
    "absolute": [_file("ok.txt"), _file("/tmp/sift-escaped.txt")],
    "symlink escape": [[KIND_SYMLINK, "link", "../../outside"], _file("ok.txt")],
    "write through a symlink": [[KIND_SYMLINK, "d", "sub"], _file("d/x.txt"), _file("ok.txt")],
    "duplicate": [_file("ok.txt"), _file("ok.txt")],
    "absurd size": [_file("huge.bin", lengths=(), size=MAX_FILE_SIZE + 1), _file("ok.txt")],
    "reserved dir": [_file(".sift/tmp/x.part"), _file("ok.txt")],
    "dir then traversal": [[KIND_DIR, "a", 0o755], _file("a/../../x"), _file("ok.txt")],
}


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_poisoned_manifests_are_refused_whole_and_nothing_is_written(tmp_path, loop_thread):
    psk = "poison-test-key"
    cluster = Cluster(tmp_path / "c", psk=psk)
    masters = {
        name: loop_thread.call(PoisonMaster(psk.encode(), _manifest(entries)).start())
        for name, entries in POISON.items()
    }
    before = _snapshot(tmp_path)
    try:
        for master in masters.values():
            cluster.master_port = master.port  # each peer gets its own poisoned master
            cluster.add_peer(bind_addr=f"127.0.0.1:{free_port()}")

        def all_refused() -> bool:
            return all(
                "sync failed" in daemon.log_text() and master.manifest_requests >= 1
                for (daemon, _, _), master in zip(cluster.peers, masters.values(), strict=True)
            )

        wait_for(all_refused, 30, "every peer to refuse its poisoned manifest")
        wait_for(
            lambda: all(m.manifest_requests >= 2 for m in masters.values()),
            30,
            "every peer to retry",
        )
        for (daemon, local, _), name in zip(cluster.peers, POISON, strict=True):
            assert daemon.running, name
            assert _snapshot(local) <= {".sift", ".sift/state", ".sift/tmp"} | {
                p for p in _snapshot(local) if p.startswith(".sift/state/")
            }, (name, _snapshot(local))
            refusals = [
                line
                for line in daemon.log_text().splitlines()
                if "sync failed" in line and "ERROR" in line
            ]
            assert len(refusals) == 1, (name, refusals)  # once, however often it is retried
            assert "Traceback" not in daemon.log_text(), name
        assert all(m.chunk_requests == 0 for m in masters.values())
        after = _snapshot(tmp_path)
        new = {p for p in after - before if not p.startswith("c/")}
        assert new == set(), new  # nothing anywhere outside the cluster directory
        assert not Path("/tmp/sift-escaped.txt").exists()
    finally:
        cluster.close()
        for master in masters.values():
            loop_thread.call(master.stop())


def test_a_delta_that_does_not_fit_our_manifest_falls_back_to_the_whole_one(tmp_path, loop_thread):
    """A delta whose file edit names another version of the file than the one we hold (a master
    that lost its state and reused version numbers) is not applied: the peer fetches the whole
    manifest and converges to the master's real content."""
    psk = "delta-test-key"
    v1 = os.urandom(12_000_000)
    v2 = bytearray(v1)
    v2[6_000_000] ^= 0xFF
    chunks: dict[bytes, bytes] = {}

    def entry(data: bytes, mtime: int) -> FileEntry:
        cut = chunk_bytes(data, DEFAULT_PARAMS)
        offset = 0
        for c in cut:
            chunks[c.hash] = data[offset : offset + c.length]
            offset += c.length
        return FileEntry.build("big.bin", len(data), 0o644, mtime, cut)

    e1, e2 = entry(v1, 10**18), entry(bytes(v2), 2 * 10**18)
    m1 = Manifest.build(1, DEFAULT_PARAMS, [e1])
    m2 = Manifest.build(2, DEFAULT_PARAMS, [e2])
    # The delta edits a third version of big.bin the peer never had.
    v3 = bytearray(v1)
    v3[2_000_000] ^= 0xFF
    other = Manifest.build(1, DEFAULT_PARAMS, [entry(bytes(v3), 5)])
    delta = make_delta(other, m2)
    assert isinstance(delta.upserts[0], FileEdit)  # a small edit of that other version
    bad_delta = encode_delta(delta)
    master = loop_thread.call(
        ScriptedMaster(
            psk.encode(), {1: encode_manifest(m1), 2: encode_manifest(m2)}, chunks
        ).start()
    )
    cluster = Cluster(tmp_path / "c", psk=psk)
    cluster.master_port = master.port
    try:
        peer = cluster.add_peer()
        local = cluster.peers[0][1]
        wait_for(lambda: read_or_none(local / "big.bin") == v1, 30, "version 1 on the peer")
        master.delta = (1, bad_delta)
        loop_thread.call(master.publish(2))
        wait_for(lambda: read_or_none(local / "big.bin") == bytes(v2), 30, "version 2 on the peer")
        assert master.requests[-2:] == [1, None]  # the delta, then the whole manifest
        assert "cannot apply the master's delta" in peer.log_text()
        assert "another version of it" in peer.log_text()
    finally:
        cluster.close()
        loop_thread.call(master.stop())
