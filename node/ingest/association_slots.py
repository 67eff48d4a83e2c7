"""``listener.max_associations`` across receiver processes.

Each receiver process (``node.ingest.receiver``) keeps the number of associations it serves
in its own cell of an array in shared memory; an association is admitted only if the sum of
the cells stays within the limit. Check and count happen under an ``flock`` on a lock file,
which the kernel releases when its holder dies, so a receiver killed at any moment never
leaves the others waiting. The node's process zeroes a dead receiver's cell before it starts
the next one.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import MutableSequence
from pathlib import Path

__all__ = ["AssociationSlots"]


class AssociationSlots:
    """The associations one receiver process holds, counted against the node's limit."""

    def __init__(
        self, counts: MutableSequence[int], cell: int, lock_path: Path, limit: int
    ) -> None:
        if not 0 <= cell < len(counts):
            raise ValueError(f"cell {cell} is outside the {len(counts)} receiver cells")
        self._counts = counts
        self._cell = cell
        self._limit = limit
        self._lock_path = lock_path
        self._held: set[int] = set()
        self._local = threading.Lock()
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def take(self, key: int) -> bool:
        """Count the association ``key`` in, unless the node already serves its limit."""
        with self._local:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if sum(self._counts) >= self._limit:
                    return False
                self._held.add(key)
                self._counts[self._cell] = len(self._held)
                return True
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def give(self, key: int) -> None:
        """The association ``key`` ended (any number of times, taken or not)."""
        with self._local:
            if key not in self._held:
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._held.discard(key)
                self._counts[self._cell] = len(self._held)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def forget(counts: MutableSequence[int], cell: int, lock_path: Path) -> None:
        """Zero a dead receiver's cell (the node's process, before it starts the next one)."""
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            counts[cell] = 0
        finally:
            os.close(fd)
