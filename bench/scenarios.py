"""The scenarios of the benchmark suite. Each returns a result dict: per tool, the metrics of
every run; the runner summarises them (median, min, max), takes sift/competitor ratios per run,
and checks the targets.

    a  initial sync of a mixed dataset to N peers
    b  the same with the source's uplink capped by a shaping proxy
    c  a one-byte edit in the middle of a large file: bytes moved, seconds to converge
    d  many small files to one peer
    e  master scan throughput
    f  master memory at two dataset sizes
    g  N peers joining at once: source egress
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import datasets
from bench.common import (
    POLL,
    BenchError,
    MiB,
    check_mirrors,
    read_byte,
    status_kib,
    tcp_sent_by_port,
    wait_until,
)
from bench.tools import TOOLS, Deployment, SiftDeployment
from bench.trash import Trash
from sift.core.chunk import DEFAULT_PARAMS
from sift.core.chunker import chunk_file


@dataclass
class Settings:
    workdir: Path
    repeat: int = 3
    tools: tuple[str, ...] = ("sift", "rsync", "syncthing")
    size_mib: int = 1024  # (a), (c), (e)
    peers: int = 4
    shaped_size_mib: int = 256  # (b)
    rate: float = 50e6  # (b) bytes/s
    small_files: int = 20_000  # (d)
    small_size: int = 4096
    rss_sizes_mib: tuple[int, ...] = (1024, 8192)  # (f)
    join_peers: int = 8  # (g)
    join_size_mib: int = 256
    timeout: float = 900.0
    keep: bool = False  # keep each run's directory (logs, mirrors) for inspection
    log: Callable[[str], None] = print
    _datasets: dict = field(default_factory=dict)
    trash: Trash = field(init=False)

    def __post_init__(self) -> None:
        self.trash = Trash(self.workdir / "trash", self.log)

    def dataset(self, key: str, make: Callable[[Path], datasets.Dataset]) -> datasets.Dataset:
        """Generate each dataset once per suite; every tool and run reads the same bytes."""
        if key not in self._datasets:
            root = self.workdir / "data" / key
            self.trash.put(root)
            started = time.monotonic()
            ds = make(root)
            self.log(
                f"  dataset {key}: {ds.files} files, {ds.bytes / MiB:.0f} MiB "
                f"({time.monotonic() - started:.1f}s to write)"
            )
            self._datasets[key] = ds
        return self._datasets[key]

    def drop_dataset(self, key: str) -> None:
        ds = self._datasets.pop(key, None)
        if ds is not None:
            self.trash.put(ds.root)

    def done_with(self, path: Path) -> None:
        if not self.keep:
            self.trash.put(path)

    def run_dir(self, name: str) -> Path:
        """A fresh directory for one run. Earlier trees go to the trash rather than being
        deleted just before (see bench.trash); dirty data (the dataset just written, the trees
        of earlier runs) is flushed first, so no run pays for another's writeback; the dataset
        stays in the page cache."""
        path = self.workdir / "runs" / name
        self.trash.put(path)
        self.trash.before_run()
        os.sync()
        path.mkdir(parents=True)
        return path


def _rss(dep: Deployment, group: str) -> float:
    """Peak RSS in MB: the larger of the sampled sum over the group's processes and the exact
    high-water mark of its largest process."""
    return max(dep.rss.peak_sum.get(group, 0), dep.rss.peak_hwm.get(group, 0)) * 1024 / 1e6


def _dest_rss(dep: Deployment) -> float:
    return max(_rss(dep, f"dest{i + 1}") for i in range(len(dep.dest_dirs)))


def _one_initial(s: Settings, tool: str, name: str, ds, peers: int, rate: float | None) -> dict:  # noqa: PLR0917
    base = s.run_dir(name)
    dep = TOOLS[tool](base, ds.root, peers, rate)
    try:
        with dep:
            dep.start_source(s.timeout)
            started = time.monotonic()
            dep.start_dests()
            dep.wait_synced(s.timeout)
            wall = time.monotonic() - started
            sent = dep.source_sent()
            dep.rss.sample()
            metrics = {
                "wall_s": wall,
                "source_sent_ratio": sent / ds.bytes,
                "source_rss_mb": _rss(dep, "source"),
                "dest_rss_mb": _dest_rss(dep),
                "cpu_s": dep.rss.cpu_s(),
            }
            if isinstance(dep, SiftDeployment):
                metrics["master_payload_ratio"] = dep.master_payload_sent() / ds.bytes
            if rate:
                metrics["wall_over_bound"] = wall / (ds.bytes / rate)
    except BenchError:
        s.log(dep.logs()[-6000:])
        raise
    check_mirrors(ds.root, dep.dest_dirs)
    s.done_with(base)
    return metrics


def _initial(s: Settings, key: str, ds, peers: int, rate: float | None = None) -> dict:
    runs: dict[str, list[dict]] = {t: [] for t in s.tools}
    for r in range(s.repeat):
        for tool in s.tools:
            m = _one_initial(s, tool, f"{key}-{tool}-{r}", ds, peers, rate)
            s.log(f"  ({key}) run {r + 1} {tool}: " + _brief(m))
            runs[tool].append(m)
    return runs


def _brief(m: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in m.items())


def scenario_a(s: Settings) -> dict:
    ds = s.dataset(f"mixed-{s.size_mib}", lambda r: datasets.mixed(r, s.size_mib * MiB))
    runs = _initial(s, "a", ds, s.peers)
    return {
        "title": f"initial sync, {s.size_mib} MiB ({ds.files} files) to {s.peers} peers",
        "data_bytes": ds.bytes,
        "runs": runs,
    }


def scenario_b(s: Settings) -> dict:
    size = s.shaped_size_mib
    ds = s.dataset(f"mixed-{size}", lambda r: datasets.mixed(r, size * MiB))
    runs = _initial(s, "b", ds, s.peers, rate=s.rate)
    return {
        "title": (
            f"initial sync, {size} MiB to {s.peers} peers, source uplink capped at "
            f"{s.rate / 1e6:.0f} MB/s (bound {ds.bytes / s.rate:.1f} s)"
        ),
        "data_bytes": ds.bytes,
        "bound_s": ds.bytes / s.rate,
        "runs": runs,
    }


def _moved(dep: Deployment, before: dict) -> int:
    """Bytes sent over the tool's data connections since `before` (a tcp_sent_by_port
    snapshot); rsync reports its own."""
    if dep.name == "rsync":
        return dep.received - before.get("rsync", 0)
    after = tcp_sent_by_port(dep.data_ports())
    return sum(max(0, n - before.get(k, 0)) for k, n in after.items())


def _snapshot(dep: Deployment) -> dict:
    if dep.name == "rsync":
        return {"rsync": dep.received}
    return tcp_sent_by_port(dep.data_ports())


def scenario_c(s: Settings) -> dict:
    size = s.size_mib * MiB
    ds = s.dataset(f"single-{s.size_mib}", lambda r: datasets.single_large(r, size))
    path = ds.root / ds.large
    # sift twice: as it comes (atomic replace) and with update_in_place on the peers.
    tools = [x for t in s.tools for x in ((t, "sift-inplace") if t == "sift" else (t,))]
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    for tool in tools:
        base = s.run_dir(f"c-{tool}")
        dep = TOOLS[tool](base, ds.root, s.peers)
        try:
            with dep:
                dep.start_source(s.timeout)
                dep.start_dests()
                dep.wait_synced(s.timeout)
                for r in range(s.repeat):
                    runs[tool].append(_one_edit(s, dep, path, ds, size // 2 + r * 1_000_003))
                    s.log(f"  (c) edit {r + 1} {tool}: " + _brief(runs[tool][-1]))
        except BenchError:
            s.log(dep.logs()[-6000:])
            raise
        check_mirrors(ds.root, dep.dest_dirs)
        s.done_with(base)
    # Leave the source as generated for whoever uses the dataset next.
    s.drop_dataset(f"single-{s.size_mib}")
    return {
        "title": f"one-byte edit in the middle of a {s.size_mib} MiB file, {s.peers} peers",
        "data_bytes": ds.bytes,
        "avg_chunk": DEFAULT_PARAMS.avg_size,
        "runs": runs,
    }


def _one_edit(s: Settings, dep: Deployment, path: Path, ds, offset: int) -> dict:
    before = _snapshot(dep)
    sift = isinstance(dep, SiftDeployment)
    if sift:
        old_version = max(v for v, _ in dep.published())
    edited_wall = time.time()
    edited = time.monotonic()
    new = datasets.flip_byte(path, offset)
    dep.propagate()
    targets = [d / ds.large for d in dep.dest_dirs]
    wait_until(
        lambda: all(read_byte(t, offset) == new for t in targets),
        s.timeout,
        f"{dep.name} to deliver the edit",
        poll=POLL / 2,
    )
    converged = time.monotonic()
    metrics = {"edit_to_converged_s": converged - edited}
    if sift:
        versions = wait_until(
            lambda: [(v, t) for v, t in dep.published() if v > old_version],
            s.timeout,
            "the master to log the new version",
        )
        version, published_wall = versions[-1]
        dep.wait_synced(s.timeout, version)
        metrics["rehash_to_converged_s"] = (edited_wall + (converged - edited)) - published_wall
        metrics["payload_per_dest_bytes"] = _peer_payload(dep, version) / len(dep.dest_dirs)
    else:
        dep.wait_synced(s.timeout)
    metrics["moved_per_dest_bytes"] = _moved(dep, before) / len(dep.dest_dirs)
    return metrics


def _peer_payload(dep: SiftDeployment, version: int) -> int:
    """Chunk bytes the peers fetched (from the master and from peers) in the sync that brought
    them to `version`."""
    total = 0
    for report in dep.peer_reports():
        if report.get("version") == version:
            total += report.get("bytes_from_master", 0) + report.get("bytes_from_peers", 0)
    return total


def scenario_d(s: Settings) -> dict:
    ds = s.dataset(
        f"small-{s.small_files}", lambda r: datasets.many_small(r, s.small_files, s.small_size)
    )
    runs = _initial(s, "d", ds, 1)
    return {
        "title": f"{s.small_files} files of {s.small_size // 1024} KiB to 1 peer",
        "data_bytes": ds.bytes,
        "runs": runs,
    }


def scenario_e(s: Settings) -> dict:
    """The master's own scan (its log line) over the mixed dataset, and chunk_file alone over
    its largest file, both from a warm page cache."""
    ds = s.dataset(f"mixed-{s.size_mib}", lambda r: datasets.mixed(r, s.size_mib * MiB))
    runs: dict[str, list[dict]] = {"sift": []}
    large = ds.root / ds.large
    for r in range(s.repeat):
        base = s.run_dir(f"e-{r}")
        with SiftDeployment(base, ds.root, 0) as dep:
            dep.start_source(s.timeout)
        started = time.perf_counter()
        chunk_file(large, DEFAULT_PARAMS)
        one_file = time.perf_counter() - started
        m = {
            "scan_mb_s": dep.scan_mb / dep.scan_seconds if dep.scan_seconds else 0.0,
            "chunk_file_mb_s": large.stat().st_size / one_file / 1e6,
        }
        runs["sift"].append(m)
        s.log(f"  (e) run {r + 1}: " + _brief(m))
        s.done_with(base)
    return {
        "title": f"master scan throughput, {s.size_mib} MiB",
        "data_bytes": ds.bytes,
        "runs": runs,
    }


def scenario_f(s: Settings) -> dict:
    """Master peak RSS after scanning and publishing, and while it serves one peer the first
    32 MiB (so the serving path is counted too)."""
    runs: dict[str, list[dict]] = {"sift": []}
    for r in range(s.repeat):
        m = {}
        for size in s.rss_sizes_mib:
            ds = s.dataset(f"mixed-{size}", lambda root, n=size: datasets.mixed(root, n * MiB))
            base = s.run_dir(f"f-{size}-{r}")
            with SiftDeployment(base, ds.root, 1) as dep:
                dep.start_source(s.timeout)
                dep.start_dests()
                served = min(32 * MiB, ds.bytes // 2)
                wait_until(
                    lambda dep=dep, served=served: (
                        dep._alive() and _peer_held(dep) * DEFAULT_PARAMS.avg_size >= served
                    ),
                    s.timeout,
                    "the peer to start receiving",
                    poll=0.1,
                )
                m[f"master_rss_mb_{size}mib"] = status_kib(dep.master.pid, "VmHWM") * 1024 / 1e6
            s.done_with(base)
        runs["sift"].append(m)
        s.log(f"  (f) run {r + 1}: " + _brief(m))
    for size in s.rss_sizes_mib:
        if size > s.size_mib:
            s.drop_dataset(f"mixed-{size}")
    return {"title": "master peak RSS by dataset size", "runs": runs}


def _peer_held(dep: SiftDeployment) -> int:
    st = dep.status(dep.peer_ports[0]) if dep.peer_ports else None
    return (st or {}).get("chunks_held", 0)


def scenario_g(s: Settings) -> dict:
    size = s.join_size_mib
    ds = s.dataset(f"mixed-{size}", lambda r: datasets.mixed(r, size * MiB))
    runs = _initial(s, "g", ds, s.join_peers)
    return {
        "title": f"{s.join_peers} peers joining at once, {size} MiB",
        "data_bytes": ds.bytes,
        "runs": runs,
    }


SCENARIOS = {
    "a": scenario_a,
    "b": scenario_b,
    "c": scenario_c,
    "d": scenario_d,
    "e": scenario_e,
    "f": scenario_f,
    "g": scenario_g,
}
