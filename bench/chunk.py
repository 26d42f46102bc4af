"""Chunking throughput: raw BLAKE3 and FastCDC cut-only as the yardsticks, sift's chunk_file
as the thing measured.

    python -m bench.chunk [--size-mib 1024] [--repeat 5] [--file PATH] [--json PATH]
    python -m bench.chunk --tree [--size-mib 1024] [--repeat 5]

All three read the same file from a warm page cache, so this measures CPU cost, not the disk.
``--tree`` instead scans scenario (e)'s mixed tree with the scanner itself, alternating runs on
this thread alone and with the hashing helper process, and reports the CPU time of both
processes beside the wall time: on a shared machine the CPU time says what the code costs and
the wall time what the other processes left of the second core.
Exit status 1 when sift's median throughput (with the helper, for ``--tree``) is below the
target (1.2 GB/s).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from blake3 import blake3

from bench.datasets import mixed
from sift.core.chunk import DEFAULT_PARAMS, ChunkParams
from sift.core.chunker import ChunkerUnavailable, chunk_file, load_fastcdc
from sift.scanner import Scanner
from sift.state import ScanCache, open_db

TARGET_MB_S = 1200.0  # MB = 10**6 bytes
MiB = 1 << 20
_BLOCK = 16 * MiB


def make_file(path: Path, size: int) -> None:
    """Write ``size`` pseudo-random bytes: BLAKE3's XOF is seeded (reproducible chunk counts)
    and ~10x faster than os.urandom, so setup does not dominate a short run."""
    xof = blake3(b"sift bench.chunk")
    with open(path, "wb") as f:
        for offset in range(0, size, _BLOCK):
            f.write(xof.digest(length=min(_BLOCK, size - offset), seek=offset))


def warm(path: Path) -> None:
    """Read the file once so every measured run starts from the page cache."""
    buf = bytearray(_BLOCK)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def _timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def run_once(path: Path, params: ChunkParams) -> dict[str, float]:
    """One repeat: seconds taken by each of the three measurements."""
    cut = load_fastcdc()
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        try:
            with memoryview(mm) as view:
                b3 = _timed(lambda: blake3(view).digest())  # max_threads=1: single-thread

                def cut_only() -> None:
                    spans = cut(view, params.min_size, params.avg_size, params.max_size)
                    for _ in spans:
                        pass

                cdc = _timed(cut_only)
        finally:
            mm.close()
    finally:
        os.close(fd)
    sift = _timed(lambda: chunk_file(path, params))
    return {"blake3": b3, "fastcdc_cut": cdc, "sift_chunk_file": sift}


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (the helper)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def scan_once(root: Path, state: Path, helper: bool) -> tuple[float, float, int]:
    """One scan with an empty cache: (wall seconds as the scan reports it, CPU seconds, bytes)."""
    shutil.rmtree(state, ignore_errors=True)
    conn = open_db(state / "sift.db", role="master")
    try:
        scanner = Scanner(
            root, ScanCache(conn), DEFAULT_PARAMS, helper_min_bytes=0 if helper else None
        )
        cpu = _cpu()
        result = scanner.scan()
        cpu = _cpu() - cpu
    finally:
        conn.close()
    return result.seconds, cpu, result.hashed_bytes


def tree_main(size_mib: int, repeat: int) -> int:
    """``--tree``: the whole-tree scan, alone and with the helper, runs alternating."""
    tmpdir = tempfile.mkdtemp(prefix="sift-bench-tree-")
    runs: dict[str, list[tuple[float, float]]] = {"this thread": [], "with helper": []}
    size = 0
    try:
        root = Path(tmpdir) / "data"
        print(f"writing the {size_mib} MiB mixed tree to {root} ...", flush=True)
        ds = mixed(root, size_mib * MiB)
        scan_once(root, Path(tmpdir) / "state", helper=False)  # warm-up
        for i in range(repeat):
            for name, pairs in runs.items():
                wall, cpu, size = scan_once(root, Path(tmpdir) / "state", name == "with helper")
                pairs.append((wall, cpu))
            print(f"  run {i + 1}/{repeat} done", flush=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    print()
    print(f"tree {size / 1e6:.0f} MB, {ds.files} files, {repeat} runs each, {os.cpu_count()} CPUs")
    print(f"{'scan':<14}{'median MB/s':>12}{'min MB/s':>10}{'max MB/s':>10}{'CPU s':>8}")
    medians = {}
    for name, pairs in runs.items():
        rates = [size / wall / 1e6 for wall, _cpu in pairs]
        medians[name] = statistics.median(rates)
        cpu = statistics.median(cpu for _wall, cpu in pairs)
        print(f"{name:<14}{medians[name]:>12.0f}{min(rates):>10.0f}{max(rates):>10.0f}{cpu:>8.2f}")
    passed = medians["with helper"] >= TARGET_MB_S
    print(f"target {TARGET_MB_S / 1000:.1f} GB/s: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


def _stats(size: int, seconds: list[float]) -> dict[str, float]:
    rates = [size / s / 1e6 for s in seconds]
    return {
        "median_mb_s": statistics.median(rates),
        "min_mb_s": min(rates),
        "max_mb_s": max(rates),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chunk", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the generated file")
    parser.add_argument("--repeat", type=int, default=5, help="measured runs (median reported)")
    parser.add_argument("--file", type=Path, help="use this file instead of generating one")
    parser.add_argument("--json", type=Path, help="also save the results here")
    parser.add_argument(
        "--tree", action="store_true", help="scan scenario (e)'s mixed tree instead of one file"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.size_mib < 1:
        parser.error("--repeat and --size-mib must be positive")
    if args.tree and (args.file is not None or args.json is not None):
        parser.error("--tree takes neither --file nor --json")

    try:
        load_fastcdc()
    except ChunkerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.tree:
        return tree_main(args.size_mib, args.repeat)

    params = DEFAULT_PARAMS
    tmpdir: str | None = None
    try:
        if args.file is not None:
            path = args.file
        else:
            tmpdir = tempfile.mkdtemp(prefix="sift-bench-chunk-")
            path = Path(tmpdir) / "data.bin"
            print(f"writing {args.size_mib} MiB of random data to {path} ...", flush=True)
            make_file(path, args.size_mib * MiB)
        size = path.stat().st_size
        if size == 0:
            parser.error(f"{path} is empty")
        warm(path)
        chunks = len(chunk_file(path, params).chunks)  # also a warm-up for the code paths

        runs: dict[str, list[float]] = {"blake3": [], "fastcdc_cut": [], "sift_chunk_file": []}
        for i in range(args.repeat):
            for name, seconds in run_once(path, params).items():
                runs[name].append(seconds)
            print(f"  run {i + 1}/{args.repeat} done", flush=True)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    results = {name: _stats(size, seconds) for name, seconds in runs.items()}
    b3 = results["blake3"]["median_mb_s"]
    cdc = results["fastcdc_cut"]["median_mb_s"]
    sift = results["sift_chunk_file"]["median_mb_s"]
    serial_bound = 1 / (1 / cdc + 1 / b3)  # cut then hash every byte, zero overhead
    ratio = sift / cdc
    passed = sift >= TARGET_MB_S

    print()
    print(
        f"file {size / 1e6:.0f} MB, {chunks} chunks (avg {size / chunks / 1024:.1f} KiB), "
        f"params {params.as_tuple()}, {args.repeat} runs, Python {platform.python_version()}"
    )
    print(f"{'measurement':<18}{'median MB/s':>12}{'min MB/s':>10}{'max MB/s':>10}{'GB/s':>7}")
    labels = {
        "blake3": "blake3 (1 thread)",
        "fastcdc_cut": "fastcdc cut-only",
        "sift_chunk_file": "sift chunk_file",
    }
    for name, st in results.items():
        print(
            f"{labels.get(name, name):<18}{st['median_mb_s']:>12.0f}{st['min_mb_s']:>10.0f}"
            f"{st['max_mb_s']:>10.0f}{st['median_mb_s'] / 1000:>7.2f}"
        )
    print(f"sift / fastcdc cut: {ratio:.2f}")
    print(
        f"serial bound (cut + hash, no overhead): {serial_bound:.0f} MB/s; "
        f"sift reaches {sift / serial_bound:.0%} of it"
    )
    print(f"target {TARGET_MB_S / 1000:.1f} GB/s: {'PASS' if passed else 'FAIL'}")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "size_bytes": size,
            "chunks": chunks,
            "params": {
                "min_size": params.min_size,
                "avg_size": params.avg_size,
                "max_size": params.max_size,
            },
            "repeat": args.repeat,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "seconds": runs,
            "results": results,
            "serial_bound_mb_s": serial_bound,
            "sift_over_fastcdc_cut": ratio,
            "target_mb_s": TARGET_MB_S,
            "pass": passed,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"saved {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
