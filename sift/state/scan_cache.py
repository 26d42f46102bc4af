"""The master's scan cache: path -> (stat, chunk parameters, chunk list).

A restart rehashes only files whose size, mtime, inode or the chunk parameters changed; every
other file's chunk list comes from here.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from sift.core.chunk import Chunk, ChunkParams, unpack_chunk_list

from ._codec import check_packed, decode_path, encode_path, swap_lengths
from .db import StateError, transaction

__all__ = ["CachedFile", "FileChunksLike", "ScanCache"]


class FileChunksLike(Protocol):
    """What :meth:`ScanCache.put` stores; ``sift.core.chunker.FileChunks`` fits."""

    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def inode(self) -> int: ...
    @property
    def mode(self) -> int: ...
    @property
    def params(self) -> ChunkParams: ...
    @property
    def hashes(self) -> bytes: ...
    @property
    def lengths(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class CachedFile:
    """A file as it was when last chunked (the fields of ``FileChunks``), its chunk list packed
    as in ``FileEntry`` (``hashes``, native u32 ``lengths``): the scanner hands both blobs to
    ``FileEntry.from_packed`` as they are, no per-chunk objects on the way."""

    size: int
    mtime_ns: int
    inode: int
    mode: int
    params: ChunkParams
    hashes: bytes
    lengths: bytes

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        """The chunk list as ``Chunk`` tuples (built on each access)."""
        return unpack_chunk_list(self.hashes, self.lengths)


_COLUMNS = "size, mtime_ns, inode, mode, min_size, avg_size, max_size, hashes, lengths"


class ScanCache:
    """Chunk lists of the watched files, keyed by their path relative to ``watched_dir``.

    Single writes commit on their own; wrap a scan's writes in :meth:`batch` so they commit once.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, path: str) -> CachedFile | None:
        """The cached entry for ``path``, or None."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM scan_cache WHERE path = ?", (encode_path(path),)
        ).fetchone()
        return None if row is None else _row_to_cached(path, row)

    def is_fresh(
        self, path: str, size: int, mtime_ns: int, inode: int, params: ChunkParams
    ) -> CachedFile | None:
        """The cached entry if it still describes the file (same size, mtime, inode and chunk
        parameters), else None: the file must be rechunked.

        Guarding against a write within the filesystem's mtime granularity right after the
        chunking (git's "racily clean" case) is the scanner's job: it knows when it read.
        """
        cached = self.get(path)
        if (
            cached is not None
            and cached.size == size
            and cached.mtime_ns == mtime_ns
            and cached.inode == inode
            and cached.params == params
        ):
            return cached
        return None

    def put(self, path: str, file_chunks: FileChunksLike) -> None:
        """Record (or replace) ``path``'s chunk list and the stat it was taken from."""
        hashes, lengths = file_chunks.hashes, swap_lengths(file_chunks.lengths)
        check_packed(hashes, lengths, path)
        p = file_chunks.params
        self._conn.execute(
            f"INSERT OR REPLACE INTO scan_cache (path, {_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                encode_path(path),
                file_chunks.size,
                file_chunks.mtime_ns,
                file_chunks.inode,
                file_chunks.mode,
                p.min_size,
                p.avg_size,
                p.max_size,
                hashes,
                lengths,
            ),
        )

    def remove(self, path: str) -> bool:
        """Forget ``path``; True if it was cached."""
        cur = self._conn.execute("DELETE FROM scan_cache WHERE path = ?", (encode_path(path),))
        return cur.rowcount > 0

    def paths(self) -> set[str]:
        """Every cached path (to find files that disappeared while the master was down)."""
        return {decode_path(row[0]) for row in self._conn.execute("SELECT path FROM scan_cache")}

    def clear(self) -> None:
        """Forget everything (e.g. after ``watched_dir`` moved)."""
        self._conn.execute("DELETE FROM scan_cache")

    def __len__(self) -> int:
        return self._conn.execute("SELECT count(*) FROM scan_cache").fetchone()[0]

    @contextlib.contextmanager
    def batch(self) -> Iterator[ScanCache]:
        """Group puts and removes into one transaction: all of them or (if the block raises) none.

        A 20,000-file scan is then one commit (one fsync of the WAL) instead of 20,000.
        """
        with transaction(self._conn):
            yield self


def _row_to_cached(path: str, row: tuple) -> CachedFile:
    size, mtime_ns, inode, mode, min_size, avg_size, max_size, hashes, lengths = row
    where = f"scan cache entry {path!r}"
    try:
        params = ChunkParams(min_size, avg_size, max_size)
    except ValueError as e:
        raise StateError(f"{where}: damaged chunk parameters ({e})") from None
    check_packed(hashes, lengths, where)
    return CachedFile(size, mtime_ns, inode, mode, params, bytes(hashes), swap_lengths(lengths))
