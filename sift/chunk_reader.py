"""Read chunk bytes straight from files at recorded offsets, verified: no chunk store.

The master serves chunks from the watched files this way, so its memory stays flat; a peer reads
its own files (and part files) the same way to copy chunks locally and to serve other peers.

Each chunk is read at its recorded offset and hashed before it is sent. A mismatch means the file
changed since it was scanned: the chunk is answered "stale" and the caller rescans.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Container, Mapping, Sequence
from pathlib import Path

from sift.core.chunk import hash_chunk
from sift.core.manifest import ChunkLocation


class ChunkReader:
    def __init__(self, root: Path, max_open: int = 64):
        self.root = Path(root)
        self.max_open = max_open
        self._fds: OrderedDict[str, int] = OrderedDict()  # LRU of open files, by relative path
        # Reads run in worker threads; the lock keeps one thread from closing a descriptor
        # another is reading (or reading a reused descriptor number).
        self._lock = threading.Lock()

    def read_many(
        self,
        hashes: Sequence[bytes],
        locations: Mapping[bytes, ChunkLocation],
        trusted: Container[bytes] = (),
    ) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        """Read and verify each chunk (except those in `trusted`: verified by the caller when it
        wrote them, moments ago, where nobody else writes). Returns (found, stale). Blocking:
        run in a thread."""
        with self._lock:
            return self._read_many(hashes, locations, trusted)

    def _read_many(
        self,
        hashes: Sequence[bytes],
        locations: Mapping[bytes, ChunkLocation],
        trusted: Container[bytes],
    ) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        found: list[tuple[bytes, bytes]] = []
        stale: list[bytes] = []
        for digest in hashes:
            loc = locations.get(digest)
            data = self._read(loc) if loc is not None else None
            if data is not None and (digest in trusted or hash_chunk(data) == digest):
                found.append((digest, data))
            else:
                stale.append(digest)
        return found, stale

    def _read(self, loc: ChunkLocation) -> bytes | None:
        fd = self._open(loc.path)
        if fd is None:
            return None
        try:
            data = os.pread(fd, loc.length, loc.offset)
        except OSError:
            self._forget(loc.path)
            return None
        return data if len(data) == loc.length else None

    def _open(self, rel: str) -> int | None:
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        try:
            # O_NOFOLLOW: a file replaced by a symlink must not make us read outside the tree.
            fd = os.open(self.root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        self._fds[rel] = fd
        while len(self._fds) > self.max_open:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def forget(self, rel: str) -> None:
        """Close a cached descriptor: the file was replaced, a fresh open sees the new inode."""
        with self._lock:
            self._forget(rel)

    def _forget(self, rel: str) -> None:
        fd = self._fds.pop(rel, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._close_all()

    def _close_all(self) -> None:
        while self._fds:
            _, fd = self._fds.popitem()
            os.close(fd)
