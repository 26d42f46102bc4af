"""Deferred deletion, so that no measured run follows a mass deletion.

On ext4 without a journal, a new inode is not given a slot freed in the last 60 s, or 360 s
while the slot's inode table block is dirty (and creating files nearby dirties it again): every
file created in a block group walks past each such slot and reads its deletion time
(`recently_deleted` in fs/ext4/ialloc.c). Here, 20,000 files took 0.4 s to create on a quiet file
system and 7-13 s right after 20,000 others were deleted. A run started right after the
previous run's trees were deleted paid that for every file it created, by an amount that
depended on which block groups its directories landed in: a run's time depended on which run
came before it (rsync's (d) took 5.6 s that way, and 1.2 s on a quiet file system).

So finished trees are renamed into a trash directory (no inode is freed), and the trash is
emptied only when the disk runs short or the suite ends. After emptying many files, the next
run first waits out the window.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

GiB = 1 << 30
COOL_DOWN = 362.0  # seconds: the kernel's longest window (a dirty inode table block), plus margin
FEW_FILES = 2000  # deleting fewer than this many files leaves nothing worth waiting for
MIN_FREE = 24 * GiB  # below this much free space, the trash is emptied before the next run


class Trash:
    def __init__(self, root: Path, log: Callable[[str], None] = print, min_free: int = MIN_FREE):
        self.root = root
        self.log = log
        self.min_free = min_free
        self._names = itertools.count()
        self._emptied_at: float | None = None  # monotonic time of the last emptying that counts

    def put(self, path: Path) -> None:
        """Move `path` out of the way without freeing anything (a rename on the same disk).
        Its files' pages leave the page cache, so every run starts with as much free memory
        as the first (the kernel would otherwise reclaim them in the middle of a run)."""
        if not path.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        kept = self.root / f"{next(self._names)}-{path.name}"
        path.rename(kept)
        os.sync()  # dirty pages cannot be dropped
        for parent, _, files in os.walk(kept):
            for name in files:
                _drop_cached(os.path.join(parent, name))

    def empty(self) -> int:
        """Delete everything in the trash; returns how many files and directories went."""
        if not self.root.exists():
            return 0
        gone = sum(len(dirs) + len(files) for _, dirs, files in os.walk(self.root))
        shutil.rmtree(self.root, ignore_errors=True)
        if gone >= FEW_FILES:
            os.sync()  # the freed inode table blocks go clean: the shorter window applies
            self._emptied_at = time.monotonic()
        return gone

    def before_run(self) -> None:
        """Make room if the disk is short, then wait until the last mass deletion is out of the
        kernel's window. Call it before each measured run."""
        if shutil.disk_usage(self.root.parent).free < self.min_free:
            gone, keep = self.empty(), self.min_free // GiB
            self.log(f"  (emptied the trash: {gone} entries, so {keep} GiB stay free)")
        if self._emptied_at is None:
            return
        left = self._emptied_at + COOL_DOWN - time.monotonic()
        if left > 0:
            self.log(f"  (waiting {left:.0f}s: the file system still avoids the freed inodes)")
            time.sleep(left)
        self._emptied_at = None


def _drop_cached(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return  # a socket, a dangling link, a file gone: nothing cached to drop
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
