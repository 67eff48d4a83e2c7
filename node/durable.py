"""Folder fsync, shared by every stage that writes files it must not lose.

A file renamed into a folder (or removed from it) is durable only once the folder itself is
fsynced: the spool, the job and result folders, the outbox's folder destinations, the
retention trash and the schema backup all rely on it.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the names in a folder (a file renamed into it, created or removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
