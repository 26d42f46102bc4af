"""Cut bytes and files into content-defined chunks (FastCDC) named by BLAKE3.

Design notes, so nobody has to re-measure them:

* Cutting uses fastcdc's *compiled* module only. The package's ``__init__`` silently falls back
  to pure Python (~200x slower), which for a tool that rescans terabytes is a hang, not a
  degradation, so we refuse it loudly (:class:`ChunkerUnavailable`).
* Files are read with ``preadv`` into one reusable buffer per thread (a few MiB), and every
  chunk is cut and hashed through ``memoryview`` slices of it (zero-copy; slicing bytes would
  copy each chunk). Not mmap: a file another process truncates under a map raises SIGBUS on
  the next touch of a vanished page, which Python cannot catch, so one ``truncate`` of a watched
  file would kill the master. A read just comes back short. Measured: the extra copy from the
  page cache costs about as much as mmap's page faults did, so throughput is unchanged.
* Reading block by block keeps the cut identical to cutting the whole file at once: FastCDC
  decides each cut from at most ``max_size`` bytes after the chunk's start, so a chunk is taken
  only when that many bytes (or the end of the file) are in the buffer; the rest of the block
  moves to the front and is cut again with the next block.
* Cutting and hashing run serially on one thread. blake3 does release the GIL, but fastcdc_cy
  holds it for the whole cut, so a hashing thread waits out the interpreter's switch interval
  on every chunk: measured, a one-worker pipeline was ~10% *slower* than serial, and two
  threads each chunking their own files ~25% slower. A scan with much to hash uses a second
  *process* instead (``sift.chunk_pool``).
"""

from __future__ import annotations

import errno
import importlib
import importlib.machinery
import mmap
import os
import stat
import sys
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sift.core.chunk import (
    DEFAULT_PARAMS,
    LENGTH_CODE,
    Chunk,
    ChunkParams,
    hash_chunk,
    pack_chunk_list,
    unpack_chunk_list,
)

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
READ_BLOCK = 4 * 1024 * 1024  # bytes read per step; at least 4x max_size is used (see below)

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
    # The chunk list packed as in FileEntry: hashes concatenated, lengths as native u32. A
    # 3 GiB file has ~45k chunks: as Chunk tuples that was ~8 MB of objects per file being
    # scanned (twice with the hashing helper), the master's peak memory in a big scan.
    hashes: bytes
    lengths: bytes

    @classmethod
    def from_chunks(
        cls,
        chunks: Iterable[tuple[bytes, int]],
        *,
        size: int,
        mtime_ns: int,
        inode: int,
        mode: int,
        params: ChunkParams,
    ) -> FileChunks:
        """From a list of (hash, length) pairs (e.g. a manifest entry's chunks)."""
        return cls(size, mtime_ns, inode, mode, params, *pack_chunk_list(chunks))

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        """The chunk list as ``Chunk`` tuples (built on each access)."""
        return unpack_chunk_list(self.hashes, self.lengths)


_checked: tuple[object, Callable[..., Iterator[Any]]] | None = None  # (module, its fastcdc_cy)


def load_fastcdc() -> Callable[..., Iterator[Any]]:
    """Return the compiled ``fastcdc_cy`` function, or raise :class:`ChunkerUnavailable`.

    Checked on first use, not at import, so that importing sift never fails on a broken install.
    Later calls only confirm ``sys.modules`` still holds the module that passed the check (a
    dict lookup: this runs for every file), so tests can still make it fail via sys.modules.
    """
    global _checked  # noqa: PLW0603 - a one-entry cache of the check below
    checked = _checked
    if checked is not None and sys.modules.get(_FASTCDC_MODULE) is checked[0]:
        return checked[1]
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
            _checked = (module, func)
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
    """Chunk a regular file, read block by block, and prove it did not change meanwhile.

    The fd's fstat before reading is compared with its fstat after, and with ``os.stat(path)``
    after (catches the file being replaced by rename or deleted); any difference, or a read that
    comes back short because the file was truncated, raises :class:`UnstableFileError`, never a
    list mixing old and new content.

    Raises ``OSError`` (EINVAL) for anything but a regular file, and the usual ``OSError`` for
    a missing or unreadable path.
    """
    load_fastcdc()  # fail before touching the file system
    fspath = os.fspath(path)
    # O_NONBLOCK: opening a FIFO must not hang waiting for a writer; regular files ignore it.
    fd = os.open(fspath, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", fspath)
        packed = (b"", b"")
        if before.st_size:
            packed = _chunk_fd(fd, before.st_size, params, fspath)
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
        hashes=packed[0],
        lengths=packed[1],
    )


_buffers = threading.local()


def _read_buffer(size: int) -> bytearray:
    """This thread's reusable read buffer, grown to at least ``size`` bytes. Reusing it spares
    allocating (and zeroing) megabytes per file when a scan walks many small files."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = bytearray(size)
        _buffers.buf = buf
    return buf


def _chunk_fd(fd: int, size: int, params: ChunkParams, fspath: str) -> tuple[bytes, bytes]:
    """Read exactly ``size`` bytes of ``fd`` (the size we recorded) block by block, cutting
    and hashing as they arrive."""
    cut = load_fastcdc()
    hash_ = hash_chunk  # looked up per call (tests wrap it), not per chunk
    max_size = params.max_size
    block = min(size, max(READ_BLOCK, 4 * max_size))
    buf = _read_buffer(block)
    if size > block and hasattr(os, "posix_fadvise"):
        # Bigger readahead on cold files (what MADV_SEQUENTIAL did for the old mmap); a file
        # read in one go gains nothing from it, and a scan meets thousands of those.
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)
    hashes = bytearray()
    lengths = array(LENGTH_CODE)
    add_length = lengths.append
    filled = 0  # bytes at the front of buf not yet cut into accepted chunks
    read = 0  # bytes of the file read so far
    with memoryview(buf) as whole:
        while True:
            while filled < block and read < size:
                with whole[filled : min(block, filled + size - read)] as room:
                    n = os.preadv(fd, [room], read)
                if n == 0:  # the file is shorter than its fstat said: truncated under us
                    raise UnstableFileError(fspath)
                filled += n
                read += n
            at_end = read == size
            taken = 0  # where the next chunk starts; >= max_size bytes follow it (see above)
            with whole[:filled] as data:
                spans = cut(data, params.min_size, params.avg_size, max_size)
                try:
                    for span in spans:
                        length = span.length
                        with data[taken : taken + length] as piece:
                            hashes += hash_(piece)
                        add_length(length)
                        taken += length
                        if not at_end and filled - taken < max_size:
                            # The next cut could move once more bytes are in: stop before
                            # fastcdc computes it, and cut it with the next block.
                            break
                finally:
                    spans.close()  # release fastcdc's views of buf before it is moved
            if at_end:
                return bytes(hashes), lengths.tobytes()
            buf[: filled - taken] = buf[taken:filled]  # same-size slice copy: no resize
            filled -= taken
