"""readable_by_others: mode bits, or the POSIX ACL when a file has one, as systemd credentials do.

The ACLs are real: written as the kernel's `system.posix_acl_access` attribute on files in
tmp_path, exactly as setfacl (and systemd, for a service's credentials) writes them.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest

from sift.config import ConfigError, load_master_config
from sift.core.private_file import (
    ACL_XATTR,
    GROUP,
    GROUP_OBJ,
    MASK,
    OTHER,
    READ,
    USER,
    USER_OBJ,
    readable_by_others,
)

NONE = 0xFFFFFFFF  # the qualifier of entries that name no user or group
ME = os.geteuid()
SOMEONE_ELSE = 65534 if ME != 65534 else 65533


def acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def systemd_credential(uid: int) -> bytes:
    """What systemd writes for LoadCredential=: 0400 plus read access for the service's user."""
    return acl(
        (USER_OBJ, READ, NONE),
        (USER, READ, uid),
        (GROUP_OBJ, 0, NONE),
        (MASK, READ, NONE),
        (OTHER, 0, NONE),
    )


def key_file(tmp_path, mode: int = 0o400, acl_bytes: bytes | None = None):
    path = tmp_path / "psk"
    path.write_text("the-key\n")
    path.chmod(mode)
    if acl_bytes is not None:
        try:
            os.setxattr(path, ACL_XATTR, acl_bytes)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                pytest.skip(f"{tmp_path} has no POSIX ACL support")
            raise
    return path


def check(path, uid: int = ME) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return readable_by_others(fd, os.fstat(fd), uid)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("mode", "expected"), [(0o600, False), (0o400, False), (0o640, True)])
def test_without_an_acl_the_mode_decides(tmp_path, mode, expected):
    assert check(key_file(tmp_path, mode)) is expected


def test_a_systemd_credential_is_private_although_stat_shows_0440(tmp_path):
    path = key_file(tmp_path, acl_bytes=systemd_credential(ME))
    assert path.stat().st_mode & 0o777 == 0o440  # the mask, shown in the group bits
    assert check(path) is False


def test_a_credential_for_another_user_is_not_private(tmp_path):
    path = key_file(tmp_path, acl_bytes=systemd_credential(SOMEONE_ELSE))
    assert check(path) is True


def test_a_named_group_with_read_access_is_not_private(tmp_path):
    path = key_file(
        tmp_path,
        acl_bytes=acl(
            (USER_OBJ, READ, NONE),
            (GROUP_OBJ, 0, NONE),
            (GROUP, READ, 12345),
            (MASK, READ, NONE),
            (OTHER, 0, NONE),
        ),
    )
    assert check(path) is True


def test_the_mask_caps_group_entries(tmp_path):
    path = key_file(
        tmp_path,
        acl_bytes=acl(
            (USER_OBJ, READ, NONE),
            (GROUP_OBJ, READ, NONE),
            (GROUP, READ, 12345),
            (MASK, 0, NONE),
            (OTHER, 0, NONE),
        ),
    )
    assert check(path) is False


def test_other_read_access_is_not_private(tmp_path):
    path = key_file(
        tmp_path,
        0o404,
        acl((USER_OBJ, READ, NONE), (GROUP_OBJ, 0, NONE), (MASK, 0, NONE), (OTHER, READ, NONE)),
    )
    assert check(path) is True


def test_the_config_accepts_a_systemd_credential_as_psk_file(tmp_path):
    path = key_file(tmp_path, acl_bytes=systemd_credential(ME))
    (tmp_path / "data").mkdir()
    cfg = tmp_path / "master.toml"
    cfg.write_text('watched_dir = "data"\nstate_dir = "state"\n')
    assert load_master_config(cfg, psk_file=path).psk == b"the-key"


def test_the_config_refuses_a_key_shared_through_an_acl(tmp_path):
    path = key_file(tmp_path, acl_bytes=systemd_credential(SOMEONE_ELSE))
    (tmp_path / "data").mkdir()
    cfg = tmp_path / "master.toml"
    cfg.write_text('watched_dir = "data"\nstate_dir = "state"\n')
    with pytest.raises(ConfigError, match="is readable by other users"):
        load_master_config(cfg, psk_file=path)
