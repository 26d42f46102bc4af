"""Unix socket paths longer than the kernel's limit (108 bytes on Linux).

A deep ``state_dir`` easily makes ``control.sock``'s path too long to bind or connect to. On
Linux the directory can be reached through an open descriptor instead: ``/proc/self/fd/N/NAME``
is short whatever the real path, and the kernel resolves it during bind/connect.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["MAX_SUN_PATH", "reachable_path"]

MAX_SUN_PATH = 107  # sun_path is 108 bytes including the terminating NUL


@contextlib.contextmanager
def reachable_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """A path string for ``path`` that bind/connect accept; valid inside the ``with`` only."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= MAX_SUN_PATH:
        yield text
        return
    p = Path(text)
    fd = os.open(p.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{p.name}"
    finally:
        os.close(fd)
