"""Walks a directory tree and turns it into manifest entries, rehashing only what changed.

The master scans `watched_dir` to publish manifests; a peer scans `local_dir` to learn what it
already holds. The scan cache (SQLite) maps path -> (size, mtime_ns, inode) -> chunk list, so a
restart or a rescan costs one stat per file plus hashing of the files that really changed. Runs in
a worker thread: it blocks on disk and hashing.

A scan walks the whole tree first (cheap: one lstat per entry), then hashes what the cache could not
answer. When that is at least ``helper_min_bytes`` and the process may use two CPUs, a helper
process hashes alongside this thread (``sift.chunk_pool``); the entries keep their walk order
whoever hashed them, so the result is the same either way.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from sift.chunk_pool import Helper, chunk_jobs, helper_cpus, start_helper
from sift.core.chunk import ChunkParams
from sift.core.chunker import FileChunks, UnstableFileError, chunk_file
from sift.core.manifest import DirEntry, Entry, FileEntry, SymlinkEntry
from sift.core.paths import RESERVED_DIR, UnsafePathError, symlink_target_is_inside, validate_path
from sift.state.scan_cache import ScanCache

log = logging.getLogger("sift.scan")

# A file modified this recently may change again within the same timestamp tick without its
# size or mtime moving ("racy git"); such files are hashed but not trusted from the cache yet.
RACY_WINDOW_NS = 2_000_000_000
# Hash this much or more and a helper process shares the work (its start-up costs ~50 ms).
HELPER_MIN_BYTES = 64 << 20


_HASH = object()  # _entry_for's answer for a file the cache cannot answer: chunk it


def _chunk_here(path: str, params: ChunkParams) -> FileChunks:
    # chunk_file looked up at call time, so tests can wrap it.
    return chunk_file(path, params)


@dataclass
class ScanResult:
    entries: list[Entry]
    hashed_files: int = 0
    hashed_bytes: int = 0
    cached_files: int = 0
    unstable: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Scanner:
    def __init__(
        self,
        root: Path,
        cache: ScanCache,
        params: ChunkParams,
        *,
        helper_min_bytes: int | None = HELPER_MIN_BYTES,
    ):
        self.root = Path(root)
        self.cache = cache
        self.params = params
        # None: never start a helper process (hash on this thread only).
        self.helper_min_bytes = helper_min_bytes
        self._warned: set[str] = set()
        self._cache_empty = False  # set by each scan

    def scan(self, previous: dict[str, Entry] | None = None) -> ScanResult:
        """One pass over the tree. A file that changes while it is hashed keeps its previous
        entry (if any) and is listed in `unstable` so the caller rescans it soon."""
        started = time.monotonic()
        previous = previous or {}
        result = ScanResult(entries=[])
        # Walk order. A file to hash holds its path until its entry replaces it; a file that
        # could not be read and had no previous entry ends as None.
        slots: list[Entry | str | None] = []
        to_hash: list[tuple[int, str, int]] = []  # (slot, relative path, size)
        pending = 0  # bytes in to_hash
        want_helper = self.helper_min_bytes is not None and helper_cpus() > 1
        helper: Helper | None = None
        # An empty cache (a first scan) answers nothing: skip a query per file, and the search
        # for paths that disappeared (so no set of every path seen either).
        self._cache_empty = len(self.cache) == 0
        seen: set[str] | None = None if self._cache_empty else set()
        try:
            with self.cache.batch():
                for rel, st in self._walk():
                    if seen is not None:
                        seen.add(rel)
                    entry = self._entry_for(rel, st, previous, result)
                    if entry is _HASH:
                        to_hash.append((len(slots), rel, st.st_size))
                        slots.append(rel)  # until its entry is made
                        pending += st.st_size
                        if want_helper and pending >= self.helper_min_bytes and len(to_hash) > 1:
                            # Start it now: it gets ready while the walk goes on.
                            want_helper = False
                            helper = start_helper()
                    elif entry is not None:
                        slots.append(entry)
                self._hash(to_hash, slots, previous, result, helper)
                if seen is not None:
                    for gone in self.cache.paths() - seen:
                        self.cache.remove(gone)
        finally:
            if helper is not None:
                helper.stop()  # normally done already; not if the walk raised
        result.entries = [e for e in slots if e is not None and not isinstance(e, str)]
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
    ) -> Entry | object | None:
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
    ) -> Entry | object:
        """The file's entry from the cache, or ``_HASH``: it must be chunked."""
        if self._cache_empty:
            return _HASH
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
        return _HASH

    def _hash(
        self,
        to_hash: list[tuple[int, str, int]],
        slots: list[Entry | str | None],
        previous: dict[str, Entry],
        result: ScanResult,
        helper: Helper | None,
    ) -> None:
        """Chunk the files the cache could not answer and put their entries in their slots."""
        if not to_hash:
            return
        # Before any read: a file modified less than RACY_WINDOW_NS before this may change again
        # within its timestamp tick unnoticed, so it is not cached (read time >= this time).
        hash_started_ns = time.time_ns()
        unstable: list[tuple[int, str]] = []
        # The (slot, path, size) tuples are the jobs themselves, keyed by slot, and each slot
        # holds its path until the entry replaces it: per file, nothing but what the walk made.
        outcomes = chunk_jobs(
            to_hash, self.params, chunk=_chunk_here, helper=helper, root=str(self.root)
        )
        for slot, outcome in outcomes:
            rel = slots[slot]
            assert isinstance(rel, str)
            if isinstance(outcome, FileChunks):
                slots[slot] = self._hashed_entry(rel, outcome, hash_started_ns, result)
            elif isinstance(outcome, UnstableFileError):
                unstable.append((slot, rel))
                slots[slot] = previous.get(rel)
            else:
                self._warn(rel, f"cannot read: {outcome.strerror}")
                slots[slot] = previous.get(rel)
        result.unstable.extend(rel for _slot, rel in sorted(unstable))  # in walk order

    def _hashed_entry(
        self, rel: str, chunks: FileChunks, hash_started_ns: int, result: ScanResult
    ) -> FileEntry:
        result.hashed_files += 1
        result.hashed_bytes += chunks.size
        if hash_started_ns - chunks.mtime_ns > RACY_WINDOW_NS:
            self.cache.put(rel, chunks)
        else:
            self.cache.remove(rel)
        return FileEntry.from_packed(
            rel,
            chunks.size,
            stat.S_IMODE(chunks.mode),
            chunks.mtime_ns,
            hashes=chunks.hashes,
            lengths=chunks.lengths,
        )

    def _warn(self, rel: str, message: str) -> None:
        # Once per path and message: a rescan every few seconds must not flood the log.
        key = f"{rel}\0{message}"
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: %s", rel, message)
