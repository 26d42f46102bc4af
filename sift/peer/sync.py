"""One sync: bring `local_dir` to a target manifest.

1. scan `local_dir` (cached: only changed files are rehashed) and plan the difference;
2. open part files in `.sift/tmp` (resuming what a killed sync already wrote);
3. copy every chunk that already exists in a local file (a rename or a duplicate costs nothing);
4. fetch the rest (peers first, the master last), verifying each chunk's BLAKE3;
5. commit: remove what the target lacks, create directories, rename complete files into place,
   place symlinks, fix modes and mtimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path

from sift.chunk_reader import ChunkReader
from sift.core.chunk import hash_chunk
from sift.core.chunker import FileChunks
from sift.core.manifest import ChunkLocation, DirEntry, FileEntry, Manifest
from sift.peer.assembly import Assembler, PartFile
from sift.peer.fetch import ChunkSource, Fetcher, FetchStats, ManifestOutdated
from sift.peer.patch import PatchError, changed_chunks
from sift.peer.plan import SyncPlan, make_plan, reusable_runs
from sift.scanner import Scanner
from sift.state import ScanCache

log = logging.getLogger("sift.peer.sync")

COPY_BATCH = 256  # local chunk copies read per step (bounds memory to ~BATCH x max chunk size)
CURRENT_FILES = 16  # recent destinations remembered for "files being written now"
# While chunks arrive, every this many bytes written start a background syncfs: the data goes
# to disk while the network is the bottleneck, and the commit's own syncfs has little left.
FLUSH_EVERY = 64 << 20


@dataclass
class SyncProgress:
    """What the running sync has done so far, for status and the console. Updated from the
    worker threads that store chunks (plain int and deque updates, safe under the GIL)."""

    version: int
    files_to_write: int = 0
    files_to_delete: int = 0
    bytes_total: int = 0  # bytes of the files being written
    bytes_done: int = 0  # of those, bytes stored so far (resumed, copied locally or fetched)
    current: deque[str] = field(default_factory=lambda: deque(maxlen=CURRENT_FILES))

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "files_to_write": self.files_to_write,
            "files_to_delete": self.files_to_delete,
            "bytes_total": self.bytes_total,
            "bytes_done": min(self.bytes_done, self.bytes_total),
            "current": list(dict.fromkeys(reversed(self.current))),
        }


# Below this many reusable bytes, the generic chunk copy is as cheap as a kernel copy.
REUSE_MIN_BYTES = 1 << 20


@dataclass
class SyncReport:
    version: int
    files_written: int = 0
    files_deleted: int = 0
    bytes_copied_locally: int = 0
    bytes_reused: int = 0  # copied in the kernel from the file each new one replaces
    files_patched: int = 0  # of files_written, patched in place (update_in_place)
    fetch: FetchStats = field(default_factory=FetchStats)
    seconds: float = 0.0


class LocalChunks:
    """Where this peer can read each chunk it holds: final files and part files alike. Used to
    copy chunks locally and to serve them to other peers. Reads verify the hash."""

    def __init__(self, local_dir: Path):
        self.reader = ChunkReader(local_dir)
        self.locations: dict[bytes, ChunkLocation] = {}
        self.pending: set[bytes] = set()  # chunks the running sync is still fetching
        self._arrived = asyncio.Event()

    def reset(self, locations: dict[bytes, ChunkLocation]) -> None:
        self.locations = locations
        self.reader.close()

    def add(self, digest: bytes, location: ChunkLocation) -> None:
        self.locations[digest] = location

    def announce_arrivals(self) -> None:
        self._arrived.set()
        self._arrived = asyncio.Event()

    async def wait_for_arrivals(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def locations_of(entries) -> dict[bytes, ChunkLocation]:
    out: dict[bytes, ChunkLocation] = {}
    for entry in entries:
        if isinstance(entry, FileEntry):
            offset = 0
            for chunk in entry.chunks:
                out.setdefault(chunk.hash, ChunkLocation(entry.path, offset, chunk.length))
                offset += chunk.length
    return out


class Syncer:
    def __init__(
        self,
        local_dir: Path,
        cache: ScanCache,
        chunks: LocalChunks,
        source: ChunkSource,
        on_progress: Callable[[list[bytes]], None] | None = None,
        *,
        on_start: Callable[[SyncProgress], None] | None = None,
        update_in_place: bool = False,
    ):
        self.local_dir = Path(local_dir)
        self.update_in_place = update_in_place
        self.cache = cache
        self.chunks = chunks
        self.source = source
        self.assembler = Assembler(self.local_dir)
        self.assembler.recover_patches()  # a crash mid-patch is finished before anything reads
        self.on_progress = on_progress or (lambda added: None)
        self.on_start = on_start or (lambda progress: None)
        self._written: set[bytes] = set()  # chunks stored in part files by the running sync
        self.progress: SyncProgress | None = None  # set while a sync with work to do runs
        self.fetcher: Fetcher | None = None  # set while chunks are being fetched (for hints)
        self.committing = False  # part files are being placed: their locations are moving
        self._unflushed = 0  # bytes stored since the last background flush started
        self._flushing: asyncio.Future | None = None

    def fresh_chunks(self) -> Container[bytes]:
        """Chunks the running sync verified and wrote into its own part files. Served from
        there to other peers, they need no second hash: the part files are ours alone, written
        moments ago, and the receiver verifies every chunk anyway (about 3/8 of all hashing in
        an initial sync to 4 peers)."""
        return self._written if self.progress is not None else ()

    async def scan_local(self, target: Manifest) -> dict:
        scanner = Scanner(self.local_dir, self.cache, target.params)
        result = await asyncio.to_thread(scanner.scan)
        return {e.path: e for e in result.entries}

    async def run(self, target: Manifest) -> SyncReport:
        started = time.monotonic()
        phases: dict[str, float] = {}

        def lap(name: str) -> None:
            phases[name] = time.monotonic() - started - sum(phases.values())

        report = SyncReport(version=target.version)
        self.assembler.forget_checked_dirs()
        await asyncio.to_thread(self.assembler.recover_patches)  # before the scan looks
        local = await self.scan_local(target)
        self.chunks.reset(locations_of(local.values()))
        plan = make_plan(local, target)
        lap("scan")
        if plan.is_empty:
            self.chunks.reset(locations_of(target.entries.values()))
            report.seconds = time.monotonic() - started
            return report
        parts = await asyncio.to_thread(self._open_parts, plan, local)
        self.progress = SyncProgress(
            target.version,
            files_to_write=len(plan.write),
            files_to_delete=len(plan.delete),
            bytes_total=sum(p.entry.size for p in parts),
            bytes_done=sum(p.entry.size - p.missing_bytes() for p in parts),
        )
        self.on_start(self.progress)
        lap("open")
        try:
            report.bytes_reused = await asyncio.to_thread(self._reuse_replaced, parts, local)
            self.progress.bytes_done += report.bytes_reused
            lap("reuse")
            dests = self._destinations(parts)
            report.bytes_copied_locally = await self._copy_local(dests)
            lap("copy")
            needed = [h for h in dests if h not in self._written]
            if needed:
                lengths = {c.hash: c.length for f in plan.write for c in f.chunks}
                self.chunks.pending = set(needed)
                self.fetcher = Fetcher(self.source, self._make_sink(dests), lengths)
                try:
                    report.fetch = await self.fetcher.fetch(needed)
                finally:
                    self.fetcher = None
                    if self._flushing is not None:
                        await asyncio.gather(self._flushing, return_exceptions=True)
            lap("fetch")
            self.committing = True
            try:
                await asyncio.to_thread(self._commit, plan, parts, report)
            except PatchError as exc:
                raise ManifestOutdated(f"{exc}; syncing again") from None
            finally:
                self.committing = False
            lap("commit")
        finally:
            self.progress = None
            self.chunks.pending = set()
            for part in parts:
                self.assembler.close(part)
        self.chunks.reset(locations_of(target.entries.values()))
        report.seconds = time.monotonic() - started
        log.debug("sync phases: %s", ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()))
        return report

    # -- steps ------------------------------------------------------------------------------

    def _open_parts(self, plan: SyncPlan, local: dict) -> list[PartFile]:
        existing = self.assembler.existing_parts()
        parts = []
        for entry in plan.write:
            part = self._open_patch(entry, local) if self.update_in_place else None
            parts.append(part or self.assembler.open_part(entry, existing))
        self.assembler.remove_stale_parts(p.path for p in parts)
        return parts

    def _open_patch(self, entry: FileEntry, local: dict) -> PartFile | None:
        """A journal to patch the live file in place, when `update_in_place` is on, the file
        keeps its size and most of its chunks, and the filesystem cannot reflink (where it can,
        rebuilding the file is as cheap and stays atomic)."""
        old = local.get(entry.path)
        if not isinstance(old, FileEntry):
            return None
        changed = changed_chunks(old, entry)
        if changed is None or self.assembler.can_reflink():
            return None
        return self.assembler.open_patch(entry, changed, old.mtime_ns)

    def _reuse_replaced(self, parts: list[PartFile], local: dict) -> int:
        """Copy what a changed file keeps from its previous version straight from that file,
        inside the kernel (worker thread). A one-byte edit in a large file then costs a kernel
        copy (or a reflink) plus the changed chunk, not a read, hash and write of every chunk."""
        total = 0
        for part in parts:
            old = local.get(part.entry.path)
            if part.created or not isinstance(old, FileEntry) or not old.chunks:
                continue  # resumed parts keep their own bytes; nothing to reuse from a non-file
            runs, covered = reusable_runs(old, part.entry)
            if sum(r.length for r in runs) < REUSE_MIN_BYTES:
                continue
            total += self._copy_from_replaced(part, old, runs, covered)
        return total

    def _copy_from_replaced(self, part: PartFile, old: FileEntry, runs, covered) -> int:
        try:
            fd = os.open(self.local_dir / old.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            before = os.fstat(fd)
            if (
                not stat.S_ISREG(before.st_mode)
                or before.st_size != old.size
                or before.st_mtime_ns != old.mtime_ns
            ):
                return 0  # not the file the scan described: take the verified path
            same_place = sum(r.length for r in runs if r.src == r.dst)
            copied = self.assembler.copy_runs(
                part, fd, runs, clone=2 * same_place >= part.entry.size
            )
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if _identity(after) != _identity(before):
            # It changed while we copied: count nothing, every chunk is written the usual way.
            return 0
        self.assembler.mark_written(part, covered)
        return copied

    def _destinations(self, parts: list[PartFile]) -> dict[bytes, list[tuple[PartFile, int]]]:
        self._written.clear()
        dests: dict[bytes, list[tuple[PartFile, int]]] = {}
        for part in parts:
            if part.patch is not None:
                for slot, digest in part.missing.items():
                    dests.setdefault(digest, []).append((part, slot))
                continue  # the unchanged chunks are where they were: in the live file
            rel = part.rel
            for offset, digest, length in part.slots():
                if offset in part.missing:
                    dests.setdefault(digest, []).append((part, offset))
                else:  # already in the part file from an earlier, interrupted sync
                    self.chunks.add(digest, ChunkLocation(rel, offset, length))
        return dests

    async def _copy_local(self, dests: dict[bytes, list[tuple[PartFile, int]]]) -> int:
        local = [h for h in dests if h in self.chunks.locations]
        copied = 0
        for i in range(0, len(local), COPY_BATCH):
            locations = self.chunks.locations
            where = {h: loc for h in local[i : i + COPY_BATCH] if (loc := locations.get(h))}
            found, _stale = await asyncio.to_thread(
                self.chunks.reader.read_many, list(where), where
            )
            await asyncio.to_thread(self._store, found, dests)
            copied += sum(len(d) for _, d in found)
        return copied

    def _store(self, found: list[tuple[bytes, bytes]], dests) -> None:
        """Write verified chunks to every place that needs them (worker thread)."""
        progress = self.progress
        for digest, data in found:
            for part, offset in dests.get(digest, ()):
                self.assembler.write(part, offset, data)
                if progress is not None:
                    progress.bytes_done += len(data)
                    progress.current.append(part.entry.path)
            self._written.add(digest)

    def _make_sink(self, dests):
        async def sink(batch: list[tuple[bytes, bytes]], source: str) -> list[bytes]:
            def verify_and_store() -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
                good, bad = [], []
                for digest, data in batch:
                    (good if hash_chunk(data) == digest else bad).append((digest, data))
                self._store(good, dests)
                return good, [d for d, _ in bad]

            good, bad = await asyncio.to_thread(verify_and_store)
            for digest, data in good:
                part, offset = dests[digest][0]
                rel = part.rel
                self.chunks.add(digest, ChunkLocation(rel, offset, len(data)))
                self.chunks.pending.discard(digest)
            if good:
                self.chunks.announce_arrivals()
                self.on_progress([d for d, _ in good])
                self._unflushed += sum(len(data) for _, data in good)
                if self._unflushed >= FLUSH_EVERY and (
                    self._flushing is None or self._flushing.done()
                ):
                    self._unflushed = 0
                    self._flushing = asyncio.ensure_future(
                        asyncio.to_thread(self.assembler.flush_tmp_fs)
                    )
            return bad

        return sink

    def _commit(self, plan: SyncPlan, parts: list[PartFile], report: SyncReport) -> None:
        asm = self.assembler
        for rel in plan.delete:
            asm.delete(rel)
            self.cache.remove(rel)
        report.files_deleted = len(plan.delete)
        for entry in plan.make_dirs:
            asm.make_dir(entry)
        incomplete = [p.entry.path for p in parts if not p.complete]
        if incomplete:
            raise RuntimeError(f"sync ended with {len(incomplete)} incomplete file(s)")
        placed = asm.commit(parts)
        with self.cache.batch():
            for entry, st in placed:
                self._remember(entry, st, plan.target)
            for entry in plan.touch:
                self._remember(entry, asm.touch(entry), plan.target)
        report.files_written = len(placed)
        report.files_patched = sum(1 for p in parts if p.patch is not None)
        for link in plan.links:
            asm.place_symlink(link)
        # Directory modes last and deepest first: a read-only directory must not block its own
        # children from being placed.
        dirs = [e for e in plan.target.entries.values() if isinstance(e, DirEntry)]
        for entry in sorted(dirs, key=lambda e: e.path, reverse=True):
            asm.set_dir_mode(entry)

    def _remember(self, entry: FileEntry, st, target: Manifest) -> None:
        """Record a placed file in the scan cache so the next scan does not rehash it."""
        self.cache.put(
            entry.path,
            FileChunks(
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                st.st_mode,
                target.params,
                entry.hashes,
                entry.lengths,
            ),
        )
