"""Benchmark: initial sync of a dataset to N peers, and a 1-byte edit's time to convergence.

    python -m bench.sync [--size-mib 256] [--peers 4] [--repeat 3] [--json out.json]

Real daemons on 127.0.0.1 (the integration harness). Reports, per run and as medians: wall time
to all peers in sync, master bytes sent / data size, and seconds from a 1-byte edit in the middle
of the large file to every peer holding the new version. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from tests.integration.cluster import Cluster, tree_state, wait_for

MiB = 1024 * 1024


def make_dataset(root: Path, size_mib: int, seed: int = 3) -> int:
    rng = random.Random(seed)
    small_total = min(32, size_mib // 8) * MiB
    big = size_mib * MiB - small_total
    (root / "small").mkdir(parents=True)
    count = small_total // (32 * 1024)
    for i in range(count):
        (root / "small" / f"f{i:05d}.dat").write_bytes(rng.randbytes(32 * 1024))
    with open(root / "large.bin", "wb") as f:
        left = big
        while left:
            n = min(left, 8 * MiB)
            f.write(rng.randbytes(n))
            left -= n
    return size_mib * MiB


def all_synced(cluster: Cluster, version: int) -> bool:
    for i in range(len(cluster.peers)):
        st = cluster.try_status(cluster.peers[i][2])
        if st is None or st["synced_version"] < version:
            return False
    return True


def one_run(size_mib: int, peers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="sift-bench-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            data = make_dataset(cluster.master_dir, size_mib)
            cluster.start_master()
            version = cluster.status()["manifest_version"]
            started = time.monotonic()
            for _ in range(peers):
                cluster.add_peer()
            wait_for(lambda: all_synced(cluster, version), 600, "initial sync")
            initial = time.monotonic() - started
            sent = cluster.status()["bytes_sent"]
            want = tree_state(cluster.master_dir)
            assert all(tree_state(p[1]) == want for p in cluster.peers), "mirrors differ"

            with open(cluster.master_dir / "large.bin", "r+b") as f:
                f.seek((data // 2) // 2)
                byte = f.read(1)
                f.seek(-1, 1)
                f.write(bytes([byte[0] ^ 0xFF]))
            edited = time.monotonic()
            wait_for(lambda: cluster.status()["manifest_version"] > version, 60, "new version")
            new_version = cluster.status()["manifest_version"]
            wait_for(lambda: all_synced(cluster, new_version), 60, "edit sync")
            edit_seconds = time.monotonic() - edited
            edit_sent = cluster.status()["bytes_sent"] - sent
        finally:
            cluster.close()
    return {
        "data_bytes": data,
        "initial_seconds": initial,
        "master_sent_bytes": sent,
        "master_sent_ratio": sent / data,
        "edit_to_converged_seconds": edit_seconds,
        "edit_master_sent_bytes": edit_sent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = [one_run(args.size_mib, args.peers) for _ in range(args.repeat)]
    keys = [
        "initial_seconds",
        "master_sent_ratio",
        "edit_to_converged_seconds",
        "edit_master_sent_bytes",
    ]
    print(f"sift: {args.size_mib} MiB to {args.peers} peers, {args.repeat} run(s)")
    print(f"{'metric':<28}{'median':>12}{'min':>12}{'max':>12}")
    summary = {}
    for key in keys:
        values = [r[key] for r in runs]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        print(f"{key:<28}{summary[key]['median']:>12.3f}{min(values):>12.3f}{max(values):>12.3f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "runs": runs, "summary": summary},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
