"""Patching a large file in place, crash-safe, for filesystems that cannot reflink.

The normal way a changed file reaches a peer is a new file in `.sift/tmp`, renamed over the old
one. Where the filesystem can reflink (XFS, btrfs) the unchanged bytes cost nothing; elsewhere
(ext4) they are copied and made durable, so a one-byte edit in a 100 GiB file rewrites 100 GiB on
every peer. With `update_in_place = true` a file that keeps its size and most of its chunks is
patched where it stands instead, through a journal:

1. the changed chunks are fetched into a journal file `<name>.patch.part` in `.sift/tmp`: a
   header (which file, its expected size, new mode and mtime, and where each chunk goes) and
   the chunks' bytes;
2. when every chunk is in and verified, the journal is fsynced and renamed to `<name>.patch`
   (sealed) and the directory fsynced;
3. the chunks are written into the live file at their offsets, the file is fsynced and given
   its new mode and mtime, and the journal is deleted.

A crash before step 2 leaves the live file untouched (the unsealed journal is discarded). A
crash after it leaves a sealed journal, which :func:`recover_patches` applies again at the
next start (writing the same bytes twice is harmless). What is given up is atomicity for
readers: a program reading the file during step 3 may see some chunks old and some new, which
is why this is off by default.

Journal layout: ``b"SFPJ"``, u32 big-endian header length, msgpack header
``["sift-patch", 1, path, size, mode, mtime_ns, [[offset, length, hash], ...]]``, then the
chunks' bytes back to back in that order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from sift.core.chunk import HASH_SIZE, hash_chunk
from sift.core.manifest import FileEntry
from sift.core.paths import UnsafePathError, validate_path

log = logging.getLogger("sift.peer.patch")

MAGIC = b"SFPJ"
TAG = "sift-patch"
FORMAT = 1
UNSEALED_SUFFIX = ".patch.part"
SEALED_SUFFIX = ".patch"
_PREFIX = struct.Struct(">4sI")
MAX_HEADER = 64 << 20

# A file is patched in place only when it is at least this large and at most this share of it
# changed: below that, rebuilding it costs little and keeps readers' view atomic.
MIN_SIZE = 1 << 20
MAX_CHANGED_SHARE = 0.5


class PatchError(Exception):
    """A journal that cannot be applied (malformed, or the file is not the one it patches)."""


@dataclass(frozen=True)
class Change:
    offset: int  # in the live file
    length: int
    hash: bytes
    slot: int  # where the bytes sit in the journal


@dataclass(frozen=True)
class Patch:
    """What a journal says: chunks to write into the file at `path` of `size` bytes."""

    path: str
    size: int
    mode: int
    mtime_ns: int
    changes: tuple[Change, ...]

    @property
    def journal_size(self) -> int:
        last = self.changes[-1]
        return last.slot + last.length


def changed_chunks(old: FileEntry, new: FileEntry) -> list[tuple[int, int, bytes]] | None:
    """The chunks of `new` that are not already at the same offset in `old`, as (offset,
    length, hash); None when the file is not a candidate for patching (size changed, too
    small, or too much changed)."""
    if old.size != new.size or new.size < MIN_SIZE:
        return None
    have: set[tuple[int, int, bytes]] = set()
    offset = 0
    for chunk in old.chunks:
        have.add((offset, chunk.length, chunk.hash))
        offset += chunk.length
    changed = []
    offset = 0
    for chunk in new.chunks:
        key = (offset, chunk.length, chunk.hash)
        if key not in have:
            changed.append(key)
        offset += chunk.length
    if not changed or sum(c[1] for c in changed) > MAX_CHANGED_SHARE * new.size:
        return None
    return changed


def build_patch(entry: FileEntry, changed: list[tuple[int, int, bytes]]) -> tuple[Patch, bytes]:
    """The patch for `entry` and the journal's header bytes (prefix included); the chunks'
    slots follow the header."""
    rows = [[offset, length, digest] for offset, length, digest in changed]
    body = msgpack.packb(
        [TAG, FORMAT, entry.path, entry.size, entry.mode, entry.mtime_ns, rows],
        use_bin_type=True,
    )
    header = _PREFIX.pack(MAGIC, len(body)) + body
    return _patch_from(
        entry.path, entry.size, entry.mode, entry.mtime_ns, rows, len(header)
    ), header


def _patch_from(path, size, mode, mtime_ns, rows, slot: int) -> Patch:  # noqa: PLR0917
    changes = []
    for offset, length, digest in rows:
        changes.append(Change(offset, length, digest, slot))
        slot += length
    return Patch(path, size, mode, mtime_ns, tuple(changes))


def read_patch(fd: int) -> Patch:
    """Parse and check a journal's header (chunk bytes are checked when applied)."""
    prefix = os.pread(fd, _PREFIX.size, 0)
    if len(prefix) != _PREFIX.size:
        raise PatchError("journal too short")
    magic, length = _PREFIX.unpack(prefix)
    if magic != MAGIC or length > MAX_HEADER:
        raise PatchError("not a sift patch journal")
    body = os.pread(fd, length, _PREFIX.size)
    try:
        tag, fmt, path, size, mode, mtime_ns, rows = msgpack.unpackb(body, use_list=True)
    except Exception as exc:
        raise PatchError(f"malformed journal header: {exc}") from None
    if tag != TAG or fmt != FORMAT or not rows:
        raise PatchError("not a sift patch journal (or an unknown format)")
    try:
        validate_path(path)
    except UnsafePathError as exc:
        raise PatchError(f"journal names an unsafe path: {exc}") from None
    for row in rows:
        if (
            len(row) != 3
            or not all(isinstance(v, int) and v >= 0 for v in row[:2])
            or not isinstance(row[2], bytes)
            or len(row[2]) != HASH_SIZE
            or row[0] + row[1] > size
        ):
            raise PatchError("journal lists a chunk outside the file")
    return _patch_from(path, size, mode, mtime_ns, rows, _PREFIX.size + length)


def _chunks(fd: int, patch: Patch) -> Iterator[tuple[Change, bytes]]:
    for change in patch.changes:
        data = os.pread(fd, change.length, change.slot)
        if len(data) != change.length or hash_chunk(data) != change.hash:
            raise PatchError(f"journal chunk at {change.offset} of {patch.path} is damaged")
        yield change, data


def apply_patch(
    journal: Path,
    local_dir: Path,
    expect_mtime_ns: int | None,
    check_parent: Callable[[str], None],
) -> os.stat_result:
    """Write a sealed journal's chunks into the live file, make it durable, give it its new mode
    and mtime, and delete the journal. `expect_mtime_ns` (None when recovering after a crash)
    guards against a file someone changed since it was scanned; `check_parent(path)` makes sure
    no symlink above the file leads out of `local_dir`. Returns the file's stat."""
    jfd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        patch = read_patch(jfd)
        chunks = list(_chunks(jfd, patch))  # all verified before the file is touched
    finally:
        os.close(jfd)
    check_parent(patch.path)
    target = local_dir / patch.path
    fd = os.open(target, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != patch.size:
            raise PatchError(f"{patch.path} is not the file the patch was made for")
        if expect_mtime_ns is not None and st.st_mtime_ns != expect_mtime_ns:
            raise PatchError(f"{patch.path} changed since it was scanned")
        for change, data in chunks:
            os.pwrite(fd, data, change.offset)
        os.fsync(fd)
        os.fchmod(fd, patch.mode)
        os.utime(fd, ns=(patch.mtime_ns, patch.mtime_ns))
        st = os.fstat(fd)
    finally:
        os.close(fd)
    os.unlink(journal)
    return st


def recover_patches(tmp_dir: Path, local_dir: Path, check_parent: Callable[[str], None]) -> int:
    """At start: finish every sealed patch a crash interrupted, discard unsealed ones (their
    files were never touched). Returns the number applied."""
    applied = 0
    try:
        names = sorted(os.listdir(tmp_dir))
    except FileNotFoundError:
        return 0
    for name in names:
        path = tmp_dir / name
        if name.endswith(UNSEALED_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        elif name.endswith(SEALED_SUFFIX):
            try:
                st = apply_patch(path, local_dir, None, check_parent)
            except (PatchError, OSError) as exc:
                # The file is then whatever the crash left; its changed mtime makes the next
                # scan rehash it and the sync repair it.
                log.error("could not finish an interrupted in-place update (%s): %s", name, exc)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            applied += 1
            log.info("finished an interrupted in-place update (%d bytes, %s)", st.st_size, name)
    return applied
