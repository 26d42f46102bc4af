"""Run the sift CLI with a disk that fills up on demand: while FLAG_FILE exists, every os.pwrite
and os.write to a regular file fails with ENOSPC, as on a full file system. Used by the
disk-full tests where mounting a small tmpfs is not allowed.

    python enospc_launcher.py FLAG_FILE [sift arguments...]
"""

from __future__ import annotations

import errno
import os
import stat
import sys


def install(flag: str) -> None:
    real_pwrite, real_write = os.pwrite, os.write

    def full(fd: int) -> bool:
        try:
            return os.path.exists(flag) and stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            return False

    def pwrite(fd: int, data, offset: int) -> int:
        if full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    def write(fd: int, data) -> int:
        if full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    os.pwrite = pwrite
    os.write = write


if __name__ == "__main__":
    install(sys.argv[1])
    from sift.cli import main

    sys.exit(main(sys.argv[2:]))
