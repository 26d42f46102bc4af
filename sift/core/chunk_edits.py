"""A changed file's chunk list as edits of its previous one, so a manifest delta scales with the
change, not with the file.

A file's manifest entry lists every chunk (36 bytes each on the wire): a one-byte edit in a
1 GiB file would otherwise resend 16k chunk refs (590 KB) to every peer, a 100 GiB file 59 MB.
An edit list says how to build the new list from the old one:

    ops = [op, ...]
    op  = [start, count]          # copy `count` chunks of the old list, from index `start`
        | [hashes, [length, ...]] # new chunks: one bin of concatenated 32-byte hashes

Pure functions, no I/O. Decoding trusts nothing: bounds are checked here, and the caller checks
the rebuilt list against the entry's digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sift.core.chunk import HASH_SIZE, Chunk

Op = list[Any]

# Cheaper to send whole than as edits when the edits are not much smaller.
WORTH_IT = 0.5


class ChunkEditError(ValueError):
    """An edit list that does not describe a chunk list built from the given old one."""


def edit_ops(old: Sequence[Chunk], new: Sequence[Chunk]) -> list[Op]:
    """Edits that turn `old` into `new`: runs of old chunks in order (at their place, or shifted
    by an insertion) and the chunks that are new."""
    first: dict[tuple[bytes, int], int] = {}
    for i, chunk in enumerate(old):
        first.setdefault((chunk.hash, chunk.length), i)
    ops: list[Op] = []
    fresh_hashes: list[bytes] = []
    fresh_lengths: list[int] = []
    run_start, run_count = -1, 0

    def flush_run() -> None:
        nonlocal run_count
        if run_count:
            ops.append([run_start, run_count])
            run_count = 0

    def flush_fresh() -> None:
        if fresh_hashes:
            ops.append([b"".join(fresh_hashes), list(fresh_lengths)])
            fresh_hashes.clear()
            fresh_lengths.clear()

    for chunk in new:
        j = first.get((chunk.hash, chunk.length))
        if j is not None and run_count and run_start + run_count < len(old):
            nxt = old[run_start + run_count]
            if (nxt.hash, nxt.length) == (chunk.hash, chunk.length):  # the run goes on
                run_count += 1
                continue
        if j is not None:
            flush_run()
            flush_fresh()
            run_start, run_count = j, 1
        else:
            flush_run()
            fresh_hashes.append(chunk.hash)
            fresh_lengths.append(chunk.length)
    flush_run()
    flush_fresh()
    return ops


def encoded_size(ops: Sequence[Op]) -> int:
    """About how many bytes `ops` take on the wire (to compare with a whole chunk list)."""
    size = 0
    for op in ops:
        if isinstance(op[0], int):
            size += 12
        else:
            size += 8 + len(op[0]) + 5 * len(op[1])
    return size


def worth_sending(ops: Sequence[Op], chunk_count: int) -> bool:
    """Whether the edits are clearly smaller than the whole list (about 36 bytes a chunk)."""
    return encoded_size(ops) < WORTH_IT * (chunk_count * (HASH_SIZE + 4) + 8)


def apply_ops(old: Sequence[Chunk], ops: Any, max_chunks: int) -> list[Chunk]:
    """The chunk list `ops` builds from `old`. Raises ChunkEditError for a malformed op, a run
    outside `old`, or a result of more than `max_chunks` chunks (bounded before building)."""
    if not isinstance(ops, list | tuple):
        raise ChunkEditError("chunk edits must be a list")
    out: list[Chunk] = []
    for op in ops:
        if not isinstance(op, list | tuple) or len(op) != 2:
            raise ChunkEditError("a chunk edit must be a pair")
        a, b = op
        if type(a) is int and type(b) is int:
            if a < 0 or b <= 0 or a + b > len(old):
                raise ChunkEditError(f"chunk run {a}+{b} lies outside the old list of {len(old)}")
            if len(out) + b > max_chunks:
                raise ChunkEditError("chunk edits build too many chunks")
            out.extend(old[a : a + b])
        elif isinstance(a, bytes) and isinstance(b, list | tuple):
            if not b or len(a) != HASH_SIZE * len(b):
                raise ChunkEditError("new chunks: hash blob and length list do not match")
            if len(out) + len(b) > max_chunks:
                raise ChunkEditError("chunk edits build too many chunks")
            for i, length in enumerate(b):
                if type(length) is not int or length <= 0:
                    raise ChunkEditError(f"new chunk length {length!r} is not a positive int")
                out.append(Chunk(a[i * HASH_SIZE : (i + 1) * HASH_SIZE], length))
        else:
            raise ChunkEditError("a chunk edit is [start, count] or [hashes, lengths]")
    return out
