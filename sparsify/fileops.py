"""File operations the standard library lacks: room made or taken at the start of a file in place.

Linux's ``fallocate`` with ``FALLOC_FL_INSERT_RANGE`` / ``FALLOC_FL_COLLAPSE_RANGE`` (ext4, XFS, and
others) shifts a file's data by whole blocks without copying it, which lets the archive writer write
the parts first and the header, whose size is known only at the end, in front of them. Where the
system or file system cannot, :func:`shift_start` says so and the caller copies instead: the bytes
written are the same either way.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

_INSERT_RANGE = 0x20
_COLLAPSE_RANGE = 0x08


@functools.cache
def _fallocate():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    function.restype = ctypes.c_int
    return function


def block_size(fd: int) -> int:
    """The file system's block size for the open file ``fd`` (what shifts must be a multiple of)."""
    return os.fstat(fd).st_blksize


def shift_start(fd: int, by: int) -> bool:
    """Insert ``by`` bytes (> 0) of room at the start of the open file ``fd``, or remove ``-by`` bytes
    (< 0) from its start, moving the rest without copying; False (and the file unchanged) where that
    is not possible here. ``abs(by)`` must be a multiple of :func:`block_size`."""
    function = _fallocate()
    if by == 0:
        return True
    if function is None or abs(by) % block_size(fd):
        return False
    mode = _INSERT_RANGE if by > 0 else _COLLAPSE_RANGE
    return function(fd, mode, 0, abs(by)) == 0
