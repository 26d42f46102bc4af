"""sift.libc: C functions the os module lacks, from the symbols the process already has."""

from __future__ import annotations

import ctypes
import errno
import os

from sift.libc import libc_function


def test_a_function_comes_with_its_signature_and_works(tmp_path):
    syncfs = libc_function("syncfs", [ctypes.c_int])
    assert syncfs is not None  # glibc, as on every machine sift's tests run on
    assert syncfs.argtypes == [ctypes.c_int]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert syncfs(fd) == 0
    finally:
        os.close(fd)


def test_errors_are_readable_through_errno():
    syncfs = libc_function("syncfs", [ctypes.c_int])
    assert syncfs(-1) == -1
    assert ctypes.get_errno() == errno.EBADF


def test_a_function_the_c_library_lacks_is_none():
    assert libc_function("no_such_function_in_any_libc", []) is None
