"""The spool checkpoint: a time before which every spool file has its index row.

A spool file lacks its row only when a crash came between its rename into the spool and the
commit of its row (or a power loss took a row the WAL had not flushed). ``SpoolWrites``
holds those windows while they are open: ``Spool`` opens one for a path just before the
rename, ``Index`` closes it once the row is committed. From them ``Index`` records, in one of
its commits every ``RECORD_EVERY_S`` at most, the checkpoint ``T = min(now, oldest open
window) - MARGIN_S`` in the ``spool_checkpoint`` table; ``recover_spool`` writes a new one
once the spool and the index agree again at start-up. A recorded ``T`` sits in the WAL after
every row committed before it, so a power loss that takes a row takes every later ``T`` with
it.

After a crash ``recover_spool`` then lists only the series folders whose modification time is
at or after ``T`` (``Spool.files(changed_since=T)``): a rename into a folder sets its mtime,
so a folder untouched since ``T`` holds no file that was being stored at the crash. On a
million instances that is a ``stat`` of each series folder instead of a listing of every file
and the million paths read back from the index.

What it assumes:

- *The clock.* Windows, ``T`` and the kernel's file times come from the same real-time clock.
  A clock set back by more than ``MARGIN_S`` after a ``T`` was recorded can give a file
  stored then an mtime before ``T``: a crash before the next start would not find it. (The
  kernel stamps file times with a clock up to a tick behind ``time.time()``; the margin
  covers that and ordinary NTP corrections.)
- *The file system.* A local one (ext4, XFS, btrfs) where a rename or a create in a folder
  updates the folder's mtime, not a network one whose server clock differs.
- *Who writes the spool.* Only the node's own ``Spool`` (``InstanceStore``, the journal's
  ``BatchFiler``, which also files for the receiver processes) and retention's trash, which
  moves whole study folders and leaves series folders' mtimes as they were. A file put into
  an old series folder by hand is not indexed by a start after a crash (a start without a
  checkpoint walks everything, as before). A write whose row failed keeps its window open,
  so the checkpoint stays behind its file until the node stops.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable

#: How far behind the oldest open window (or now) the recorded checkpoint lies: covers the
#: kernel's coarse file times and small clock corrections. Every series folder written in the
#: margin before a crash is listed again at the next start.
MARGIN_S = 60.0
#: The index records a new checkpoint in one of its commits at most this often.
RECORD_EVERY_S = 2.0


class SpoolWrites:
    """Spool files renamed (or about to be) whose index row is not committed yet."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # the real-time clock the kernel stamps file times with
        self._lock = threading.Lock()
        self._open: dict[str, list[float]] = {}  # path -> [writers, earliest start]

    def begin(self, relpath: str) -> None:
        """A file is about to be renamed to ``relpath``: call before the rename."""
        with self._lock:
            now = self._clock()
            entry = self._open.get(relpath)
            if entry is None:
                self._open[relpath] = [1, now]
            else:
                entry[0] += 1

    def end(self, relpaths: Iterable[str]) -> None:
        """The rows of these files are committed (or the files were never renamed in). A path
        never begun is ignored: ``recover_spool`` indexes files nobody wrote this run."""
        with self._lock:
            for relpath in relpaths:
                entry = self._open.get(relpath)
                if entry is None:
                    continue
                entry[0] -= 1
                if entry[0] <= 0:
                    del self._open[relpath]

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def checkpoint(self) -> float:
        """A time before which every file of this spool has its row, as far as the writes
        seen here go: the oldest open window or now, less ``MARGIN_S``. A write that begins
        after this returns starts later than the ``now`` read under the same lock."""
        with self._lock:
            oldest = min((entry[1] for entry in self._open.values()), default=None)
            now = self._clock()
        return (now if oldest is None else min(now, oldest)) - MARGIN_S


def read_checkpoint(conn: sqlite3.Connection) -> float | None:
    """The recorded checkpoint, or None where none was ever recorded (an older node's
    database, a new one): then a start after a crash walks the whole spool."""
    row = conn.execute("SELECT indexed_before FROM spool_checkpoint WHERE id = 1").fetchone()
    return float(row[0]) if row is not None else None


def write_checkpoint(conn: sqlite3.Connection, indexed_before: float) -> None:
    """Record ``indexed_before``, in the caller's transaction."""
    conn.execute(
        "INSERT INTO spool_checkpoint (id, indexed_before) VALUES (1, ?) "
        "ON CONFLICT (id) DO UPDATE SET indexed_before = excluded.indexed_before",
        (indexed_before,),
    )
