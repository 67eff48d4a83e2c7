"""Folder fsync, shared by every stage that writes files it must not lose.

A file renamed into a folder (or removed from it) is durable only once the folder itself is
fsynced: the spool, the job and result folders, the outbox's folder destinations, the
retention trash and the schema backup all rely on it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the names in a folder (a file renamed into it, created or removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush everything written to the file system that holds ``path`` (``syncfs``): one disk
    flush for a batch of files and folders instead of an fsync each. ``os.sync`` where the C
    library has no ``syncfs``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc_syncfs is None:
            os.sync()
        elif _libc_syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), str(path))
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_libc_syncfs = _load_syncfs()
