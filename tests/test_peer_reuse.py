"""A changed file is rebuilt from its previous version inside the kernel: only the chunks that
really changed are fetched, and the result is byte-identical (sift.peer.plan.reusable_runs,
Assembler.copy_runs, Syncer's reuse step)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

import sift.peer.sync as sync_mod
from sift.core.chunk import ChunkParams
from sift.core.chunker import chunk_bytes
from sift.core.manifest import FileEntry, Manifest
from sift.peer.assembly import Assembler
from sift.peer.plan import Run, reusable_runs
from sift.peer.sync import LocalChunks, Syncer
from sift.protocol.messages import ChunkResponse
from sift.state import ScanCache

PARAMS = ChunkParams(min_size=256, avg_size=1024, max_size=4096)
OLD_NS = (int(time.time()) - 3600) * 1_000_000_000


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def entry(path: str, data: bytes, mtime_ns: int = OLD_NS) -> FileEntry:
    return FileEntry.build(path, len(data), 0o644, mtime_ns, chunk_bytes(data, PARAMS))


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


# -- planning ----------------------------------------------------------------------------------


def test_in_place_edit_reuses_everything_but_the_changed_chunks():
    old = blob(100_000, 1)
    new = flipped(old, 50_000)
    a, b = entry("f", old), entry("f", new)
    runs, covered = reusable_runs(a, b)
    assert all(r.src == r.dst for r in runs)
    assert len(runs) == 2  # before and after the edit
    reused = sum(r.length for r in runs)
    changed = b.size - reused
    assert 0 < changed <= 2 * PARAMS.max_size
    assert len(covered) >= len(b.chunks) - 2
    # Every covered chunk of the new file is the same bytes in the old one.
    offsets, off = {}, 0
    for c in b.chunks:
        offsets[off] = c
        off += c.length
    for run in runs:
        assert old[run.src : run.src + run.length] == new[run.dst : run.dst + run.length]


def test_insertion_shifts_the_tail_run():
    old = blob(80_000, 2)
    new = old[:40_000] + b"inserted!" * 100 + old[40_000:]
    runs, _ = reusable_runs(entry("f", old), entry("f", new))
    assert any(r.src != r.dst for r in runs)  # the tail moved
    for run in runs:
        assert old[run.src : run.src + run.length] == new[run.dst : run.dst + run.length]


def test_unrelated_content_reuses_nothing():
    runs, covered = reusable_runs(entry("f", blob(20_000, 3)), entry("f", blob(20_000, 4)))
    assert runs == []
    assert covered == []


# -- the kernel copy ---------------------------------------------------------------------------


def test_copy_runs_places_each_range(tmp_path: Path):
    old = blob(300_000, 5)
    new = flipped(old, 150_000)
    src = tmp_path / "old.bin"
    src.write_bytes(old)
    asm = Assembler(tmp_path / "local")
    target = entry("f", new)
    runs, covered = reusable_runs(entry("f", old), target)
    part = asm.open_part(target)
    fd = os.open(src, os.O_RDONLY)
    try:
        # clone=True: on a filesystem without reflink this falls back to copy_file_range.
        copied = asm.copy_runs(part, fd, runs, clone=True)
    finally:
        os.close(fd)
    asm.mark_written(part, covered)
    assert copied == sum(r.length for r in runs)
    data = part.path.read_bytes()
    assert len(data) == target.size
    for run in runs:
        assert data[run.dst : run.dst + run.length] == new[run.dst : run.dst + run.length]
    assert set(part.missing) == {
        o for o in _offsets(target) if o not in set(covered)
    }  # only the changed chunks are left to fetch
    asm.close(part)


def test_copy_runs_refuses_a_source_that_ends_early(tmp_path: Path):
    src = tmp_path / "short.bin"
    src.write_bytes(b"x" * 1000)
    asm = Assembler(tmp_path / "local")
    target = entry("f", blob(5000, 6))
    part = asm.open_part(target)
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="ended early"):
            asm.copy_runs(part, fd, [Run(0, 0, 4000)], clone=False)
    finally:
        os.close(fd)
        asm.close(part)


def _offsets(e: FileEntry) -> list[int]:
    out, off = [], 0
    for c in e.chunks:
        out.append(off)
        off += c.length
    return out


# -- a whole sync ------------------------------------------------------------------------------


class MemorySource:
    """The master as a dict of chunks; remembers what it was asked for."""

    def __init__(self, data: dict[bytes, bytes]):
        self.data = data
        self.asked: list[bytes] = []

    async def ask_master(self, hashes, avoid):
        self.asked.extend(hashes)
        return ChunkResponse(0, tuple((h, self.data[h]) for h in hashes), (), (), ())

    async def ask_peer(self, addr, hashes):
        raise AssertionError("no peers here")


def chunk_map(data: bytes) -> dict[bytes, bytes]:
    out, off = {}, 0
    for c in chunk_bytes(data, PARAMS):
        out[c.hash] = data[off : off + c.length]
        off += c.length
    return out


async def _sync(local: Path, cache: ScanCache, source: MemorySource, files: dict[str, bytes]):
    target = Manifest.build(2, PARAMS, [entry(p, d) for p, d in files.items()])
    chunks = LocalChunks(local)
    try:
        return await Syncer(local, cache, chunks, source).run(target)
    finally:
        chunks.reader.close()


async def test_edit_fetches_only_the_changed_chunks(peer_store):
    local, cache = peer_store
    old = blob(3_000_000, 7)
    new = flipped(old, 1_500_000)
    (local / "big.bin").write_bytes(old)
    os.utime(local / "big.bin", ns=(OLD_NS, OLD_NS))
    source = MemorySource(chunk_map(new))
    report = await _sync(local, cache, source, {"big.bin": new})
    assert (local / "big.bin").read_bytes() == new
    fetched = sum(len(source.data[h]) for h in source.asked)
    assert 0 < fetched <= 2 * PARAMS.max_size
    assert report.bytes_reused >= len(new) - 2 * PARAMS.max_size
    assert report.bytes_reused + fetched == len(new)


async def test_a_file_changed_during_the_sync_is_not_reused(peer_store, monkeypatch):
    """The previous version is checked against what the scan saw before and after the kernel
    copy; when it differs, every chunk takes the verified path and the result is still exact."""
    local, cache = peer_store
    old = blob(2_000_000, 8)
    new = flipped(old, 1_000_000)
    (local / "big.bin").write_bytes(old)
    os.utime(local / "big.bin", ns=(OLD_NS, OLD_NS))
    real_identity = sync_mod._identity
    calls = []

    def changing_identity(st):
        calls.append(st)
        ident = real_identity(st)
        return ident if len(calls) % 2 else (*ident[:-1], ident[-1] + 1)  # "after" differs

    monkeypatch.setattr(sync_mod, "_identity", changing_identity)
    source = MemorySource(chunk_map(new))
    report = await _sync(local, cache, source, {"big.bin": new})
    assert calls, "the reuse step checked the file"
    assert report.bytes_reused == 0
    assert (local / "big.bin").read_bytes() == new
    # Nothing was lost: the unchanged chunks still came from the local file, verified.
    assert report.bytes_copied_locally > 0


async def test_small_changes_take_the_ordinary_path(peer_store):
    local, cache = peer_store
    old = blob(200_000, 9)  # under REUSE_MIN_BYTES
    new = flipped(old, 100_000)
    (local / "small.bin").write_bytes(old)
    os.utime(local / "small.bin", ns=(OLD_NS, OLD_NS))
    source = MemorySource(chunk_map(new))
    report = await _sync(local, cache, source, {"small.bin": new})
    assert report.bytes_reused == 0
    assert report.bytes_copied_locally > 0
    assert (local / "small.bin").read_bytes() == new
