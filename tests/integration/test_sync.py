"""End to end: a real master and real peers on 127.0.0.1 keep real directories identical."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest

from tests.integration.cluster import PSK, tree_state, wait_for

MiB = 1024 * 1024


def make_tree(root, big_mib: int = 64) -> None:
    rng = random.Random(1)
    (root / "runs" / "run-001" / "spectra").mkdir(parents=True)
    (root / "runs" / "run-002").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "empty.dat").write_bytes(b"")
    (root / "metadata.json").write_text('{"experiment": "test"}\n')
    for i in range(20):
        (root / "runs" / "run-001" / "spectra" / f"s{i:03d}.csv").write_text(
            "".join(f"{j},{rng.random():.6f}\n" for j in range(100 + i))
        )
    script = root / "runs" / "analyse.sh"
    script.write_text("#!/bin/sh\necho analysing\n")
    script.chmod(0o755)
    os.symlink("runs/run-001/spectra/s000.csv", root / "latest.csv")
    with open(root / "runs" / "run-002" / "frames.bin", "wb") as f:
        for _ in range(big_mib):
            f.write(rng.randbytes(MiB))


def run_sift(*args: str) -> subprocess.CompletedProcess:
    """The real command line, as an operator would type it."""
    return subprocess.run(
        [sys.executable, "-m", "sift", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def age_tree(root, seconds: int = 3600) -> None:
    """Backdate every file: files modified within the last seconds are rehashed on each scan
    (their mtime could still tick without a visible change), so a restart test needs old ones."""
    past = os.stat(root).st_mtime_ns - seconds * 10**9
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(dirpath, name), ns=(past, past))


def test_master_and_three_peers_converge_byte_identical(cluster):
    make_tree(cluster.master_dir)
    cluster.start_master()
    for _ in range(3):
        cluster.add_peer()
    state = cluster.wait_converged(timeout=120)
    assert state["latest.csv"] == ("link", "runs/run-001/spectra/s000.csv")
    assert state["empty-dir"][0] == "dir"
    assert state["runs/analyse.sh"][2] == 0o755
    status = cluster.status()
    assert status["connected_peers"] == 3
    assert all(p["complete"] for p in status["peers"])
    data = sum(f["size"] for f in status["file_list"])
    # Three peers at once: the master sends each chunk about once, peers trade the rest.
    assert status["bytes_sent"] < 1.5 * data, (status["bytes_sent"], data)

    # A small edit in the middle of the large file moves only a few chunks.
    before = {i: cluster.peer_status(i)["last_sync"] for i in range(3)}
    sent_before = cluster.status()["bytes_sent"]
    big = cluster.master_dir / "runs" / "run-002" / "frames.bin"
    with open(big, "r+b") as f:
        f.seek(32 * MiB)
        f.write(b"edited!")
    cluster.wait_converged(timeout=60)
    moved = 0
    for i in range(3):
        after = cluster.peer_status(i)["last_sync"]
        assert after != before[i]
        moved += after["bytes_from_master"] + after["bytes_from_peers"]
    assert moved <= 3 * 4 * 256 * 1024, moved  # at most ~4 max-size chunks per peer
    assert cluster.status()["bytes_sent"] - sent_before <= 4 * 256 * 1024


def test_renames_deletions_and_permission_changes_propagate(cluster):
    make_tree(cluster.master_dir, big_mib=4)
    cluster.start_master()
    cluster.add_peer()
    cluster.wait_converged()
    sent_before = cluster.status()["bytes_sent"]
    root = cluster.master_dir
    os.rename(root / "runs" / "run-002" / "frames.bin", root / "runs" / "frames-moved.bin")
    os.remove(root / "metadata.json")
    (root / "runs" / "run-001" / "spectra" / "s001.csv").chmod(0o600)
    (root / "empty-dir").rmdir()
    (root / "new-dir" / "nested").mkdir(parents=True)
    os.remove(root / "latest.csv")
    os.symlink("runs/analyse.sh", root / "latest.csv")
    state = cluster.wait_converged()
    assert "metadata.json" not in state
    assert "empty-dir" not in state
    assert state["runs/run-001/spectra/s001.csv"][2] == 0o600
    assert state["latest.csv"] == ("link", "runs/analyse.sh")
    # The rename cost no transfer: the peer copied its own chunks.
    last = cluster.peer_status(0)["last_sync"]
    assert last["bytes_copied_locally"] >= 4 * MiB
    assert cluster.status()["bytes_sent"] - sent_before < 64 * 1024


def test_restarts_download_nothing_and_versions_keep_rising(cluster):
    make_tree(cluster.master_dir, big_mib=8)
    age_tree(cluster.master_dir)
    cluster.start_master()
    cluster.add_peer()
    cluster.wait_converged()
    v1 = cluster.status()["manifest_version"]

    peer, _, _ = cluster.peers[0]
    assert peer.stop() == 0
    cluster.master.stop()
    cluster.start_master()
    assert cluster.status()["manifest_version"] == v1  # nothing changed: no new version
    peer.start()
    cluster.wait_converged()
    assert cluster.status()["bytes_sent"] == 0  # the restarted peer re-downloaded nothing
    assert "scan: hashed" not in cluster.master.log_text().split("master listening")[-1]

    (cluster.master_dir / "new.txt").write_text("after restart\n")
    cluster.wait_converged()
    assert cluster.status()["manifest_version"] > v1


def test_wrong_key_is_refused_and_nothing_is_written(cluster):
    make_tree(cluster.master_dir, big_mib=1)
    cluster.start_master()
    intruder = cluster.add_peer(psk="not-the-key")
    _, local, _ = cluster.peers[0]
    wait_for(lambda: "refused" in intruder.log_text(), 30, "the refusal in the peer log")
    # The master writes its line after sending the refusal: the peer may log first.
    wait_for(
        lambda: "wrong pre-shared key" in cluster.master.log_text(), 10, "the master's log line"
    )
    assert tree_state(local) == {}
    result = run_sift("status", "--master", f"127.0.0.1:{cluster.master_port}", "--psk", "nope")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "refused the key" in result.stderr


def test_peer_started_before_master_converges(cluster):
    make_tree(cluster.master_dir, big_mib=2)
    cluster.add_peer()
    _, local, _ = cluster.peers[0]
    wait_for((local / ".sift").exists, 30, "the peer to start")
    cluster.start_master()
    cluster.wait_converged()


def test_late_peer_gets_most_data_from_other_peers(cluster):
    make_tree(cluster.master_dir, big_mib=24)
    cluster.start_master()
    cluster.add_peer()
    cluster.add_peer()
    cluster.wait_converged(timeout=120)
    status = cluster.status()
    data = sum(f["size"] for f in status["file_list"])
    cluster.add_peer()
    cluster.wait_converged(timeout=120)
    late = next(
        p for p in cluster.status()["peers"] if p["addr"].endswith(str(cluster.peers[2][2]))
    )
    assert late["bytes_from_master"] < data / 3, (late["bytes_from_master"], data)
    assert cluster.peer_status(2)["last_sync"]["bytes_from_peers"] > data / 2


@pytest.mark.parametrize(
    ("contents", "fragment"),
    [
        ('master_addr = "127.0.0.1:1"\nlocal_dir = "x"\n', "psk"),
        ('master_addr = "nonsense"\npsk = "k"\nlocal_dir = "x"\n', "master_addr"),
        ('master_addr = "127.0.0.1:1"\npsk = "k"\nlocal_dir = "x"\nbind_adr = "x"\n', "bind_addr"),
    ],
)
def test_bad_peer_config_gives_one_line_and_exit_2(tmp_path, contents, fragment):
    cfg = tmp_path / "peer.toml"
    cfg.write_text(contents)
    result = run_sift("peer", "start", "--config", str(cfg))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr


def test_non_empty_local_dir_is_refused_without_adopt(cluster):
    cluster.start_master()
    cluster.add_peer(start=False)
    daemon, local, _ = cluster.peers[0]
    local.mkdir(parents=True)
    (local / "precious.txt").write_text("not sift's")
    result = run_sift("peer", "start", "--config", str(daemon.config))
    assert result.returncode == 2
    assert "adopt = true" in result.stderr
    assert (local / "precious.txt").read_text() == "not sift's"


def test_port_in_use_is_a_one_line_error(cluster, tmp_path):
    cluster.start_master()
    # Same port, its own state: the bind fails.
    text = cluster.master.config.read_text()
    other = tmp_path / "other.toml"
    other.write_text(
        text.replace(str(cluster.base / "master" / "state"), str(tmp_path / "other-state"))
    )
    result = run_sift("master", "start", "--config", str(other))
    assert result.returncode == 2
    assert "cannot listen" in result.stderr
    assert PSK not in result.stderr
    assert result.stderr.count("sift: ") == 1


def test_second_daemon_on_the_same_control_socket_is_refused(cluster):
    cluster.start_master()
    result = run_sift("master", "start", "--config", str(cluster.master.config))
    assert result.returncode == 2
    assert "is in use by another running daemon" in result.stderr
    assert result.stderr.count("sift: ") == 1
    # The first daemon still answers on its socket.
    assert cluster.status()["manifest_version"] >= 1


def test_adopt_reuses_matching_data_and_mirrors_the_master(cluster):
    make_tree(cluster.master_dir, big_mib=8)
    cluster.start_master()
    cluster.add_peer(start=False, adopt=True)
    daemon, local, _ = cluster.peers[0]
    # An old copy of the dataset plus a stray file the master does not have.
    shutil.copytree(cluster.master_dir, local, symlinks=True)
    (local / "stray.txt").write_text("not on the master\n")
    daemon.start()
    state = cluster.wait_converged()
    assert "stray.txt" not in state
    # Matching chunks were reused from the adopted files, not downloaded again.
    assert cluster.status()["bytes_sent"] < 64 * 1024


def test_master_serves_a_read_only_watched_dir(cluster):
    make_tree(cluster.master_dir, big_mib=2)
    for dirpath, _dirnames, filenames in os.walk(cluster.master_dir):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
    os.chmod(cluster.master_dir, 0o555)
    try:
        cluster.start_master()
        cluster.add_peer()
        cluster.wait_converged()
        assert not (cluster.master_dir / ".sift").exists()
    finally:
        os.chmod(cluster.master_dir, 0o755)
