"""The chunk vocabulary shared by chunker, manifest and wire: parameters, refs, hashing."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from blake3 import blake3

HASH_SIZE = 32  # BLAKE3 default digest length; a chunk's name on disk and on the wire

# Bounds accepted by fastcdc's compiled chunker (fastcdc_cy asserts on these).
_MIN_BOUNDS = (64, 67_108_864)
_AVG_BOUNDS = (256, 268_435_456)
_MAX_BOUNDS = (1024, 1_073_741_824)


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC parameters. They travel with every chunk list: the same bytes cut with other
    parameters give other chunks, so two lists are comparable only when these match."""

    min_size: int = 64 * 1024
    avg_size: int = 256 * 1024
    max_size: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name, value, (lo, hi) in (
            ("min_size", self.min_size, _MIN_BOUNDS),
            ("avg_size", self.avg_size, _AVG_BOUNDS),
            ("max_size", self.max_size, _MAX_BOUNDS),
        ):
            if type(value) is not int or not lo <= value <= hi:
                raise ValueError(f"chunk {name} must be an integer in [{lo}, {hi}], got {value!r}")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(
                "chunk sizes must satisfy min_size <= avg_size <= max_size, got "
                f"{self.min_size} / {self.avg_size} / {self.max_size}"
            )

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.min_size, self.avg_size, self.max_size)


DEFAULT_PARAMS = ChunkParams()


class Chunk(NamedTuple):
    """One chunk of a file: its BLAKE3 digest and its length (offsets follow from order)."""

    hash: bytes
    length: int


def hash_chunk(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte BLAKE3 digest that names a chunk."""
    return blake3(data).digest()


# A chunk list packed (FileEntry, FileChunks, the scan cache, chunk edits): the hashes
# concatenated, and the lengths as native-endian u32 that array("I") and memoryview.cast("I")
# read in C.
LENGTH_CODE = "I"
if array(LENGTH_CODE).itemsize != 4:  # pragma: no cover - every CPython platform has 4
    raise ImportError("sift needs a 4-byte array('I')")


def pack_chunk_list(chunks: Iterable[tuple[bytes, int]]) -> tuple[bytes, bytes]:
    """(hashes, lengths) of a list of (hash, length) pairs."""
    hashes = bytearray()
    lengths = array(LENGTH_CODE)
    for digest, length in chunks:
        hashes += digest
        lengths.append(length)
    return bytes(hashes), lengths.tobytes()


def unpack_chunk_list(hashes: bytes, lengths: bytes) -> tuple[Chunk, ...]:
    """The packed list as ``Chunk`` tuples."""
    return tuple(
        Chunk(hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE], n)
        for i, n in enumerate(memoryview(lengths).cast(LENGTH_CODE))
    )
