"""kill -9 in the middle of syncs. A checker polls the peers' files all the while: each file is
absent, the old content or the new content, never torn. Peers converge after restarts, temp files
are reused or cleaned up, peers keep serving while the master is down, and versions never go
backwards."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
import time
from pathlib import Path

from sift.core.chunker import chunk_file
from sift.net.channel import connect
from sift.protocol.messages import ChunkRequest, ChunkResponse
from tests.integration.cluster import Cluster, wait_for
from tests.integration.faultproxy import FaultProxy


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class TornChecker:
    """Polls every file under the given roots until stopped. A file's content must be one of
    the versions it is allowed to have; anything else (a torn or half-written file, or a file no
    version has) is a violation."""

    def __init__(self, roots: list[Path], allowed: dict[str, set[str]]):
        self.roots = roots
        self.allowed = allowed
        self.violations: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="torn-checker", daemon=True)

    def start(self) -> TornChecker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for root in self.roots:
                self._check(root)
            self._stop.wait(0.01)

    def _check(self, root: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            if Path(dirpath) == root:
                dirnames[:] = [d for d in dirnames if d != ".sift"]
            for name in filenames:
                path = Path(dirpath) / name
                rel = str(path.relative_to(root))
                try:
                    data = path.read_bytes()
                except (FileNotFoundError, IsADirectoryError):
                    continue  # replaced or removed between listing and reading: fine
                self.reads += 1
                if _digest(data) not in self.allowed.get(rel, set()):
                    self.violations.append(f"{root.name}/{rel}: {len(data)} bytes, torn")


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _versions(*trees: dict[str, bytes]) -> dict[str, set[str]]:
    allowed: dict[str, set[str]] = {}
    for tree in trees:
        for rel, data in tree.items():
            allowed.setdefault(rel, set()).add(_digest(data))
    return allowed


def _datasets(rng: random.Random) -> tuple[dict[str, bytes], dict[str, bytes]]:
    v1 = {f"d/f{i}.bin": rng.randbytes(300_000) for i in range(6)}
    v1["small.txt"] = b"first version\n"
    v2 = {rel: rng.randbytes(500_000) for rel in v1 if rel != "small.txt"}
    v2 |= {f"d/new{i}.bin": rng.randbytes(400_000) for i in range(4)}
    return v1, v2


def _apply(root: Path, old: dict[str, bytes], new: dict[str, bytes]) -> None:
    for rel in old.keys() - new.keys():
        (root / rel).unlink()
    _write(root, new)


def _part_bytes(local: Path) -> int:
    """Bytes really written into part files: their blocks are reserved up front (fallocate), so
    count the 4 KiB blocks that hold something other than zeros (the test data is random)."""
    total = 0
    zero = bytes(4096)
    for path in (local / ".sift" / "tmp").glob("*.part"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        total += sum(4096 for i in range(0, len(data), 4096) if data[i : i + 4096] != zero)
    return total


def test_peer_killed_at_random_points_converges_without_torn_files(cluster: Cluster):
    rng = random.Random(20261126)
    v1, v2 = _datasets(rng)
    _write(cluster.master_dir, v1)
    cluster.start_master()
    with FaultProxy(("127.0.0.1", cluster.master_port)) as proxy:
        peer = cluster.add_peer(master_addr=proxy.addr)
        local = cluster.peers[0][1]
        cluster.wait_converged()
        version1 = cluster.status()["manifest_version"]

        # 1. Killed at random points (fetching, committing, or already done), four times.
        proxy.throttle(3_000_000)  # ~4.6 MB of changes take a second or two
        checker = TornChecker([local], _versions(v1, v2)).start()
        try:
            _apply(cluster.master_dir, v1, v2)
            wait_for(lambda: cluster.status()["manifest_version"] > version1, 20, "v2")
            kills = 0
            for _ in range(4):
                time.sleep(rng.uniform(0.2, 1.5))
                if peer.running:
                    peer.kill()  # SIGKILL
                    kills += 1
                peer.start()
            tree = cluster.wait_converged(60)
        finally:
            checker.stop()
        assert checker.violations == []
        assert checker.reads > 20, "the checker hardly looked"
        assert kills == 4
        assert {rel for rel, st in tree.items() if st[0] == "file"} == set(v2)
        assert list((local / ".sift" / "tmp").iterdir()) == []

        # 2. Killed once a megabyte sits in part files: the restart keeps it and fetches the rest.
        # Over 4 MiB, so it takes several requests, and responses arrive one after the other.
        v3 = {f"big{i}.bin": rng.randbytes(1_000_000) for i in range(10)}
        version2 = cluster.status()["manifest_version"]
        proxy.throttle(4_000_000)
        _write(cluster.master_dir, v3)
        wait_for(lambda: cluster.status()["manifest_version"] > version2, 20, "v3")
        written = wait_for(lambda: _part_bytes(local) >= 1_000_000 and _part_bytes(local), 30)
        peer.kill()
        proxy.heal()
        peer.start()
        cluster.wait_converged(60)
    last = cluster.peer_status(0)["last_sync"]
    fetched = last["bytes_from_master"] + last["bytes_from_peers"]
    assert fetched <= sum(map(len, v3.values())) - written + 300_000, (fetched, written)
    assert list((local / ".sift" / "tmp").iterdir()) == []


def _chunk_from_peer(port: int, path: Path) -> bool:
    """Ask the peer listening on `port` for the first chunk of the file at `path` (which it
    holds); True if it answers with bytes that match."""
    digest = chunk_file(path).chunks[0].hash

    async def ask() -> bool:
        ch = await connect("127.0.0.1", port, b"integration-test-key", "checker")
        reading = asyncio.ensure_future(ch.serve(lambda c, m: asyncio.sleep(0)))
        try:
            response = await ch.request(ChunkRequest(0, (digest,), ()), timeout=10)
        finally:
            await ch.close()
            await reading
        assert isinstance(response, ChunkResponse)
        return [h for h, _ in response.chunks] == [digest]

    return asyncio.run(ask())


def test_master_killed_mid_update_peers_keep_files_serve_and_converge(cluster: Cluster):
    rng = random.Random(11)
    v1, v2 = _datasets(rng)
    _write(cluster.master_dir, v1)
    cluster.start_master()
    with FaultProxy(("127.0.0.1", cluster.master_port)) as proxy:
        cluster.add_peer(master_addr=proxy.addr)
        cluster.add_peer(master_addr=proxy.addr)
        cluster.wait_converged()
        version1 = cluster.status()["manifest_version"]

        seen: dict[str, list[int]] = {"master": [], "peer1": [], "peer2": []}
        stop_polling = threading.Event()

        def poll_versions() -> None:
            while not stop_polling.is_set():
                st = cluster.try_status()
                if st:
                    seen["master"].append(st["manifest_version"])
                for i, name in enumerate(("peer1", "peer2")):
                    st = cluster.try_status(cluster.peers[i][2])
                    if st:
                        seen[name].append(st["synced_version"])
                stop_polling.wait(0.05)

        poller = threading.Thread(target=poll_versions, daemon=True)
        checker = TornChecker([p[1] for p in cluster.peers], _versions(v1, v2)).start()
        poller.start()
        try:
            proxy.throttle(1_000_000)
            _apply(cluster.master_dir, v1, v2)
            wait_for(lambda: cluster.status()["manifest_version"] > version1, 20, "v2")
            version2 = cluster.status()["manifest_version"]
            wait_for(
                lambda: any((cluster.try_status(p[2]) or {}).get("syncing") for p in cluster.peers),
                20,
                "a peer to start on the update",
            )
            cluster.master.kill()  # SIGKILL, mid-update
            proxy.cut()  # and what was still on the wire is lost, as when its host dies
            mid_sync = [cluster.peer_status(i)["synced_version"] for i in range(2)]
            assert version1 in mid_sync, "both peers had finished: the kill came too late"

            # Peers stay up, keep their complete files, and serve each other and anyone else.
            wait_for(
                lambda: not any(cluster.peer_status(i)["master_connected"] for i in range(2)),
                20,
                "the peers to notice the master is gone",
            )
            for i, (daemon, local, port) in enumerate(cluster.peers):
                assert daemon.running, f"peer{i + 1} died with the master"
                st = cluster.peer_status(i)
                assert st["synced_version"] in (version1, version2)
                held = next(p for p in sorted((local / "d").iterdir()) if p.is_file())
                assert _chunk_from_peer(port, held), f"peer{i + 1} stopped serving"

            proxy.heal()
            cluster.master.start()
            wait_for(lambda: cluster.try_status() is not None, 30, "the master to come back")
            assert cluster.status()["manifest_version"] >= version2
            tree = cluster.wait_converged(60)

            # Killed again with nothing changed: the same version comes back, and peers already
            # at it reconnect without a hitch (they used to get an internal error, forever).
            cluster.master.kill()
            reconnects = [d.log_text().count("connected to master") for d, _, _ in cluster.peers]
            cluster.master.start()
            wait_for(lambda: cluster.try_status() is not None, 30, "the master to come back")
            wait_for(
                lambda: all(
                    d.log_text().count("connected to master") > n
                    for (d, _, _), n in zip(cluster.peers, reconnects, strict=True)
                ),
                30,
                "the peers to reconnect",
            )
            assert cluster.status()["manifest_version"] == version2
            cluster.wait_converged(30)
        finally:
            stop_polling.set()
            poller.join(10)
            checker.stop()
    assert checker.violations == []
    assert {rel for rel, st in tree.items() if st[0] == "file"} == set(v2)
    for daemon, _, _ in cluster.peers:
        assert "delta must move forward" not in daemon.log_text()
    for name, versions in seen.items():
        assert versions, f"never saw {name}'s version"
        assert versions == sorted(versions), f"{name}'s version went backwards: {versions}"
