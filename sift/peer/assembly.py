"""Files appear whole or not at all: assemble in `local_dir/.sift/tmp`, then rename into place.

A part file is named after the target path and content digest, so a sync that was killed resumes
with the chunks it already wrote: they are verified at their offsets and kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3

from sift.core.chunk import hash_chunk
from sift.core.manifest import DirEntry, FileEntry, SymlinkEntry
from sift.core.paths import RESERVED_DIR
from sift.libc import libc_function
from sift.peer.patch import (
    SEALED_SUFFIX,
    UNSEALED_SUFFIX,
    Patch,
    PatchError,
    apply_patch,
    build_patch,
    recover_patches,
)
from sift.peer.plan import Run

log = logging.getLogger("sift.peer.assembly")

TMP_SUBDIR = "tmp"
TMP_REL = f"{RESERVED_DIR}/{TMP_SUBDIR}"  # the tmp directory, relative to local_dir
PART_SUFFIX = ".part"


def _load_syncfs():
    """syncfs(2) flushes one filesystem: one call makes a whole batch of part files durable
    before they are renamed, instead of one fsync per small file."""
    return libc_function("syncfs", [ctypes.c_int])


_syncfs = _load_syncfs()


def _load_sync_file_range():
    """sync_file_range(2) with SYNC_FILE_RANGE_WRITE starts writing a file's dirty pages back
    without waiting: a part that is complete starts going to disk while the sync still fetches,
    so the durability step at the commit has little left to wait for."""
    return libc_function(
        "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    )


_sync_file_range = _load_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2
# Early writeback only for parts this large: for a small file the I/O submission costs more
# than it saves (and can block on a busy queue); the commit's syncfs writes small ones in bulk.
WRITEBACK_MIN = 1 << 20


def _load_fallocate():
    """fallocate(2), mode 0: reserve a part's blocks before its chunks arrive. Chunks come in
    random order (peers ask in different orders to spread the load), and on ext4 a random write
    into a sparse file costs about 8x the CPU of the same write into reserved space (measured:
    2.1 s against 0.26 s of system time per GiB of 64 KiB writes). A full disk also shows up
    here, at once, instead of after half the file has been fetched. Not glibc's
    posix_fallocate: where the filesystem has no fallocate it writes a byte into every block."""
    return libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])


_fallocate = _load_fallocate()
# fallocate errors that mean "this filesystem cannot", not a failure: fall back to ftruncate.
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV, errno.EPERM}


def preallocate(fd: int, size: int) -> None:
    """Give a new, empty file its final size, with its blocks reserved where the filesystem
    can. Raises OSError (ENOSPC when the disk cannot hold the file)."""
    if _fallocate is not None and size > 0:
        if _fallocate(fd, 0, 0, size) == 0:
            return
        err = ctypes.get_errno()
        if err not in _NO_FALLOCATE:
            raise OSError(err, os.strerror(err))
    os.ftruncate(fd, size)


FICLONE = 0x40049409  # ioctl: make a file share all of another's extents (btrfs, XFS, ...)


# ioctl(FICLONE) errors that mean "not here" (filesystem, mount or kernel), not a failure.
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}


@dataclass(eq=False)
class PartFile:
    """One file under assembly: which chunk offsets are still to be written.

    A descriptor is held only while chunks are still being written: the file is created on its
    first write and closed as soon as it is complete, so a sync of 20,000 small files never
    holds 20,000 descriptors (nor opens every part up front)."""

    entry: FileEntry
    path: Path
    fd: int | None = None  # held while incomplete and written to
    created: bool = False  # the file exists in tmp (written to, or resumed)
    missing: dict[int, bytes] = field(default_factory=dict)  # offset -> chunk hash
    # An in-place update (see sift.peer.patch): the part is then the patch journal, offsets are
    # the chunks' slots in it, and the live file's mtime must still be `expect_mtime_ns`.
    patch: Patch | None = None
    expect_mtime_ns: int = 0
    # A small part given its mode and mtime as it was completed, and its stat then: the commit
    # only renames it (see Assembler._finish).
    sealed: os.stat_result | None = None
    # Guards fd, created and missing: chunk writes run in several worker threads. One lock per
    # part, not one for all: creating a file (slow on a busy filesystem) or reserving its blocks
    # then holds up only the writes to that file.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def complete(self) -> bool:
        return not self.missing

    def slots(self) -> Iterable[tuple[int, bytes, int]]:
        """(offset in the part file, chunk hash, length) of every chunk the part holds."""
        if self.patch is not None:
            for change in self.patch.changes:
                yield change.slot, change.hash, change.length
            return
        offset = 0
        for chunk in self.entry.iter_chunks():
            yield offset, chunk.hash, chunk.length
            offset += chunk.length

    @property
    def rel(self) -> str:
        """The part file's path relative to local_dir (where its chunks can be read from)."""
        return f"{TMP_REL}/{self.path.name}"

    def missing_bytes(self) -> int:
        """Bytes still to be written: the whole file minus what is already there (a resumed
        part, or a patched file's unchanged chunks)."""
        if self.patch is None and len(self.missing) == self.entry.chunk_count:
            return self.entry.size  # a new part: nothing there yet (the common case)
        return sum(length for slot, _, length in self.slots() if slot in self.missing)


class Assembler:
    def __init__(self, local_dir: Path):
        self.local_dir = Path(local_dir)
        self.tmp_dir = self.local_dir / RESERVED_DIR / TMP_SUBDIR
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._checked_dirs: set[str] = set()
        self._can_reflink: bool | None = None

    def can_reflink(self) -> bool:
        """Whether this filesystem shares extents (FICLONE), probed once with two small files:
        where it can, a rebuilt file costs no copy, so in-place patching gains nothing."""
        if self._can_reflink is None:
            src, dst = self.tmp_dir / "reflink-probe.a", self.tmp_dir / "reflink-probe.b"
            try:
                src.write_bytes(b"\0" * 4096)
                with src.open("rb") as a, dst.open("wb") as b:
                    fcntl.ioctl(b.fileno(), FICLONE, a.fileno())
                self._can_reflink = True
            except OSError:
                self._can_reflink = False
            finally:
                for probe in (src, dst):
                    with contextlib.suppress(FileNotFoundError):
                        probe.unlink()
        return self._can_reflink

    def recover_patches(self) -> int:
        """Finish in-place updates a crash interrupted (see sift.peer.patch)."""
        return recover_patches(self.tmp_dir, self.local_dir, self.ensure_parent)

    def open_patch(
        self, entry: FileEntry, changed: list[tuple[int, int, bytes]], expect_mtime_ns: int
    ) -> PartFile:
        """A journal for patching `entry`'s live file in place with the `changed` chunks
        (offset, length, hash). Always started afresh: it holds only the changed chunks."""
        patch, header = build_patch(entry, changed)
        path = self.part_path(entry).with_suffix(UNSEALED_SUFFIX)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            preallocate(fd, patch.journal_size)
            os.pwrite(fd, header, 0)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)
        part = PartFile(entry=entry, path=path, created=True, patch=patch)
        part.expect_mtime_ns = expect_mtime_ns
        part.missing = {c.slot: c.hash for c in patch.changes}
        return part

    def part_path(self, entry: FileEntry) -> Path:
        name = blake3(entry.path.encode()).hexdigest()[:24] + "-" + entry.digest.hex()[:16]
        return self.tmp_dir / (name + PART_SUFFIX)

    def remove_stale_parts(self, keep: Iterable[Path]) -> int:
        """Delete part files no plan refers to any more (an older target's leftovers)."""
        keep_names = {p.name for p in keep}
        removed = 0
        for item in self.tmp_dir.iterdir():
            if item.name not in keep_names:
                with contextlib.suppress(FileNotFoundError):
                    item.unlink()
                    removed += 1
        return removed

    def existing_parts(self) -> set[str]:
        """Names in the tmp directory: one listing instead of a failed open per new part."""
        with os.scandir(self.tmp_dir) as it:
            return {item.name for item in it}

    def open_part(self, entry: FileEntry, existing: set[str] | None = None) -> PartFile:
        """The part file for `entry`. A part an earlier, interrupted sync left behind is
        resumed: chunks already in it are verified and kept; the rest are listed as missing.
        A new part is not created until its first write. `existing` (from existing_parts())
        spares the lookup of parts that cannot be there."""
        path = self.part_path(entry)
        part = PartFile(entry=entry, path=path)
        try:
            if existing is not None and path.name not in existing:
                raise FileNotFoundError(path)
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            offset = 0
            for chunk in entry.chunks:
                part.missing[offset] = chunk.hash
                offset += chunk.length
            return part
        try:
            existing = os.fstat(fd).st_size
            if existing != entry.size:
                os.ftruncate(fd, 0)
                preallocate(fd, entry.size)
                resume = False
            else:
                resume = existing > 0
            offset = 0
            for chunk in entry.chunks:
                if not (resume and self._chunk_present(fd, offset, chunk.length, chunk.hash)):
                    part.missing[offset] = chunk.hash
                offset += chunk.length
        finally:
            os.close(fd)
        part.created = True
        return part

    def ensure_open(self, part: PartFile, *, reserve: bool = True) -> int:
        """The part's descriptor: the file is created (at its final size, its blocks reserved
        unless `reserve` is off, e.g. before a reflink replaces them) on first use and reopened
        when written to again after it was closed."""
        with part.lock:
            if part.fd is None:
                if part.created:
                    part.fd = os.open(part.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                else:
                    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                    fd = os.open(part.path, flags, 0o600)
                    try:
                        if part.entry.chunk_count > 1:
                            if reserve:
                                preallocate(fd, part.entry.size)
                            else:
                                os.ftruncate(fd, part.entry.size)
                    except OSError:
                        os.close(fd)
                        with contextlib.suppress(OSError):
                            os.unlink(part.path)
                        raise
                    part.fd = fd
                    part.created = True
            return part.fd

    def copy_runs(self, part: PartFile, src_fd: int, runs: list[Run], clone: bool) -> int:
        """Copy byte ranges of the file being replaced into a new part, inside the kernel:
        nothing passes through Python. With `clone`, first try to share every extent of the old
        file (reflink; the runs that kept their offset then cost no copy and no fsync), and fall
        back to copy_file_range, which filesystems without reflink still do in the page cache.
        Returns the bytes copied (cloned ones included)."""
        fd = self.ensure_open(part, reserve=not clone)
        cloned = False
        if clone:
            try:
                fcntl.ioctl(fd, FICLONE, src_fd)
                os.ftruncate(fd, part.entry.size)
                cloned = True
            except OSError as exc:
                if exc.errno not in _NO_CLONE:
                    raise
        done = 0
        for run in runs:
            if cloned and run.src == run.dst:
                done += run.length
                continue
            copied = 0
            while copied < run.length:
                n = os.copy_file_range(
                    src_fd, fd, run.length - copied, run.src + copied, run.dst + copied
                )
                if n == 0:
                    raise OSError(errno.EIO, "the file being replaced ended early")
                copied += n
            done += copied
        return done

    def mark_written(self, part: PartFile, offsets: Iterable[int]) -> None:
        for offset in offsets:
            part.missing.pop(offset, None)

    @staticmethod
    def _chunk_present(fd: int, offset: int, length: int, digest: bytes) -> bool:
        data = os.pread(fd, length, offset)
        return len(data) == length and hash_chunk(data) == digest

    def write(self, part: PartFile, offset: int, data: bytes | memoryview) -> None:
        """Write one chunk (any worker thread). The write that completes the part closes it."""
        if offset not in part.missing:
            return  # already there (resumed, reused, or a duplicate delivery)
        os.pwrite(self.ensure_open(part), data, offset)
        with part.lock:
            part.missing.pop(offset, None)
            if part.missing or part.fd is None:
                return
            fd, part.fd = part.fd, None
        self._finish(part, fd)

    @staticmethod
    def _finish(part: PartFile, fd: int) -> None:
        """A part is complete: start a large one's writeback, or seal a small one (mode, mtime
        and stat while it is open, which spares the commit reopening every small file), and
        close it. (Sealing large parts here was measured slower: metadata changes under
        writeback serialise on ext4.) A mode without owner read and write waits for the
        commit, so that a sync resumed after a crash can still open the part."""
        try:
            entry = part.entry
            if entry.size >= WRITEBACK_MIN:
                if _sync_file_range is not None:
                    _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # a hint: errors ignored
            elif part.patch is None and entry.mode & 0o600 == 0o600:
                os.fchmod(fd, entry.mode)
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
                part.sealed = os.fstat(fd)
        finally:
            os.close(fd)

    def close(self, part: PartFile) -> None:
        """Close once: a second os.close of the same number could close whatever descriptor
        the process has opened under that number since (a socket, the database, a cached
        reader fd)."""
        with part.lock:
            if part.fd is None:
                return
            fd, part.fd = part.fd, None
        with contextlib.suppress(OSError):
            os.close(fd)

    # -- commit -----------------------------------------------------------------------------

    def _sync_tmp_fs(self) -> bool:
        """One syncfs(2) for a whole batch of parts: cheaper than an fsync per small file."""
        if _syncfs is None:
            return False
        fd = os.open(self.tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _syncfs(fd) == 0
        finally:
            os.close(fd)

    def flush_tmp_fs(self) -> None:
        """Write what is dirty on the parts' filesystem to disk now (a background step while a
        sync fetches; durability still comes from the commit)."""
        with contextlib.suppress(OSError):
            self._sync_tmp_fs()

    def commit(self, parts: list[PartFile]) -> list[tuple[FileEntry, os.stat_result]]:
        """Make complete part files durable, give them their mode and mtime, and rename them into
        place; parent directories are fsynced once each. Returns each entry with its final stat
        so the caller can record it without rehashing."""
        for part in parts:
            self.close(part)
        placed: list[tuple[FileEntry, os.stat_result]] = []
        patches = [p for p in parts if p.patch is not None]
        if patches:
            placed.extend(self._apply_patches(patches))
            parts = [p for p in parts if p.patch is None]
        synced = len(parts) > 4 and self._sync_tmp_fs()
        dirs: set[str] = set()
        for part in parts:
            entry = part.entry
            final = self.local_dir / entry.path
            self.ensure_parent(entry.path)
            st = self._seal(part, fsync=not synced)
            self._replace(part.path, final)
            dirs.add(str(final.parent))
            placed.append((entry, st))
        self.fsync_dirs(dirs)
        return placed

    def _apply_patches(self, parts: list[PartFile]) -> list[tuple[FileEntry, os.stat_result]]:
        """Seal every journal (fsync, rename, one directory fsync), then patch the live files:
        from the rename on, a crash is finished by recover_patches() at the next start."""
        sealed = []
        for part in parts:
            fd = os.open(part.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            journal = part.path.with_name(part.path.name.removesuffix(UNSEALED_SUFFIX))
            journal = journal.with_name(journal.name + SEALED_SUFFIX)
            os.replace(part.path, journal)
            part.path = journal
            sealed.append(part)
        self.fsync_dirs([str(self.tmp_dir)])
        placed = []
        for part in sealed:
            try:
                st = apply_patch(
                    part.path, self.local_dir, part.expect_mtime_ns, self.ensure_parent
                )
            except PatchError:
                # Someone changed the file since the scan: not ours to patch; the next sync
                # scans it again and brings it to the master's version the usual way.
                with contextlib.suppress(FileNotFoundError):
                    part.path.unlink()
                raise
            placed.append((part.entry, st))
        return placed

    def _seal(self, part: PartFile, fsync: bool) -> os.stat_result:
        """Durability, mode and mtime for one part at the commit (an empty file's part is
        created here)."""
        if part.sealed is not None and not fsync:
            return part.sealed
        if part.created:
            fd = os.open(part.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        else:
            fd = self.ensure_open(part)
            part.fd = None
        try:
            if fsync:
                os.fsync(fd)
            os.fchmod(fd, part.entry.mode)
            os.utime(fd, ns=(part.entry.mtime_ns, part.entry.mtime_ns))
            return os.fstat(fd)
        finally:
            os.close(fd)

    def ensure_parent(self, rel: str) -> None:
        """Make every directory above `rel` a real directory inside local_dir. Each level is
        checked with lstat (once per sync): a symlink or file where a directory belongs is
        removed, so a write can never be redirected outside the tree."""
        current = self.local_dir
        prefix = ""
        for name in Path(rel).parent.parts:
            prefix = f"{prefix}/{name}" if prefix else name
            current = current / name
            if prefix in self._checked_dirs:
                continue
            self._clear_obstacle(current, want_dir=True)
            if not current.is_dir():
                current.mkdir(mode=0o755)
            self._checked_dirs.add(prefix)

    def forget_checked_dirs(self) -> None:
        """Call at the start of each sync: the tree may have changed since the last one."""
        self._checked_dirs.clear()

    @classmethod
    def _replace(cls, src: Path, final: Path) -> None:
        """Rename `src` over `final` in one step: a file or symlink there is replaced atomically
        (readers see the old file or the new one, never none). Only a directory in the way
        is removed first."""
        try:
            os.replace(src, final)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            cls._clear_obstacle(final, want_dir=False)
            os.replace(src, final)

    @staticmethod
    def _clear_obstacle(path: Path, want_dir: bool) -> None:
        """Remove whatever stands at `path` unless it is already what we want there."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not want_dir:
                # The plan deletes a directory's contents before a file takes its place, so it
                # is empty unless someone wrote into it meanwhile: never remove data silently.
                path.rmdir()
            return
        path.unlink()  # a file or symlink (even one pointing at a directory)

    @staticmethod
    def fsync_dirs(dirs: Iterable[str]) -> None:
        for d in dirs:
            try:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def make_dir(self, entry: DirEntry) -> None:
        path = self.local_dir / entry.path
        self.ensure_parent(entry.path)
        self._clear_obstacle(path, want_dir=True)
        # Owner keeps write access until the final chmod so children can still be placed.
        path.mkdir(mode=0o700, exist_ok=True)

    def set_dir_mode(self, entry: DirEntry) -> None:
        os.chmod(self.local_dir / entry.path, entry.mode)

    def place_symlink(self, entry: SymlinkEntry) -> None:
        final = self.local_dir / entry.path
        self.ensure_parent(entry.path)
        tmp = self.tmp_dir / ("link-" + blake3(entry.path.encode()).hexdigest()[:24])
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(entry.target, tmp)
        self._replace(tmp, final)

    def touch(self, entry: FileEntry) -> os.stat_result:
        path = self.local_dir / entry.path
        os.chmod(path, entry.mode)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
        return os.stat(path)

    def delete(self, rel: str) -> None:
        path = self.local_dir / rel
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                path.rmdir()
            except OSError as exc:
                log.warning("%s: directory not removed: %s", rel, exc.strerror)
        else:
            path.unlink()
