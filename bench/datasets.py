"""Deterministic, incompressible datasets: BLAKE3's extendable output seeded by the file's name,
~10x faster than os.urandom, so generating 8 GiB does not dominate a run. Every tool reads the
same bytes from a warm page cache (what the writer leaves behind): the benchmark measures the
tools, not this machine's disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from bench.common import MiB

_BLOCK = 8 * MiB
SMALL_FILE = 32 * 1024  # the "many small ones" of the mixed dataset
LARGE_FILES = 4


@dataclass(frozen=True)
class Dataset:
    root: Path
    files: int
    bytes: int
    large: str  # relative path of the largest file (the one scenario (c) edits)


def write_random(path: Path, size: int, seed: str) -> None:
    xof = blake3(seed.encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for offset in range(0, size, _BLOCK):
            os.write(fd, xof.digest(length=min(_BLOCK, size - offset), seek=offset))
    finally:
        os.close(fd)


def mixed(root: Path, size: int) -> Dataset:
    """A few large files plus many small ones: 1/8 of the bytes in 32 KiB files spread over
    subdirectories, the rest in four large files (the first twice the size of the others)."""
    small_total = max(size // 8, SMALL_FILE)
    count = max(1, small_total // SMALL_FILE)
    for i in range(count):
        write_random(root / "small" / f"d{i % 32:02d}" / f"f{i:06d}.dat", SMALL_FILE, f"s{i}")
    large_total = size - count * SMALL_FILE
    unit = large_total // (LARGE_FILES + 1)
    sizes = [2 * unit] + [unit] * (LARGE_FILES - 1)
    sizes[-1] += large_total - sum(sizes)
    for i, n in enumerate(sizes):
        write_random(root / f"large{i}.bin", n, f"large{i}")
    return Dataset(root, count + LARGE_FILES, size, "large0.bin")


def many_small(root: Path, count: int, size: int = 4096) -> Dataset:
    """`count` files of `size` bytes, 200 to a directory."""
    for i in range(count):
        write_random(root / f"d{i // 200:04d}" / f"f{i:06d}", size, f"m{i}")
    return Dataset(root, count, count * size, "d0000/f000000")


def single_large(root: Path, size: int) -> Dataset:
    write_random(root / "large.bin", size, "single")
    return Dataset(root, 1, size, "large.bin")


def flip_byte(path: Path, offset: int) -> int:
    """Invert one byte in place (same size, new content); returns the new byte value."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        old = os.pread(fd, 1, offset)[0]
        os.pwrite(fd, bytes([old ^ 0xFF]), offset)
    finally:
        os.close(fd)
    return old ^ 0xFF
