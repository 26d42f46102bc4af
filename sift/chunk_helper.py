"""The hashing helper process that ``sift.chunk_pool`` starts: ``python -m sift.chunk_helper``.

It reads units ``(params, [path, ...])`` from stdin and answers each with one list of outcomes on
stdout, in the same order: a :class:`FileChunks`, or the :class:`UnstableFileError` / ``OSError``
that ``chunk_file`` raised. Frames are a 4-byte big-endian length and a pickle (both ends are this
sift, started by the master itself). It exits when stdin closes. It imports only the chunker,
so it stays small (~26 MB resident: the interpreter, blake3, fastcdc with click, the 4 MiB read
buffer).
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable

from sift.core.chunk import ChunkParams
from sift.core.chunker import FileChunks, UnstableFileError, chunk_file, load_fastcdc

__all__ = ["Outcome", "chunk_one", "encode_frame", "read_frame", "write_all"]

Outcome = FileChunks | UnstableFileError | OSError
_HEADER = struct.Struct(">I")


def chunk_one(
    path: str, params: ChunkParams, chunk: Callable[[str, ChunkParams], FileChunks] = chunk_file
) -> Outcome:
    """``chunk(path, params)``, with the two expected failures returned instead of raised."""
    try:
        return chunk(path, params)
    except (UnstableFileError, OSError) as exc:
        return exc


def encode_frame(obj: object) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def write_all(fd: int, data: bytes) -> None:
    sent = 0
    while sent < len(data):  # a pipe takes at most its capacity at a time
        with memoryview(data)[sent:] as rest:
            sent += os.write(fd, rest)


def read_frame(fd: int) -> object:
    """The next object on ``fd``; EOFError when the other end closed (between frames or not)."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    parts = []
    while size:
        part = os.read(fd, min(size, 1 << 20))
        if not part:
            raise EOFError("the other end closed the pipe")
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def main() -> int:
    # The master handles Ctrl-C and stops us by closing our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.dup(1)
    os.dup2(2, 1)  # a stray print must not corrupt the reply stream
    load_fastcdc()  # import it now, while the master is still walking its tree
    try:
        while True:
            params, paths = read_frame(0)
            write_all(replies, encode_frame([chunk_one(path, params) for path in paths]))
    except (EOFError, BrokenPipeError):  # the master is done with us (or gone)
        return 0


if __name__ == "__main__":
    sys.exit(main())
