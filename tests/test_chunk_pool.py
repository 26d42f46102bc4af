"""sift.chunk_pool: the helper process chunks exactly like this process, and the scan never
depends on it (a helper that cannot start or dies leaves the work to the caller's thread)."""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path

import pytest

import sift.chunk_pool as pool_mod
import sift.scanner as scanner_mod
from sift.chunk_pool import Helper, _units, chunk_jobs, start_helper
from sift.core.chunk import ChunkParams
from sift.core.chunker import FileChunks, UnstableFileError, chunk_file
from sift.scanner import Scanner
from sift.state import ScanCache, open_db

PARAMS = ChunkParams(min_size=256, avg_size=1024, max_size=4096)
OLD_NS = (int(time.time()) - 3600) * 1_000_000_000
MiB = 1 << 20


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(OLD_NS, OLD_NS))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Files of many sizes: two larger than a unit, a crowd of small ones, one empty."""
    root = tmp_path / "tree"
    rng = random.Random(7)
    _write(root / "big" / "a.bin", rng.randbytes(pool_mod.UNIT_BYTES + 12345))
    _write(root / "big" / "b.bin", rng.randbytes(pool_mod.UNIT_BYTES + 1))
    for i in range(300):
        _write(root / f"small/d{i % 7}" / f"f{i:03d}", rng.randbytes(rng.randrange(1, 40_000)))
    _write(root / "empty", b"")
    return root


def _children() -> set[int]:
    """Live (not zombie) child processes of this process."""
    kids = set()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            kids.add(int(entry))
    return kids


def _scan(root: Path, tmp_path: Path, name: str, helper_min_bytes: int | None):
    conn = open_db(tmp_path / name / "sift.db", role="master")
    try:
        cache = ScanCache(conn)
        result = Scanner(root, cache, PARAMS, helper_min_bytes=helper_min_bytes).scan()
        cached = {path: cache.get(path) for path in cache.paths()}
    finally:
        conn.close()
    return result, cached


@pytest.mark.parametrize("pipe_capacity", [None, 64])
def test_helper_chunks_exactly_like_this_process(
    tree: Path, monkeypatch, pipe_capacity: int | None
) -> None:
    """Every unit goes to the helper (the caller takes none): same chunks, same stat, and the
    two expected failures come back as values. With a tiny request pipe no unit is queued
    ahead (it could fill the pipe while the helper waits to write its answer)."""
    if pipe_capacity is not None:
        monkeypatch.setattr(pool_mod, "_pipe_capacity", lambda fd: pipe_capacity)
    paths = sorted(str(p) for p in tree.rglob("*") if p.is_file())
    jobs = [(i, p, os.path.getsize(p)) for i, p in enumerate(paths)]
    jobs.append((len(jobs), str(tree / "missing"), 10))
    jobs.append((len(jobs), str(tree / "small"), 10))  # a directory
    helper = start_helper()
    assert helper is not None
    got = {}
    try:
        helper.feed(_units(jobs), PARAMS)
        assert helper.feeding()
        while helper.feeding():
            got.update(helper.finished(block=True))
    finally:
        helper.stop()
    assert not helper.pending()
    assert sorted(got) == [key for key, _path, _size in jobs]
    for key, path in enumerate(paths):
        assert isinstance(got[key], FileChunks)
        assert got[key] == chunk_file(path, PARAMS)
    assert isinstance(got[len(paths)], FileNotFoundError)
    assert got[len(paths)].filename == str(tree / "missing")
    assert isinstance(got[len(paths) + 1], OSError)
    assert "not a regular file" in str(got[len(paths) + 1])


def test_units_are_largest_first_and_cover_every_job_once() -> None:
    sizes = [10, 5 * MiB, 3, 1 << 20, 9 * MiB, *([1000] * 600)]
    jobs = [(i, f"p{i}", size) for i, size in enumerate(sizes)]
    units = _units(jobs)
    flat = [job for unit in units for job in unit]
    assert sorted(flat) == sorted(jobs)
    assert [job[2] for job in flat] == sorted(sizes, reverse=True)
    assert units[0] == [(4, "p4", 9 * MiB)]  # a big file is a unit of its own
    assert units[1] == [(1, "p1", 5 * MiB)]
    assert all(len(unit) <= pool_mod.UNIT_FILES for unit in units)


@pytest.mark.parametrize("helper_min_bytes", [0, None])
def test_scan_result_does_not_depend_on_who_hashed(
    tree: Path, tmp_path: Path, helper_min_bytes: int | None
) -> None:
    serial, serial_cache = _scan(tree, tmp_path, "serial", None)
    other, other_cache = _scan(tree, tmp_path, "other", helper_min_bytes)
    assert other.entries == serial.entries  # same entries in the same (walk) order
    assert other.hashed_files == serial.hashed_files == 303
    assert other.hashed_bytes == serial.hashed_bytes
    assert other.unstable == serial.unstable == []
    assert other_cache == serial_cache
    assert _children() == set()  # the helper is gone once the scan returns


def test_unstable_files_are_listed_in_walk_order(tree: Path, tmp_path: Path, monkeypatch) -> None:
    busy = {"small/d3/f010", "big/b.bin", "small/d0/f294"}
    real = scanner_mod.chunk_file

    def flaky(path: str, params: ChunkParams) -> FileChunks:
        if os.path.relpath(path, tree) in busy:
            raise UnstableFileError(path)
        return real(path, params)

    reference, _ = _scan(tree, tmp_path, "ref", None)
    walk_order = [e.path for e in reference.entries if e.path in busy]
    monkeypatch.setattr(scanner_mod, "chunk_file", flaky)
    # No helper (it would not use this stand-in); files are still hashed largest first, so
    # big/b.bin fails before the small files the walk met earlier.
    result, cached = _scan(tree, tmp_path, "s", None)
    assert walk_order[0] != "big/b.bin"
    assert result.unstable == walk_order
    assert busy.isdisjoint(cached)
    assert busy.isdisjoint(e.path for e in result.entries)


@pytest.mark.parametrize(
    "argv",
    [
        (sys.executable, "-c", "import sys; sys.exit(3)"),  # starts, then dies at once
        (sys.executable, "-c", "import sys; sys.stdin.buffer.read(1); sys.exit(3)"),  # mid-way
        ("/nonexistent/python",),  # cannot start at all
    ],
)
def test_scan_finishes_on_this_thread_when_the_helper_fails(
    tree: Path, tmp_path: Path, monkeypatch, caplog, argv: tuple[str, ...]
) -> None:
    serial, _ = _scan(tree, tmp_path, "serial", None)
    monkeypatch.setattr(pool_mod, "HELPER_ARGV", argv)
    with caplog.at_level(logging.WARNING, logger="sift.scan"):
        result, _ = _scan(tree, tmp_path, "broken", 0)
    assert result.entries == serial.entries
    assert result.hashed_files == serial.hashed_files
    assert "hashing on one core" in caplog.text
    assert _children() == set()


def test_an_error_on_this_thread_stops_the_helper(tree: Path, caplog) -> None:
    paths = sorted(str(p) for p in tree.rglob("*") if p.is_file())
    jobs = [(p, p, os.path.getsize(p)) for p in paths]

    def broken(path: str, params: ChunkParams) -> FileChunks:
        raise RuntimeError("injected")

    outcomes = chunk_jobs(jobs, PARAMS, chunk=broken, helper=start_helper())
    with (
        caplog.at_level(logging.WARNING, logger="sift.scan"),
        pytest.raises(RuntimeError, match="injected"),
    ):
        for _ in outcomes:
            pass
    assert _children() == set()
    assert "hashing helper" not in caplog.text  # killing it on purpose is no news


def test_helper_is_not_started_for_little_work(tree: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pool_mod, "HELPER_ARGV", ("/nonexistent/python",))
    started = []
    real_start = Helper.start

    def start(self: Helper) -> bool:
        started.append(self)
        return real_start(self)

    monkeypatch.setattr(Helper, "start", start)
    result, _ = _scan(tree, tmp_path, "s", 1 << 40)
    assert result.hashed_files == 303
    # One file to hash, however big: the scan thread would take it before the helper is up.
    lone = tmp_path / "lone"
    _write(lone / "big.bin", b"x" * 100_000)
    result, _ = _scan(lone, tmp_path, "lone-state", 0)
    assert result.hashed_files == 1
    assert started == []


def test_a_helper_started_during_the_walk_is_stopped_if_the_scan_fails(
    tree: Path, tmp_path: Path, monkeypatch
) -> None:
    def fail(*args, **kwargs) -> None:
        assert _children()  # the helper was started while walking
        raise RuntimeError("injected")

    monkeypatch.setattr(Scanner, "_hash", fail)
    with pytest.raises(RuntimeError, match="injected"):
        _scan(tree, tmp_path, "s", 0)
    assert _children() == set()
