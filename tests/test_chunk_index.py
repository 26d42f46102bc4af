"""Packed chunk lists (FileEntry) and the flat hash -> location index (ChunkIndex): the same
answers as the tuples and dict they replace."""

from __future__ import annotations

import copy
import random

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sift.core.chunk import DEFAULT_PARAMS, HASH_SIZE, Chunk, ChunkParams, hash_chunk
from sift.core.chunk_index import ChunkIndex, ChunkLocation
from sift.core.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    chunk_list_digest,
    decode_manifest,
    encode_manifest,
    iter_manifest_parts,
    packed_digest,
)

SMALL = ChunkParams(64, 256, 1024)


def reference_locations(files: list[FileEntry]) -> dict[bytes, ChunkLocation]:
    """What chunk_locations() was before: a dict built by walking the files in order."""
    out: dict[bytes, ChunkLocation] = {}
    for f in files:
        offset = 0
        for chunk in f.chunks:
            out.setdefault(chunk.hash, ChunkLocation(f.path, offset, chunk.length))
            offset += chunk.length
    return out


def entry(path: str, chunks: list[tuple[bytes, int]]) -> FileEntry:
    return FileEntry.build(path, sum(n for _, n in chunks), 0o644, 0, chunks)


def random_files(rng: random.Random, n_files: int, max_chunks: int, pool: int) -> list[FileEntry]:
    """Files drawing hashes from a pool, so some chunks repeat within and across files."""
    hashes = [rng.randbytes(HASH_SIZE) for _ in range(pool)]
    files = []
    for i in range(n_files):
        chunks = [
            (rng.choice(hashes), rng.randint(1, 1024)) for _ in range(rng.randint(0, max_chunks))
        ]
        files.append(entry(f"f{i:05d}", chunks))
    return files


def check_against_reference(files: list[FileEntry]) -> None:
    index = ChunkIndex(files)
    ref = reference_locations(files)
    assert len(index) == len(ref)
    assert list(index) == list(ref)  # first-occurrence order, as the dict iterated
    assert list(index.items()) == list(ref.items())
    for digest, loc in ref.items():
        assert digest in index
        assert index[digest] == loc
        assert index.get(digest) == loc
    assert index == ref
    assert index.keys() == set(ref)


@given(st.integers(0, 2**32), st.integers(0, 30), st.integers(1, 40))
def test_index_matches_a_dict(seed: int, n_files: int, pool: int) -> None:
    check_against_reference(random_files(random.Random(seed), n_files, 12, pool))


def test_index_over_many_buckets() -> None:
    # Enough chunks that the keys are sorted in several buckets, with repeats across files.
    check_against_reference(random_files(random.Random(7), 60, 400, 15_000))


def test_equal_prefixes_are_told_apart_by_the_full_hash() -> None:
    prefix = b"\xab" * 8
    a, b, c, absent = (prefix + bytes([i]) * (HASH_SIZE - 8) for i in range(4))
    files = [entry("x", [(a, 10), (b, 20)]), entry("y", [(c, 5), (b, 7), (a, 1)])]
    check_against_reference(files)
    index = ChunkIndex(files)
    assert index[b] == ChunkLocation("x", 10, 20)
    assert index[c] == ChunkLocation("y", 0, 5)
    assert absent not in index
    assert index.get(absent) is None


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33, "x" * 32, None, 5])
def test_odd_keys_are_absent(key: object) -> None:
    index = ChunkIndex([entry("x", [(b"\x00" * 32, 3)])])
    assert key not in index
    assert index.get(key) is None  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        index[key]  # type: ignore[index]


def test_empty_index() -> None:
    index = ChunkIndex([entry("empty", [])])
    assert len(index) == 0
    assert list(index) == []
    assert hash_chunk(b"x") not in index


def test_manifest_index_is_built_once_and_hashes_view_follows_it() -> None:
    files = random_files(random.Random(3), 5, 10, 20)
    m = Manifest.build(1, SMALL, files)
    assert m.chunk_locations() is m.chunk_locations()
    assert m.chunk_hashes() is m.chunk_hashes()
    assert m.chunk_hashes() == set(reference_locations(files))
    assert len(m.chunk_hashes()) == len(m.chunk_locations())


# --------------------------------------------------------------------------- packed FileEntry


def test_packed_entry_views() -> None:
    chunks = [Chunk(hash_chunk(bytes([i])), 100 + i) for i in range(5)]
    e = FileEntry.build("f", sum(c.length for c in chunks), 0o100644, 1, iter(chunks))
    assert e.mode == 0o644
    assert e.chunks == tuple(chunks)
    assert list(e.iter_chunks()) == chunks
    assert e.chunk_count == 5
    assert list(e.chunk_lengths()) == [100, 101, 102, 103, 104]
    assert e.chunk_hash(4) == chunks[4].hash
    with pytest.raises(IndexError):
        e.chunk_hash(5)
    assert e.hashes == b"".join(c.hash for c in chunks)
    assert e == FileEntry.from_packed("f", e.size, 0o644, 1, hashes=e.hashes, lengths=e.lengths)
    assert copy.deepcopy(e) == e
    assert hash(copy.copy(e)) == hash(e)
    with pytest.raises(AttributeError):
        e.size = 5  # type: ignore[misc]
    assert e != FileEntry.build("f", e.size, 0o644, 2, chunks)  # another mtime
    assert "size=510" in repr(e)


@pytest.mark.parametrize(
    ("chunks", "match"),
    [
        ([(b"\x00" * 31, 1)], "32-byte hash"),
        ([(b"\x00" * 32, -1)], "chunk 0 length"),
        ([(b"\x00" * 32, 1), (b"\x00" * 32, 2**32)], "chunk 1 length"),
        ([(b"\x00" * 32, "1")], "chunk 0 length"),
    ],
)
def test_build_refuses_what_cannot_be_packed(chunks: list, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        FileEntry.build("f", 1, 0o644, 0, chunks)


@pytest.mark.parametrize("n", [0, 1, 16, 17, 8192, 8193, 20_000])
def test_packed_digest_matches_the_chunk_list_digest(n: int) -> None:
    rng = random.Random(n)
    chunks = [Chunk(rng.randbytes(HASH_SIZE), rng.randint(1, 2**32 - 1)) for _ in range(n)]
    e = FileEntry.build("f", sum(c.length for c in chunks), 0o644, 0, chunks)
    assert packed_digest(e.hashes, e.lengths) == chunk_list_digest(chunks)
    assert e.digest == chunk_list_digest(chunks)


def test_encoding_in_parts_is_the_same_document() -> None:
    rng = random.Random(5)
    files = [
        entry(f"d/f{i:03d}", [(rng.randbytes(HASH_SIZE), rng.randint(16_384, 262_144))] * 3)
        for i in range(300)
    ]
    # Large entries are encoded piece by piece: lengths below and above 2**16, a hash blob
    # past bin 16, a tail of fewer than 16 lengths after a full piece.
    for name, n in (("big1", 1025), ("big2", 2048 + 7), ("big3", 5000)):
        files.append(
            entry(name, [(rng.randbytes(HASH_SIZE), rng.randint(1, 262_144)) for _ in range(n)])
        )
    m = Manifest.build(4, DEFAULT_PARAMS, files)
    parts = list(iter_manifest_parts(m, part_size=4096))
    assert len(parts) > 1
    data = b"".join(parts)
    assert data == encode_manifest(m)
    # Byte for byte the documented wire shape, packed as one list.
    wire = [
        "sift-manifest",
        1,
        4,
        [DEFAULT_PARAMS.min_size, DEFAULT_PARAMS.avg_size, DEFAULT_PARAMS.max_size],
        [
            [
                0,
                f.path,
                f.size,
                f.mode,
                f.mtime_ns,
                f.hashes,
                [c.length for c in f.chunks],
                f.digest,
            ]
            for f in m.files()
        ],
    ]
    assert data == msgpack.packb(wire, use_bin_type=True)
    assert decode_manifest(data) == m
