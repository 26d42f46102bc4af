"""How state rows encode paths and chunk lists.

Chunk lists: one BLOB of concatenated hashes and one of big-endian u32 lengths. About 36 bytes a
chunk and two column values a file instead of a row per chunk: a 20,000-file scan writes 20,000
rows, and reading a list back is slicing plus one ``struct.unpack``.

Paths are stored as ``os.fsencode`` bytes, so a file name that is not valid UTF-8 (which the
scanner may still meet before it decides to skip it) can never make a write fail.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from collections.abc import Sequence

from sift.core.chunk import HASH_SIZE, LENGTH_CODE, Chunk

from .db import StateError


def pack_chunks(chunks: Sequence[Chunk]) -> tuple[bytes, bytes]:
    """``(hashes, lengths)`` blobs for a chunk list."""
    for chunk in chunks:
        if len(chunk.hash) != HASH_SIZE:
            raise ValueError(f"chunk hash must be {HASH_SIZE} bytes, got {len(chunk.hash)}")
    hashes = b"".join(c.hash for c in chunks)
    try:
        lengths = struct.pack(f">{len(chunks)}I", *(c.length for c in chunks))
    except struct.error as e:
        raise ValueError(f"chunk length out of range: {e}") from None
    return hashes, lengths


def unpack_chunks(hashes: bytes, lengths: bytes, where: str) -> tuple[Chunk, ...]:
    """The chunk list stored as ``(hashes, lengths)``; StateError (naming ``where``) when the two
    blobs disagree, which only a damaged database produces."""
    check_packed(hashes, lengths, where)
    n = len(lengths) // 4
    sizes = struct.unpack(f">{n}I", lengths)
    return tuple(
        Chunk(hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE], size) for i, size in enumerate(sizes)
    )


def check_packed(hashes: bytes, lengths: bytes, where: str) -> None:
    """StateError (naming ``where``) unless the two blobs describe the same number of chunks."""
    n, rest = divmod(len(lengths), 4)
    if rest or len(hashes) != n * HASH_SIZE:
        raise StateError(
            f"{where}: damaged chunk list ({len(hashes)} hash bytes, {len(lengths)} length bytes)"
        )


def swap_lengths(lengths: bytes) -> bytes:
    """Stored (big-endian) u32 lengths <-> in-memory (native, ``FileEntry.lengths``) ones: the
    same function both ways, a no-op on a big-endian machine."""
    if sys.byteorder == "big":
        return bytes(lengths)
    values = array(LENGTH_CODE)
    values.frombytes(lengths)
    values.byteswap()
    return values.tobytes()


def encode_path(path: str) -> bytes:
    """The stored key for ``path``."""
    return os.fsencode(path)


def decode_path(key: bytes) -> str:
    """The path for a stored key (inverse of :func:`encode_path`)."""
    return os.fsdecode(key)
