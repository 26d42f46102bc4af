"""sift.scanner: the tree walk, the scan cache, and what is skipped."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import pytest

import sift.core.chunker as chunker_mod
import sift.scanner as scanner_mod
from sift.core.chunk import ChunkParams
from sift.core.chunker import chunk_bytes
from sift.core.manifest import DirEntry, FileEntry, SymlinkEntry
from sift.scanner import Scanner
from sift.state import ScanCache, open_db

PARAMS = ChunkParams(min_size=256, avg_size=1024, max_size=4096)
OLD_NS = (int(time.time()) - 3600) * 1_000_000_000  # well outside the 2 s "racy" window


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def put(root: Path, rel: str, data: bytes, mtime_ns: int | None = OLD_NS, mode: int = 0o644):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def env(tmp_path: Path):
    root = tmp_path / "tree"
    root.mkdir()
    conn = open_db(tmp_path / "state" / "sift.db", role="master")
    cache = ScanCache(conn)
    yield root, cache
    conn.close()


def by_path(result) -> dict:
    return {e.path: e for e in result.entries}


def test_entries_for_each_kind(env):
    root, cache = env
    put(root, "a/x.bin", blob(5000, 1), mode=0o640)
    put(root, "top.txt", b"hello")
    put(root, "empty.bin", b"")
    (root / "a" / "emptydir").mkdir()
    os.chmod(root / "a" / "emptydir", 0o700)
    os.symlink("a/x.bin", root / "link")
    result = Scanner(root, cache, PARAMS).scan()
    entries = by_path(result)
    assert set(entries) == {"a", "a/x.bin", "a/emptydir", "top.txt", "empty.bin", "link"}
    assert entries["a/emptydir"] == DirEntry("a/emptydir", 0o700)
    assert entries["link"] == SymlinkEntry("link", "a/x.bin")
    x = entries["a/x.bin"]
    assert x == FileEntry.build("a/x.bin", 5000, 0o640, OLD_NS, chunk_bytes(blob(5000, 1), PARAMS))
    assert entries["empty.bin"].chunks == ()
    assert result.hashed_files == 3
    assert result.hashed_bytes == 5005
    assert result.cached_files == 0
    # Parents come before their children.
    order = [e.path for e in result.entries]
    assert order.index("a") < order.index("a/x.bin")
    assert order.index("a") < order.index("a/emptydir")


def test_second_scan_hashes_nothing(env):
    root, cache = env
    for i in range(6):
        put(root, f"d{i % 2}/f{i}", blob(2000 + i, i))
    first = Scanner(root, cache, PARAMS).scan()
    assert first.hashed_files == 6
    second = Scanner(root, cache, PARAMS).scan()  # e.g. after a restart: the cache is in SQLite
    assert second.hashed_files == 0
    assert second.hashed_bytes == 0
    assert second.cached_files == 6
    assert by_path(second) == by_path(first)


def test_only_the_changed_file_is_rehashed(env):
    root, cache = env
    for i in range(5):
        put(root, f"f{i}", blob(3000, i))
    scanner = Scanner(root, cache, PARAMS)
    first = scanner.scan()
    put(root, "f2", blob(3000, 99), mtime_ns=OLD_NS + 1)  # same size, new content and mtime
    second = scanner.scan()
    assert second.hashed_files == 1
    assert second.cached_files == 4
    assert by_path(second)["f2"] != by_path(first)["f2"]
    assert by_path(second)["f2"].chunks == chunk_bytes(blob(3000, 99), PARAMS)


def test_chmod_is_seen_without_rehashing(env):
    root, cache = env
    put(root, "f", blob(1000, 1), mode=0o644)
    scanner = Scanner(root, cache, PARAMS)
    scanner.scan()
    os.chmod(root / "f", 0o600)
    second = scanner.scan()
    assert second.hashed_files == 0
    assert by_path(second)["f"].mode == 0o600


def test_other_chunk_params_rehash(env):
    root, cache = env
    put(root, "f", blob(8000, 1))
    Scanner(root, cache, PARAMS).scan()
    other = ChunkParams(min_size=512, avg_size=2048, max_size=8192)
    result = Scanner(root, cache, other).scan()
    assert result.hashed_files == 1
    assert by_path(result)["f"].chunks == chunk_bytes(blob(8000, 1), other)


def test_recently_modified_files_are_not_trusted_from_cache(env):
    root, cache = env
    put(root, "old", b"old file")
    put(root, "racy", b"just written", mtime_ns=None)  # mtime = now
    scanner = Scanner(root, cache, PARAMS)
    scanner.scan()
    assert cache.paths() == {"old"}
    second = scanner.scan()
    assert second.hashed_files == 1  # the racy one, again
    assert second.cached_files == 1


def test_deleted_files_leave_the_cache(env):
    root, cache = env
    put(root, "a", b"a")
    put(root, "b", b"b")
    scanner = Scanner(root, cache, PARAMS)
    scanner.scan()
    assert cache.paths() == {"a", "b"}
    (root / "a").unlink()
    result = scanner.scan()
    assert set(by_path(result)) == {"b"}
    assert cache.paths() == {"b"}


def test_top_level_reserved_dir_is_skipped_but_nested_is_not(env):
    root, cache = env
    put(root, ".sift/tmp/x.part", b"part")
    put(root, "a/.sift/kept", b"ordinary")
    result = Scanner(root, cache, PARAMS).scan()
    assert set(by_path(result)) == {"a", "a/.sift", "a/.sift/kept"}


def test_symlinks_leaving_the_tree_are_skipped(env, caplog):
    root, cache = env
    put(root, "d/f", b"f")
    os.symlink("/etc/passwd", root / "abs")
    os.symlink("../../outside", root / "d" / "up")
    os.symlink("../d/f", root / "d" / "inside")
    os.symlink("f", root / "d" / "sibling")
    scanner = Scanner(root, cache, PARAMS)
    with caplog.at_level(logging.WARNING, logger="sift.scan"):
        result = scanner.scan()
        scanner.scan()
    entries = by_path(result)
    assert "abs" not in entries
    assert "d/up" not in entries
    assert entries["d/inside"] == SymlinkEntry("d/inside", "../d/f")
    assert entries["d/sibling"] == SymlinkEntry("d/sibling", "f")
    leaving = [r for r in caplog.records if "leaves the tree" in r.getMessage()]
    assert len(leaving) == 2  # warned once per path, not on every rescan


def test_fifo_and_unsafe_names_are_skipped(env):
    root, cache = env
    os.mkfifo(root / "pipe")
    put(root, "bad\x1bname", b"escape sequence in the name")
    put(root, "ok", b"ok")
    result = Scanner(root, cache, PARAMS).scan()  # must not hang on the FIFO
    assert set(by_path(result)) == {"ok"}


def test_unreadable_directory_is_skipped(env, monkeypatch):
    root, cache = env
    put(root, "locked/f", b"f")
    put(root, "open/g", b"g")
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # tests run as root, so chmod 000 would not do
    result = Scanner(root, cache, PARAMS).scan()
    assert set(by_path(result)) == {"locked", "open", "open/g"}


def test_file_changing_while_hashed_keeps_previous_entry(env, monkeypatch):
    root, cache = env
    put(root, "busy", blob(6000, 1))
    put(root, "calm", blob(6000, 2))
    scanner = Scanner(root, cache, PARAMS)
    first = scanner.scan()
    previous = by_path(first)
    put(root, "busy", blob(6000, 3), mtime_ns=OLD_NS + 5)
    put(root, "calm", blob(6000, 4), mtime_ns=OLD_NS + 5)

    # Append to "busy" while its chunks are being hashed, as a writer would.
    current = {"path": ""}
    real_chunk_file = scanner_mod.chunk_file
    real_hash = chunker_mod.hash_chunk

    def tracking_chunk_file(path, params):
        current["path"] = os.fspath(path)
        return real_chunk_file(path, params)

    def meddling_hash(data):
        if current["path"].endswith("busy"):
            current["path"] = ""
            with open(root / "busy", "ab") as fh:
                fh.write(b"more")
        return real_hash(data)

    monkeypatch.setattr(scanner_mod, "chunk_file", tracking_chunk_file)
    monkeypatch.setattr(chunker_mod, "hash_chunk", meddling_hash)
    second = scanner.scan(previous)
    assert second.unstable == ["busy"]
    entries = by_path(second)
    assert entries["busy"] == previous["busy"]  # the last good entry stands
    assert entries["calm"].chunks == chunk_bytes(blob(6000, 4), PARAMS)
    assert second.hashed_files == 1

    # Without a previous entry the file is left out until it settles.
    third = scanner.scan({})
    assert "busy" not in by_path(third)
    assert third.unstable == ["busy"]

    # Once it is quiet it is scanned normally.
    monkeypatch.setattr(chunker_mod, "hash_chunk", real_hash)
    os.utime(root / "busy", ns=(OLD_NS + 9, OLD_NS + 9))
    fourth = scanner.scan(previous)
    assert fourth.unstable == []
    assert (
        by_path(fourth)["busy"].size == 6000 + 4 * 2
    )  # appended during the second and third scans


def test_rescan_shares_unchanged_entries_with_the_previous_scan(env):
    """A rescan returns the previous scan's very objects for unchanged files, so the master does
    not hold two copies of every chunk list while it swaps manifests."""
    root, cache = env
    scanner = Scanner(root, cache, PARAMS)
    put(root, "same.bin", blob(5000, 1))
    put(root, "edited.bin", blob(5000, 2))
    first = {e.path: e for e in scanner.scan().entries}
    put(root, "edited.bin", blob(5000, 3), mtime_ns=OLD_NS + 1_000_000_000)
    second = {e.path: e for e in scanner.scan(first).entries}
    assert second["same.bin"] is first["same.bin"]
    assert second["edited.bin"] is not first["edited.bin"]
    assert second["edited.bin"].digest != first["edited.bin"].digest
    # A mode change alone is a new entry too (same chunks, other bits).
    os.chmod(root / "same.bin", 0o600)
    third = {e.path: e for e in scanner.scan(second).entries}
    assert third["same.bin"] is not second["same.bin"]
    assert third["same.bin"].mode == 0o600
