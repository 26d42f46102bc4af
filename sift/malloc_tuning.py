"""glibc malloc settings for daemons that move MiB-sized buffers all day.

By default glibc serves every allocation above a (dynamic) threshold of 128 KiB or more from
a fresh mmap and gives it back on free, and trims the heap's top eagerly, so every 1 MiB
transfer unit (the packed response, its frame) paid for fresh pages again: a page fault and a
zeroing per 4 KiB. Measured on one connection moving 1 GiB in 1 MiB ChunkResponses: the
sender spent 1.5 s of CPU with the defaults and 0.4 s with these settings (an 8 MiB mmap
threshold, a 16 MiB trim threshold), the receiver about the same either way. The memory kept
for reuse is bounded by those figures.
"""

from __future__ import annotations

import ctypes

from sift.libc import libc_function

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 << 20  # blocks this large still come from (and go back to) mmap
TRIM_THRESHOLD = 16 << 20  # free memory kept at the top of the heap before it is returned


def tune_malloc() -> bool:
    """Apply the settings; False where the C library has no mallopt (e.g. musl)."""
    mallopt = libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
