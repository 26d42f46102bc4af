"""A peer's disk fills up mid-sync: one clear error, the old files stay intact, and the sync
resumes by itself once space returns. Run on a real 4 MiB tmpfs where mounting is allowed, and
always with ENOSPC injected at the write layer (os.pwrite/os.write) of a real peer daemon."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster, Daemon, tree_state, wait_for

LAUNCHER = Path(__file__).with_name("enospc_launcher.py")


class InjectedPeer(Daemon):
    """A real peer daemon whose file writes fail with ENOSPC while `flag` exists."""

    def __init__(self, base: Daemon, flag: Path):
        super().__init__(base.name, base.role, base.config, base.log)
        self.flag = flag

    def start(self) -> Daemon:
        log = open(self.log, "ab")  # noqa: SIM115 (the child owns it)
        argv = [sys.executable, str(LAUNCHER), str(self.flag), "--log-level", "debug"]
        argv += [self.role, "start", "--config", str(self.config)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).write_bytes(data)


def _disk_full_scenario(
    cluster: Cluster, local: Path, peer: Daemon, fill: Callable[[], None], free: Callable[[], None]
) -> None:
    v1 = {f"f{i}.bin": os.urandom(100_000) for i in range(3)}
    _write(cluster.master_dir, v1)
    cluster.start_master()
    peer.start()
    cluster.wait_converged(60)
    version1 = cluster.status()["manifest_version"]

    fill()
    v2 = {f"f{i}.bin": os.urandom(300_000) for i in range(3)}
    v2["new.bin"] = os.urandom(500_000)
    _write(cluster.master_dir, v2)
    wait_for(lambda: cluster.status()["manifest_version"] > version1, 20, "the master's v2")
    wait_for(lambda: "No space left on device" in peer.log_text(), 30, "the ENOSPC error")
    # A retry later (logged at debug level): still one error line, the peer alive, the old files
    # intact.
    wait_for(
        lambda: peer.log_text().count("sync failed writing") >= 2, 20, "the peer to retry the sync"
    )
    assert peer.running
    errors = [
        line
        for line in peer.log_text().splitlines()
        if ("ERROR" in line or "CRITICAL" in line) and "sync" in line
    ]
    assert len(errors) == 1, errors
    assert "No space left on device" in errors[0]
    assert str(local) in errors[0]
    assert "Traceback" not in peer.log_text()
    for name, data in v1.items():
        assert (local / name).read_bytes() == data, f"{name} was damaged by the full disk"
    assert not (local / "new.bin").exists()
    status = cluster.peer_status(0)
    assert status["synced_version"] == version1
    assert "No space left on device" in (status.get("last_error") or "")

    free()
    cluster.wait_converged(30)
    for name, data in v2.items():
        assert (local / name).read_bytes() == data
    assert cluster.peer_status(0).get("last_error") is None
    assert "resumed" in peer.log_text()
    events = cluster.events(cluster.peer_socket(0))
    failed = [e for e in events if e["type"] == "sync.failed"]
    assert len(failed) == 1  # once per problem, not per retry
    assert "No space left on device" in failed[0]["data"]["error"]
    assert any(e["type"] == "sync.resumed" for e in events)


def test_enospc_injected_at_the_write_layer(cluster: Cluster, tmp_path: Path):
    flag = tmp_path / "disk-is-full"
    base = cluster.add_peer(start=False)
    peer = InjectedPeer(base, flag)
    cluster.peers[0] = (peer, cluster.peers[0][1], cluster.peers[0][2])
    _disk_full_scenario(
        cluster,
        cluster.peers[0][1],
        peer,
        fill=flag.touch,
        free=flag.unlink,
    )


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=10)


def test_enospc_on_a_real_small_tmpfs(cluster: Cluster, small_tmpfs: Path):
    local = small_tmpfs / "data"
    cluster.add_peer(start=False, local_dir=str(local))
    peer = cluster.peers[0][0]
    cluster.peers[0] = (peer, local, cluster.peers[0][2])
    filler = small_tmpfs / "filler"

    def fill() -> None:
        st = os.statvfs(small_tmpfs)
        room = st.f_bavail * st.f_frsize
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, room - 64 * 1024))  # leave 64 KiB: less than one new file

    _disk_full_scenario(cluster, local, peer, fill=fill, free=filler.unlink)
    assert tree_state(local) == tree_state(cluster.master_dir)
