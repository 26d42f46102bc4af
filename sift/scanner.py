"""Walks a directory tree and turns it into manifest entries, rehashing only what changed.

The master scans `watched_dir` to publish manifests; a peer scans `local_dir` to learn what it
already holds. The scan cache (SQLite) maps path -> (size, mtime_ns, inode) -> chunk list, so a
restart or a rescan costs one stat per file plus hashing of the files that really changed. Runs in
a worker thread: it blocks on disk and hashing.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from sift.core.chunk import ChunkParams
from sift.core.chunker import UnstableFileError, chunk_file
from sift.core.manifest import DirEntry, Entry, FileEntry, SymlinkEntry
from sift.core.paths import RESERVED_DIR, UnsafePathError, symlink_target_is_inside, validate_path
from sift.state.scan_cache import ScanCache

log = logging.getLogger("sift.scan")

# A file modified this recently may change again within the same timestamp tick without its
# size or mtime moving ("racy git"); such files are hashed but not trusted from the cache yet.
RACY_WINDOW_NS = 2_000_000_000


@dataclass
class ScanResult:
    entries: list[Entry]
    hashed_files: int = 0
    hashed_bytes: int = 0
    cached_files: int = 0
    unstable: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Scanner:
    def __init__(self, root: Path, cache: ScanCache, params: ChunkParams):
        self.root = Path(root)
        self.cache = cache
        self.params = params
        self._warned: set[str] = set()

    def scan(self, previous: dict[str, Entry] | None = None) -> ScanResult:
        """One pass over the tree. A file that changes while it is hashed keeps its previous
        entry (if any) and is listed in `unstable` so the caller rescans it soon."""
        started = time.monotonic()
        previous = previous or {}
        result = ScanResult(entries=[])
        seen: set[str] = set()
        with self.cache.batch():
            for rel, st in self._walk():
                seen.add(rel)
                entry = self._entry_for(rel, st, previous, result)
                if entry is not None:
                    result.entries.append(entry)
            for gone in self.cache.paths() - seen:
                self.cache.remove(gone)
        result.seconds = time.monotonic() - started
        return result

    def _walk(self):
        """Yield (relative posix path, lstat) for everything under root, parents first."""
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            abs_dir = os.path.join(self.root, rel_dir) if rel_dir else str(self.root)
            try:
                with os.scandir(abs_dir) as it:
                    items = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self._warn(rel_dir or ".", f"cannot list directory: {exc.strerror}")
                continue
            for item in items:
                rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
                if not rel_dir and item.name == RESERVED_DIR:
                    continue
                try:
                    validate_path(rel)
                except UnsafePathError as exc:
                    self._warn(rel, f"skipped: {exc}")
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError as exc:
                    self._warn(rel, f"cannot stat: {exc.strerror}")
                    continue
                yield rel, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(rel)

    def _entry_for(
        self, rel: str, st: os.stat_result, previous: dict[str, Entry], result: ScanResult
    ) -> Entry | None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            return DirEntry(path=rel, mode=stat.S_IMODE(mode))
        if stat.S_ISLNK(mode):
            target = os.readlink(os.path.join(self.root, rel))
            if symlink_target_is_inside(rel, target):
                return SymlinkEntry(path=rel, target=target)
            self._warn(rel, f"symlink skipped: target {target!r} leaves the tree")
            return None
        if not stat.S_ISREG(mode):
            self._warn(rel, "skipped: not a regular file, directory or symlink")
            return None
        return self._file_entry(rel, st, previous, result)

    def _file_entry(
        self, rel: str, st: os.stat_result, previous: dict[str, Entry], result: ScanResult
    ) -> Entry | None:
        cached = self.cache.is_fresh(rel, st.st_size, st.st_mtime_ns, st.st_ino, self.params)
        if cached is not None:
            result.cached_files += 1
            mode = stat.S_IMODE(st.st_mode)
            prev = previous.get(rel)
            if (
                isinstance(prev, FileEntry)
                and prev.size == cached.size
                and prev.mtime_ns == cached.mtime_ns
                and prev.mode == mode
                and prev.hashes == cached.hashes
                and prev.lengths == cached.lengths
            ):
                # The very same entry: share it, so a rescan does not hold a second copy of
                # every unchanged file's chunk list while the old manifest is still in use.
                return prev
            return FileEntry.from_packed(
                rel,
                cached.size,
                mode,
                cached.mtime_ns,
                hashes=cached.hashes,
                lengths=cached.lengths,
            )
        try:
            chunks = chunk_file(os.path.join(self.root, rel), self.params)
        except UnstableFileError:
            result.unstable.append(rel)
            return previous.get(rel)
        except OSError as exc:
            self._warn(rel, f"cannot read: {exc.strerror}")
            return previous.get(rel)
        result.hashed_files += 1
        result.hashed_bytes += chunks.size
        if time.time_ns() - chunks.mtime_ns > RACY_WINDOW_NS:
            self.cache.put(rel, chunks)
        else:
            self.cache.remove(rel)
        return FileEntry.build(
            rel, chunks.size, stat.S_IMODE(chunks.mode), chunks.mtime_ns, chunks.chunks
        )

    def _warn(self, rel: str, message: str) -> None:
        # Once per path and message: a rescan every few seconds must not flood the log.
        key = f"{rel}\0{message}"
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: %s", rel, message)
