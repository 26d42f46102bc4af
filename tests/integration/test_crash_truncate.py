"""Files truncated under the master while it chunks and serves them.

With the old mmap-based chunker, touching a page past the new end of a truncated file raised
SIGBUS and killed the master (Python cannot catch it). Now a short read marks the file as
changing and it is rescanned; the master lives, and peers converge on the final content.
"""

from __future__ import annotations

import os
import random
import time

from tests.integration.cluster import Cluster, wait_for

MiB = 1 << 20
BIG = 48 * MiB


def test_master_survives_files_truncated_under_the_scanner(cluster: Cluster):
    victims = [cluster.master_dir / f"shrinking{i}.bin" for i in range(3)]
    for path in victims:
        with open(path, "wb") as f:
            f.truncate(BIG)
    (cluster.master_dir / "steady.bin").write_bytes(os.urandom(300_000))
    cluster.start_master(rescan_interval=1)
    cluster.add_peer()
    rng = random.Random(7)
    master = cluster.master
    assert master is not None
    # Grow and shrink the files for three seconds: every change wakes the scanner (watcher and a
    # 1 s periodic rescan) and the peer's chunk requests, and many land mid-read.
    deadline = time.monotonic() + 3
    flips = 0
    while time.monotonic() < deadline:
        path = rng.choice(victims)
        os.truncate(path, BIG if rng.random() < 0.5 else rng.randrange(0, 64 * 1024))
        flips += 1
        time.sleep(rng.uniform(0, 0.03))
        assert master.running, f"the master died after {flips} truncations"
    final = {path: os.urandom(rng.randrange(100_000, 400_000)) for path in victims}
    for path, data in final.items():
        path.write_bytes(data)
    tree = cluster.wait_converged(60)
    assert master.running
    assert "SIGBUS" not in master.log_text()
    for path, data in final.items():
        assert tree[path.name][0] == "file"
        assert (cluster.peers[0][1] / path.name).read_bytes() == data
    assert wait_for(lambda: master.proc.poll() is None, 1)
