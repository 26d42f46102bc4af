"""Cut bytes and files into content-defined chunks (FastCDC) named by BLAKE3.

Design notes, so nobody has to re-measure them:

* Cutting uses fastcdc's *compiled* module only. The package's ``__init__`` silently falls back
  to pure Python (~200x slower), which for a tool that rescans terabytes is a hang, not a
  degradation, so we refuse it loudly (:class:`ChunkerUnavailable`).
* Files are mmapped and every chunk is hashed through a ``memoryview`` slice of the map:
  slicing a memoryview is zero-copy, slicing the mmap itself would copy each chunk onto the
  Python heap. Page-cache pages are not Python heap, so memory stays flat for any file size.
* Cutting and hashing run serially on one thread. blake3 does release the GIL, but fastcdc_cy
  holds it for the whole cut, so a hashing thread waits out the interpreter's switch interval
  on every chunk: measured, a one-worker pipeline was ~10% *slower* than serial.
"""

from __future__ import annotations

import errno
import importlib
import importlib.machinery
import mmap
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sift.core.chunk import DEFAULT_PARAMS, Chunk, ChunkParams, hash_chunk

__all__ = [
    "ChunkerUnavailable",
    "FileChunks",
    "UnstableFileError",
    "chunk_bytes",
    "chunk_file",
    "iter_chunk_spans",
    "load_fastcdc",
]

_FASTCDC_MODULE = "fastcdc.fastcdc_cy"

Buffer = bytes | bytearray | memoryview


class ChunkerUnavailable(RuntimeError):
    """fastcdc's compiled chunker cannot be loaded; sift will not run on the pure-Python one."""


class UnstableFileError(Exception):
    """The file changed (content, size, identity or metadata) while it was being chunked.

    The chunk list would describe no version of the file that ever existed, so none is
    returned; callers should retry later or report the file as busy.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        super().__init__(f"file changed while it was read: {self.path}")


@dataclass(frozen=True, slots=True)
class FileChunks:
    """A file's chunk list plus the stat it was taken from and the parameters that cut it.

    ``size``/``mtime_ns``/``inode``/``mode`` are from the fstat taken *before* reading and are
    verified unchanged afterwards, so they describe exactly the bytes the chunks name.
    """

    size: int
    mtime_ns: int
    inode: int
    mode: int  # full st_mode (type bits and permissions)
    params: ChunkParams
    chunks: tuple[Chunk, ...]


def load_fastcdc() -> Callable[..., Iterator[Any]]:
    """Return the compiled ``fastcdc_cy`` function, or raise :class:`ChunkerUnavailable`.

    Looked up on every call (a ``sys.modules`` hit after the first) rather than cached, so that
    importing sift never fails on a broken install and tests can make it fail via sys.modules.
    """
    try:
        module = importlib.import_module(_FASTCDC_MODULE)
        compiled = isinstance(
            getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader
        )
        func = module.fastcdc_cy if compiled else None
    except (ImportError, AttributeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if func is not None:
            return func
        reason = f"{_FASTCDC_MODULE} is not a compiled extension"
    raise ChunkerUnavailable(
        f"sift needs fastcdc's compiled chunker {_FASTCDC_MODULE} ({reason}); the pure-Python "
        "fallback is ~200x slower, so fix the install: reinstall the fastcdc binary wheel for "
        f"this Python ({sys.executable} -m pip install --force-reinstall "
        "--only-binary=fastcdc fastcdc)"
    )


def iter_chunk_spans(
    view: Buffer | mmap.mmap, params: ChunkParams = DEFAULT_PARAMS
) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of each content-defined chunk of ``view``, in order.

    Cut points only, no hashing. ``view`` is not copied: fastcdc slices it as a memoryview.
    """
    spans = load_fastcdc()(view, params.min_size, params.avg_size, params.max_size)
    try:
        for span in spans:
            yield span.offset, span.length
    finally:
        # Drop fastcdc's own memoryviews of ``view`` now, not at garbage collection, so the
        # caller can close the underlying mmap even when iteration stopped early.
        spans.close()


def _chunk_view(view: memoryview, params: ChunkParams) -> tuple[Chunk, ...]:
    """Cut ``view`` (a 1-D unsigned-byte memoryview) and hash each chunk in place."""
    cut = load_fastcdc()
    hash_ = hash_chunk  # looked up per call (tests wrap it), not per chunk
    chunks: list[Chunk] = []
    append = chunks.append
    spans = cut(view, params.min_size, params.avg_size, params.max_size)
    try:
        for span in spans:
            start = span.offset
            length = span.length
            # Zero-copy slice, released at once so no export outlives the mmap it points into.
            with view[start : start + length] as piece:
                append(Chunk(hash_(piece), length))
    finally:
        spans.close()  # see iter_chunk_spans: release fastcdc's views even on error
    return tuple(chunks)


def chunk_bytes(data: Buffer, params: ChunkParams = DEFAULT_PARAMS) -> tuple[Chunk, ...]:
    """Chunk an in-memory buffer. Same bytes and params give the same chunks as chunk_file."""
    with memoryview(data) as raw, raw.cast("B") as view:  # fastcdc wants unsigned bytes
        return _chunk_view(view, params)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    # ctime and mode on top of size/mtime: a writer that restores mtime afterwards (touch -r,
    # rsync -t) still moves ctime, and a chmod mid-read would make the recorded mode stale.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def chunk_file(path: str | os.PathLike[str], params: ChunkParams = DEFAULT_PARAMS) -> FileChunks:
    """Chunk a regular file read through an mmap, and prove it did not change meanwhile.

    The fd's fstat before reading is compared with its fstat after, and with ``os.stat(path)``
    after (catches the file being replaced by rename or deleted); any difference raises
    :class:`UnstableFileError`, never a list mixing old and new content.

    Raises ``OSError`` (EINVAL) for anything but a regular file, and the usual ``OSError`` for
    a missing or unreadable path. Known limit of mmap: if another process *truncates* the file
    while it is being read, touching the vanished pages raises SIGBUS and the process dies.
    """
    load_fastcdc()  # fail before touching the file system
    fspath = os.fspath(path)
    # O_NONBLOCK: opening a FIFO must not hang waiting for a writer; regular files ignore it.
    fd = os.open(fspath, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", fspath)
        chunks: tuple[Chunk, ...] = ()
        if before.st_size:  # mmap refuses length 0; an empty file has no chunks
            chunks = _chunk_fd(fd, before.st_size, params, fspath)
        after = os.fstat(fd)
        try:
            at_path = os.stat(fspath)
        except FileNotFoundError as exc:
            raise UnstableFileError(fspath) from exc
        if not _identity(before) == _identity(after) == _identity(at_path):
            raise UnstableFileError(fspath)
    finally:
        os.close(fd)
    return FileChunks(
        size=before.st_size,
        mtime_ns=before.st_mtime_ns,
        inode=before.st_ino,
        mode=before.st_mode,
        params=params,
        chunks=chunks,
    )


# Bytes of a file cut per step. Pages of the map a step is done with are dropped from this
# process (MADV_DONTNEED; they stay in the page cache), so the scanner's resident memory stays
# about one window whatever the file's size, instead of growing to the largest file's size.
WINDOW = 8 * 1024 * 1024


def _chunk_fd(fd: int, size: int, params: ChunkParams, fspath: str) -> tuple[Chunk, ...]:
    """Map exactly ``size`` bytes of ``fd`` (the size we recorded) and chunk them."""
    try:
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except ValueError as exc:  # "mmap length is greater than file size": it shrank since fstat
        raise UnstableFileError(fspath) from exc
    try:
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            # Bigger readahead on cold files, and pages behind us are cheap to reclaim.
            mm.madvise(mmap.MADV_SEQUENTIAL)
        with memoryview(mm) as view:
            return _chunk_windows(mm, view, size, params)
    finally:
        mm.close()  # every memoryview of it is released by now, so this cannot BufferError


def _chunk_windows(
    mm: mmap.mmap, view: memoryview, size: int, params: ChunkParams
) -> tuple[Chunk, ...]:
    """Cut a window at a time. FastCDC decides each cut from the bytes after the chunk's start
    only, so every chunk of a window but the last is the one a whole-file pass finds; the last
    may be cut short by the window's end, so it is not hashed and the next window starts at its
    start."""
    if size <= WINDOW:
        return _chunk_view(view, params)
    cut = load_fastcdc()
    hash_ = hash_chunk
    chunks: list[Chunk] = []
    append = chunks.append
    start = dropped = 0
    drop = getattr(mmap, "MADV_DONTNEED", None)
    while start < size:
        end = min(size, start + max(WINDOW, 2 * params.max_size))
        last = (0, 0)
        with view[start:end] as window:
            spans = cut(window, params.min_size, params.avg_size, params.max_size)
            try:
                for span in spans:
                    offset, length = last
                    if length:
                        with window[offset : offset + length] as piece:
                            append(Chunk(hash_(piece), length))
                    last = (span.offset, span.length)
            finally:
                spans.close()  # see iter_chunk_spans
            if end == size:
                offset, length = last
                with window[offset : offset + length] as piece:
                    append(Chunk(hash_(piece), length))
                start = size
            else:
                start += last[0]
        done = start - start % mmap.PAGESIZE
        if drop is not None and done > dropped:
            mm.madvise(drop, dropped, done - dropped)
            dropped = done
    return tuple(chunks)
