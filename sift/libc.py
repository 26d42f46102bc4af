"""The C library's functions that Python's os module does not wrap (syncfs, sync_file_range,
fallocate with a mode, mallopt, prctl), looked up once per process."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any


@functools.cache
def _process_symbols() -> ctypes.CDLL:
    # dlopen(NULL): the symbols already loaded in the process, the C library's among them.
    # find_library("c") cost an import of ctypes.util and a run of ldconfig (about 1 ms) for
    # each function, at every daemon start.
    return ctypes.CDLL(None, use_errno=True)


def libc_function(name: str, argtypes: Sequence[Any], restype: Any = ctypes.c_int) -> Any | None:
    """The C function `name` with its signature set, or None where the C library has none
    (e.g. mallopt on musl). Errors are read with ctypes.get_errno()."""
    try:
        fn = getattr(_process_symbols(), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = restype
    return fn
