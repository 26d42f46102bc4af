"""Whether a secret file can be read by anyone but its owner, its reader and root.

Mode bits answer this unless the file has a POSIX access ACL. Then the group bits of the mode
show the ACL's mask, not the owning group's permission. systemd's credentials are such files:
systemd writes them 0400, owned by root, with an entry `user:<service user>:r--`, so `stat` shows
0440 although no group can read them. Here the ACL itself is read, so those files pass and a
file that really grants a group or another user read access does not.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

__all__ = ["readable_by_others"]

ACL_XATTR = "system.posix_acl_access"
ACL_VERSION = 2
# Entry tags and the read bit, as in <linux/posix_acl_xattr.h> and <sys/acl.h>.
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
READ = 4
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")  # tag, permissions, uid or gid
_NO_ACL = {errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP}


def readable_by_others(fd: int, st: os.stat_result, uid: int | None = None) -> bool:
    """True if the open file `fd` (whose `fstat` is `st`) grants read access to anyone other
    than its owner, the user `uid` (default: this process's effective user) and root.

    Raises OSError when the ACL cannot be read; a malformed ACL counts as readable."""
    uid = os.geteuid() if uid is None else uid
    try:
        raw = os.getxattr(fd, ACL_XATTR)
    except OSError as exc:
        if exc.errno not in _NO_ACL:
            raise
        return bool(st.st_mode & (stat.S_IRGRP | stat.S_IROTH))
    try:
        (version,) = _HEADER.unpack_from(raw)
        entries = list(_ENTRY.iter_unpack(raw[_HEADER.size :]))
    except struct.error:
        return True
    if version != ACL_VERSION:
        return True
    # The mask caps named users and every group entry; without one nothing is capped.
    mask = next((perms for tag, perms, _ in entries if tag == MASK), READ)
    for tag, perms, qualifier in entries:
        if tag == OTHER and perms & READ:
            return True
        if tag in (GROUP_OBJ, GROUP) and perms & mask & READ:
            return True
        if tag == USER and perms & mask & READ and qualifier not in (uid, 0):
            return True
    return False
