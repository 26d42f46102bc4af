"""sift.chunk_reader: chunks read at recorded offsets, verified, through a bounded fd cache."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from sift.chunk_reader import ChunkReader
from sift.core.chunk import ChunkParams
from sift.core.chunker import chunk_bytes
from sift.core.manifest import ChunkLocation, FileEntry, Manifest

PARAMS = ChunkParams(min_size=256, avg_size=1024, max_size=4096)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def build(root: Path, files: dict[str, bytes]) -> Manifest:
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        entries.append(FileEntry.build(rel, len(data), 0o644, 0, chunk_bytes(data, PARAMS)))
    return Manifest.build(1, PARAMS, entries)


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def tree(tmp_path: Path):
    root = tmp_path / "tree"
    files = {"a.bin": blob(12_000, 1), "sub/b.bin": blob(9_000, 2), "c.bin": blob(700, 3)}
    manifest = build(root, files)
    reader = ChunkReader(root)
    yield root, files, manifest, reader
    reader.close()


def test_reads_every_chunk_verified(tree):
    _, files, manifest, reader = tree
    locations = manifest.chunk_locations()
    hashes = list(locations)
    found, stale = reader.read_many(hashes, locations)
    assert stale == []
    assert [h for h, _ in found] == hashes
    for h, data in found:
        loc = locations[h]
        assert data == files[loc.path][loc.offset : loc.offset + loc.length]


def test_unknown_hash_and_missing_file_are_stale(tree):
    root, _, manifest, reader = tree
    locations = dict(manifest.chunk_locations())
    unknown = b"\x01" * 32
    (root / "c.bin").unlink()
    c_hashes = [h for h, loc in locations.items() if loc.path == "c.bin"]
    a_hashes = [h for h, loc in locations.items() if loc.path == "a.bin"]
    found, stale = reader.read_many([unknown, *c_hashes, *a_hashes], locations)
    assert stale == [unknown, *c_hashes]
    assert [h for h, _ in found] == a_hashes


def test_file_changed_underneath_is_stale(tree):
    root, _, manifest, reader = tree
    locations = manifest.chunk_locations()
    a_hashes = [h for h, loc in locations.items() if loc.path == "a.bin"]
    found, _ = reader.read_many(a_hashes, locations)  # the fd is now cached
    assert len(found) == len(a_hashes)
    first = locations[a_hashes[0]]
    with open(root / "a.bin", "r+b") as fh:  # rewritten in place, same inode
        fh.seek(first.offset)
        fh.write(b"\x00" * 16)
    found, stale = reader.read_many(a_hashes, locations)
    assert stale == [a_hashes[0]]
    assert [h for h, _ in found] == a_hashes[1:]


def test_trusted_chunks_are_not_hashed_again(tree):
    """A peer serving chunks its running sync wrote (and verified) moments ago skips the second
    hash: shown here by bytes changed underneath coming back as they are for a trusted chunk,
    and as stale for the others."""
    root, _, manifest, reader = tree
    locations = manifest.chunk_locations()
    a_hashes = [h for h, loc in locations.items() if loc.path == "a.bin"]
    first, second = (locations[h] for h in a_hashes[:2])
    with open(root / "a.bin", "r+b") as fh:
        for loc in (first, second):
            fh.seek(loc.offset)
            fh.write(b"\x00" * 16)
    found, stale = reader.read_many(a_hashes[:2], locations, trusted={a_hashes[0]})
    assert [h for h, _ in found] == [a_hashes[0]]
    assert found[0][1][:16] == b"\x00" * 16
    assert stale == [a_hashes[1]]


def test_truncated_file_is_stale(tree):
    root, _, manifest, reader = tree
    locations = manifest.chunk_locations()
    a_hashes = [h for h, loc in locations.items() if loc.path == "a.bin"]
    last = locations[a_hashes[-1]]
    os.truncate(root / "a.bin", last.offset + 10)
    found, stale = reader.read_many(a_hashes, locations)
    assert stale == [a_hashes[-1]]
    assert len(found) == len(a_hashes) - 1


def test_symlink_swapped_in_is_refused(tree, tmp_path):
    root, files, manifest, reader = tree
    locations = manifest.chunk_locations()
    # A copy of the expected bytes outside the tree: following the link would "verify".
    outside = tmp_path / "outside.bin"
    outside.write_bytes(files["a.bin"])
    (root / "a.bin").unlink()
    os.symlink(outside, root / "a.bin")
    a_hashes = [h for h, loc in locations.items() if loc.path == "a.bin"]
    found, stale = reader.read_many(a_hashes, locations)
    assert found == []
    assert stale == a_hashes


def test_forget_reopens_a_replaced_file(tree):
    root, _, manifest, reader = tree
    locations = manifest.chunk_locations()
    c_hashes = [h for h, loc in locations.items() if loc.path == "c.bin"]
    reader.read_many(c_hashes, locations)
    new = blob(700, 99)
    tmp = root / "c.new"
    tmp.write_bytes(new)
    os.replace(tmp, root / "c.bin")
    # The cached fd still reads the old inode, whose bytes verify against the old hashes.
    found, stale = reader.read_many(c_hashes, locations)
    assert stale == []
    reader.forget("c.bin")
    found, stale = reader.read_many(c_hashes, locations)
    assert found == []
    assert stale == c_hashes
    first = chunk_bytes(new, PARAMS)[0]
    found, _ = reader.read_many([first.hash], {first.hash: ChunkLocation("c.bin", 0, first.length)})
    assert found == [(first.hash, new[: first.length])]


def test_fd_cache_is_bounded_lru(tmp_path):
    files = {f"f{i}": blob(300, i) for i in range(10)}
    manifest = build(tmp_path / "t", files)
    locations = manifest.chunk_locations()
    by_file = {loc.path: h for h, loc in locations.items()}
    before = open_fds()
    reader = ChunkReader(tmp_path / "t", max_open=3)
    try:
        for i in range(10):
            found, _ = reader.read_many([by_file[f"f{i}"]], locations)
            assert len(found) == 1
            assert len(reader._fds) <= 3
            assert open_fds() - before <= 3
        assert list(reader._fds) == ["f7", "f8", "f9"]
        reader.read_many([by_file["f7"]], locations)  # a hit moves f7 to the young end
        reader.read_many([by_file["f0"]], locations)  # so f8, the oldest, is closed
        assert list(reader._fds) == ["f9", "f7", "f0"]
        assert open_fds() - before == 3
    finally:
        reader.close()
    assert open_fds() == before
    assert reader._fds == {}
