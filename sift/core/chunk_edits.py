"""A changed file's chunk list as edits of its previous one, so a manifest delta scales with the
change, not with the file.

A file's manifest entry lists every chunk (36 bytes each on the wire): a one-byte edit in a
1 GiB file would otherwise resend 16k chunk refs (590 KB) to every peer, a 100 GiB file 59 MB.
An edit list says how to build the new list from the old one::

    ops = [op, ...]
    op  = [start, count]          # copy `count` chunks of the old list, from index `start`
        | [hashes, [length, ...]] # new chunks: one bin of concatenated 32-byte hashes

Pure functions, no I/O. Lists are handled packed, as in :class:`sift.core.manifest.FileEntry`:
hashes concatenated, lengths as native-endian u32. Decoding trusts nothing: shapes and bounds
are checked here, and the caller checks the rebuilt list against the entry's digest.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

from sift.core.chunk import HASH_SIZE, LENGTH_CODE, Chunk

Op = tuple[int, int] | tuple[bytes, tuple[int, ...]]

# Send edits only when they are at most this share of the whole list's size on the wire.
WORTH_IT = 0.5
_RUN_BYTES = 12  # about what a [start, count] costs in msgpack
_CHUNK_BYTES = HASH_SIZE + 5  # a hash in the blob plus its length in the array


class ChunkEditError(ValueError):
    """An edit list that does not describe a chunk list built from the given old one."""


def edit_ops(old: Sequence[Chunk], new: Sequence[Chunk]) -> tuple[Op, ...]:
    """Edits that turn `old` into `new`: runs of old chunks in order (at their place, or shifted
    by an insertion) and the chunks that are new."""
    first: dict[tuple[bytes, int], int] = {}
    for i, chunk in enumerate(old):
        first.setdefault((chunk.hash, chunk.length), i)
    ops: list[Op] = []
    fresh: list[Chunk] = []
    run_start, run_count = -1, 0
    for chunk in new:
        if run_count and run_start + run_count < len(old) and old[run_start + run_count] == chunk:
            run_count += 1  # the run goes on
            continue
        if run_count:
            ops.append((run_start, run_count))
            run_count = 0
        j = first.get((chunk.hash, chunk.length))
        if j is None:
            fresh.append(chunk)
            continue
        if fresh:
            ops.append((b"".join(c.hash for c in fresh), tuple(c.length for c in fresh)))
            fresh = []
        run_start, run_count = j, 1
    if run_count:
        ops.append((run_start, run_count))
    if fresh:
        ops.append((b"".join(c.hash for c in fresh), tuple(c.length for c in fresh)))
    return tuple(ops)


def worth_sending(ops: Sequence[Op], chunk_count: int) -> bool:
    """Whether the edits are clearly smaller than the whole list."""
    size = sum(_RUN_BYTES if type(a) is int else 8 + len(b) * _CHUNK_BYTES for a, b in ops)
    return size <= WORTH_IT * chunk_count * _CHUNK_BYTES


def checked_ops(raw: Any, max_length: int) -> tuple[Op, ...]:
    """Edits as they came off the wire, checked for shape: every op a [start, count] of
    non-negative ints (count >= 1) or a hash blob with as many lengths in [1, max_length].
    Whether runs fit the old list is checked when they are applied."""
    if not isinstance(raw, list | tuple) or not raw:
        raise ChunkEditError("chunk edits must be a non-empty array")
    ops: list[Op] = []
    for op in raw:
        if not isinstance(op, list | tuple) or len(op) != 2:
            raise ChunkEditError("a chunk edit must be a pair")
        a, b = op
        if type(a) is int and type(b) is int:
            if a < 0 or b < 1:
                raise ChunkEditError(f"chunk run {a}+{b} is not a run")
            ops.append((a, b))
        elif type(a) is bytes and isinstance(b, list | tuple):
            if not b or len(a) != HASH_SIZE * len(b):
                raise ChunkEditError("new chunks: hash blob and length list do not match")
            for length in b:
                if type(length) is not int or not 1 <= length <= max_length:
                    raise ChunkEditError(f"new chunk length {length!r} not in [1, {max_length}]")
            ops.append((a, tuple(b)))
        else:
            raise ChunkEditError("a chunk edit is [start, count] or [hashes, lengths]")
    return tuple(ops)


def apply_packed(
    hashes: bytes, lengths: bytes, ops: Sequence[Op], max_chunks: int
) -> tuple[bytes, bytes]:
    """The packed list (hashes, lengths) that `ops` build from the packed old one. Raises
    ChunkEditError for a run outside the old list or more than `max_chunks` chunks (checked
    before anything is built)."""
    count = len(lengths) // 4
    total = 0
    for a, b in ops:
        if type(a) is int:
            if a + b > count:
                raise ChunkEditError(f"chunk run {a}+{b} lies outside the old list of {count}")
            total += b
        else:
            total += len(b)
    if total > max_chunks:
        raise ChunkEditError(f"chunk edits build {total} chunks, more than {max_chunks}")
    out_hashes: list[bytes] = []
    out_lengths: list[bytes] = []
    for a, b in ops:
        if type(a) is int:
            out_hashes.append(hashes[a * HASH_SIZE : (a + b) * HASH_SIZE])
            out_lengths.append(lengths[a * 4 : (a + b) * 4])
        else:
            out_hashes.append(a)
            out_lengths.append(array(LENGTH_CODE, b).tobytes())
    return b"".join(out_hashes), b"".join(out_lengths)
