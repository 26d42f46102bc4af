"""Load and churn: 16 peers against one master on 127.0.0.1, then a time-bounded phase where peers
join, leave, get kill -9'ed and come back while files change every second. At the end every
peer matches the master byte for byte, no daemon logged an error or a traceback, and the master's
memory stayed bounded."""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster, tree_state

PEERS = 16
MAX_PEERS = 20  # joins during the churn add up to this many
CHURN_SECONDS = 25.0
TICK = 1.0
KiB = 1024
MiB = 1024 * KiB
MASTER_HWM_LIMIT_KB = 150 * 1024  # the BRIEF's bound for master memory (VmHWM)
MASTER_GROWTH_LIMIT_KB = 32 * 1024  # RSS growth over the churn phase (measured: under 3 MB)

# Log lines that mean something went wrong. Warnings (a killed peer's connection dropping in the
# middle of a request) are expected under churn; errors and tracebacks are not.
BAD_LINE = re.compile(r" (ERROR|CRITICAL) |Traceback")


def make_dataset(root: Path, rng: random.Random) -> None:
    (root / "frames").mkdir()
    (root / "meta").mkdir()
    for i in range(3):
        (root / "frames" / f"block{i}.bin").write_bytes(rng.randbytes(2 * MiB))
    for i in range(40):
        (root / "meta" / f"m{i:03d}.json").write_bytes(rng.randbytes(rng.randrange(1, 32 * KiB)))


def change_files(root: Path, rng: random.Random, tick: int) -> None:
    """One second's worth of changes: rewrites, an in-place edit of a large file, and files
    appearing and disappearing."""
    metas = sorted((root / "meta").iterdir())
    for path in rng.sample(metas, min(2, len(metas))):
        path.write_bytes(rng.randbytes(rng.randrange(1, 32 * KiB)))
    block = root / "frames" / f"block{tick % 3}.bin"
    with open(block, "r+b") as f:
        f.seek(rng.randrange(0, 2 * MiB - 4 * KiB))
        f.write(rng.randbytes(4 * KiB))
    if tick % 2 == 0:
        (root / "meta" / f"new{tick:03d}.json").write_bytes(rng.randbytes(8 * KiB))
    if tick % 3 == 0 and len(metas) > 10:
        os.remove(rng.choice(metas))


def master_memory_kb(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values


def bad_log_lines(cluster: Cluster) -> list[str]:
    daemons = [cluster.master] + [d for d, _, _ in cluster.peers]
    bad = []
    for daemon in daemons:
        bad += [f"{daemon.name}: {line}" for line in daemon.log_text().splitlines()
                if BAD_LINE.search(line)]  # fmt: skip
    return bad


@pytest.mark.slow
def test_sixteen_peers_and_churn_converge_without_errors(cluster):
    rng = random.Random(2026)
    t0 = time.monotonic()
    make_dataset(cluster.master_dir, rng)
    cluster.start_master()
    for _ in range(PEERS):
        cluster.add_peer()
    cluster.wait_converged(timeout=90)
    assert cluster.status()["connected_peers"] == PEERS
    settled = master_memory_kb(cluster.master.proc.pid)
    t_first = time.monotonic() - t0

    # Churn: one file change and one peer event per tick, for a bounded time.
    actions = {"stop": 0, "kill": 0, "restart": 0, "join": 0}
    deadline = time.monotonic() + CHURN_SECONDS
    tick = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        change_files(cluster.master_dir, rng, tick)
        live = [d for d, _, _ in cluster.peers if d.running]
        down = [d for d, _, _ in cluster.peers if not d.running]
        event = ("stop", "kill", "restart", "join")[tick % 4]
        if event == "join" and len(cluster.peers) >= MAX_PEERS:
            event = "restart"
        if event in ("stop", "kill") and len(live) > PEERS // 2:
            victim = rng.choice(live)
            assert victim.stop() == 0 if event == "stop" else victim.kill() is None
            actions[event] += 1
        elif event == "restart" and down:
            rng.choice(down).start()
            actions["restart"] += 1
        elif event == "join":
            cluster.add_peer()
            actions["join"] += 1
        tick += 1
        time.sleep(max(0.0, TICK - (time.monotonic() - started)))
    assert min(actions.values()) >= 3, actions
    t_churn = time.monotonic() - t0

    # Everyone comes back, and every peer ends up identical to the master.
    for daemon, _, _ in cluster.peers:
        if not daemon.running:
            daemon.start()
    state = cluster.wait_converged(timeout=60)
    t_end = time.monotonic() - t0
    assert len(state) > 40
    assert cluster.status()["connected_peers"] == len(cluster.peers)
    for _, local, _ in cluster.peers:
        assert tree_state(local) == tree_state(cluster.master_dir)

    assert bad_log_lines(cluster) == []
    memory = master_memory_kb(cluster.master.proc.pid)
    print(
        f"first sync of {PEERS} peers done at {t_first:.1f}s, churn at {t_churn:.1f}s, "
        f"all converged at {t_end:.1f}s; "
        f"master memory after the first sync {settled}, after churn {memory}; {actions}"
    )
    assert memory["VmHWM"] < MASTER_HWM_LIMIT_KB, memory
    # Churn must not leave anything behind in the master (sessions, holdings, buffers).
    assert memory["VmRSS"] - settled["VmRSS"] < MASTER_GROWTH_LIMIT_KB, (settled, memory)
