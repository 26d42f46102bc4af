"""A manifest's chunk hash -> location index, in flat arrays instead of a dict.

The master answers every chunk request by looking up where the chunk's bytes are; a dict of
``ChunkLocation`` tuples cost ~300 bytes per chunk, which at 20 GiB of data (300k chunks) is
most of the master's memory. This index costs 16 bytes per chunk on top of the file entries'
packed chunk lists, which it reads the hashes and lengths from:

* ``_offsets``: every chunk reference's offset in its file, in manifest order (position ``pos``
  = the chunk's number counting through all files in path order);
* ``_starts``: each file's first position, so ``bisect`` turns a position into (file, chunk);
* ``_keys``: one u64 per distinct hash, sorted: the hash's first 8 bytes with the low bits
  replaced by the position of its first occurrence. A lookup bisects for the prefix and checks
  the full hash in the file entry, so equal prefixes cost a second comparison, never a wrong
  answer.

Building sorts the keys bucket by bucket (by their top bits, which BLAKE3 spreads evenly), so
the only transient memory is the keys themselves plus one small bucket as Python ints.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import ItemsView, Iterable, Iterator, Mapping
from itertools import accumulate
from typing import NamedTuple, Protocol

from sift.core.chunk import HASH_SIZE

__all__ = ["ChunkIndex", "ChunkLocation"]

_PREFIX = struct.Struct("=Q")  # the same byte order array("Q") reads prefixes with
_BUCKET = 4096  # keys sorted at once as Python ints while building
_U64 = (1 << 64) - 1


class ChunkLocation(NamedTuple):
    """Where a chunk's bytes can be read: ``length`` bytes at ``offset`` in file ``path``."""

    path: str
    offset: int
    length: int


class PackedFile(Protocol):
    """What the index reads from a file entry (``FileEntry`` fits)."""

    @property
    def path(self) -> str: ...
    @property
    def hashes(self) -> bytes: ...
    @property
    def chunk_count(self) -> int: ...
    def chunk_lengths(self) -> memoryview: ...
    def chunk_length(self, i: int) -> int: ...
    def chunk_hash(self, i: int) -> bytes: ...
    def has_chunk(self, i: int, digest: bytes) -> bool: ...


def _prefixes(hashes: bytes) -> array:
    """The first 8 bytes of each 32-byte hash as u64s, gathered by strided copies in C."""
    n = len(hashes) // HASH_SIZE
    buf = bytearray(8 * n)
    for j in range(8):
        buf[j::8] = hashes[j::HASH_SIZE]
    out = array("Q")
    out.frombytes(buf)
    return out


class ChunkIndex(Mapping[bytes, ChunkLocation]):
    """Read-only mapping: each distinct chunk hash -> its first occurrence (files in the order
    given, then offset). Iterates in that order too. ``keys()`` is a set-like view."""

    __slots__ = ("_files", "_head", "_keys", "_mask", "_offsets", "_starts")

    def __init__(self, files: Iterable[PackedFile]) -> None:
        self._files = [f for f in files if f.chunk_count]
        self._starts = array("Q")
        self._offsets = array("Q")
        total = 0
        for f in self._files:
            self._starts.append(total)
            total += f.chunk_count
            # Each chunk's offset: the running sum of the lengths before it, in C.
            self._offsets.append(0)
            self._offsets.extend(accumulate(f.chunk_lengths()[:-1]))
        # Low bits of a key hold the position; the rest is the hash prefix.
        self._mask = (1 << max(total.bit_length(), 1)) - 1
        self._head = ~self._mask & _U64
        self._keys = self._sorted_keys(total)

    def _sorted_keys(self, total: int) -> array:
        bucket_bits = max(total // _BUCKET, 1).bit_length() - 1
        shift = 64 - bucket_bits
        buckets = [array("Q") for _ in range(1 << bucket_bits)]
        head = self._head
        for start, f in zip(self._starts, self._files, strict=True):
            for pos, prefix in enumerate(_prefixes(f.hashes), start):
                key = (prefix & head) | pos
                buckets[key >> shift].append(key)
        keys = array("Q")
        for b in range(len(buckets)):
            bucket, buckets[b] = buckets[b], None  # free each bucket once it is sorted
            self._append_distinct(keys, sorted(bucket))
        return keys

    def _append_distinct(self, keys: array, bucket: list[int]) -> None:
        """Append ``bucket``'s keys, dropping later occurrences of a hash already seen. Equal
        hashes have equal prefixes, so they sit in one run of equal prefixes, first occurrence
        first (the position breaks ties)."""
        mask, keep = self._mask, self._head
        i, n = 0, len(bucket)
        while i < n:
            j = i + 1
            head = bucket[i] & keep
            while j < n and bucket[j] & keep == head:
                j += 1
            if j == i + 1:
                keys.append(bucket[i])
            else:
                seen: set[bytes] = set()
                for key in bucket[i:j]:
                    digest = self._hash_at_pos(key & mask)
                    if digest not in seen:
                        seen.add(digest)
                        keys.append(key)
            i = j

    # -- positions ---------------------------------------------------------------------------

    def _file_at(self, pos: int) -> tuple[PackedFile, int]:
        i = bisect_right(self._starts, pos) - 1
        return self._files[i], pos - self._starts[i]

    def _hash_at_pos(self, pos: int) -> bytes:
        f, chunk = self._file_at(pos)
        return f.chunk_hash(chunk)

    def _location_at_pos(self, pos: int) -> ChunkLocation:
        f, chunk = self._file_at(pos)
        return ChunkLocation(f.path, self._offsets[pos], f.chunk_length(chunk))

    def _find(self, digest: object) -> tuple[int, PackedFile, int] | None:
        """Where ``digest`` first occurs: (position, file, chunk number in it), or None."""
        if type(digest) is not bytes or len(digest) != HASH_SIZE:
            return None
        mask, keep = self._mask, self._head
        head = _PREFIX.unpack_from(digest)[0] & keep
        keys = self._keys
        i = bisect_left(keys, head)
        while i < len(keys) and keys[i] & keep == head:
            pos = keys[i] & mask
            f, chunk = self._file_at(pos)
            if f.has_chunk(chunk, digest):
                return pos, f, chunk
            i += 1
        return None

    # -- Mapping ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, digest: object) -> bool:
        return self._find(digest) is not None

    def __getitem__(self, digest: bytes) -> ChunkLocation:
        found = self._find(digest)
        if found is None:
            raise KeyError(digest)
        pos, f, chunk = found
        return ChunkLocation(f.path, self._offsets[pos], f.chunk_length(chunk))

    def get(self, digest: bytes, default: ChunkLocation | None = None) -> ChunkLocation | None:
        found = self._find(digest)
        if found is None:
            return default
        pos, f, chunk = found
        return ChunkLocation(f.path, self._offsets[pos], f.chunk_length(chunk))

    def __iter__(self) -> Iterator[bytes]:
        for _pos, digest in self._first_occurrences():
            yield digest

    def items(self) -> ItemsView[bytes, ChunkLocation]:
        return _Items(self)

    def _iter_items(self) -> Iterator[tuple[bytes, ChunkLocation]]:
        for pos, digest in self._first_occurrences():
            yield digest, self._location_at_pos(pos)

    def _first_occurrences(self) -> Iterator[tuple[int, bytes]]:
        """(position, hash) of each distinct hash, in manifest order, as a dict built by
        walking the files would iterate: the positions the keys hold are the first ones."""
        first = bytearray(len(self._offsets))
        mask = self._mask
        for key in self._keys:
            first[key & mask] = 1
        pos = 0
        for f in self._files:
            for chunk in range(f.chunk_count):
                if first[pos]:
                    yield pos, f.chunk_hash(chunk)
                pos += 1


class _Items(ItemsView):
    """Items without a second lookup per key."""

    _mapping: ChunkIndex

    def __iter__(self) -> Iterator[tuple[bytes, ChunkLocation]]:
        return self._mapping._iter_items()
