"""Study assembly: decide when a study is complete ("stable") and record each stable version.

A study is stable once no instance has arrived for ``stable_after_s`` seconds, or, sooner,
``after_release_s`` seconds after the release of the last association that delivered to it.
All state lives in the ``studies`` and ``study_versions`` rows and every transition is one
transaction guarded by the values it read, so a ``kill -9`` at any point neither loses a
pending study (the timer is wall-clock time in the row) nor records a version twice (the
``UNIQUE (study_instance_uid, version)`` constraint and the guarded update).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from node.config import StabilityConfig
from node.db import connect, transaction

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StableVersion:
    """One recorded stable version of a study (a ``study_versions`` row)."""

    id: int
    study_instance_uid: str
    version: int
    stable_at: float
    instance_count: int


class StudyAssembler:
    """Polls the index and turns quiet studies into ``study_versions`` rows.

    A stage of the node (``name``/``start``/``stop``); ``run_once`` is the whole decision and
    is what tests call directly.
    """

    name = "assembler"

    def __init__(self, database_path: Path, stability: StabilityConfig) -> None:
        self._database_path = Path(database_path)
        self._stability = stability
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the assembler is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="assembler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        conn = connect(self._database_path)
        try:
            while not self._stop.is_set():
                try:
                    self.run_once(conn)
                except Exception:
                    LOGGER.exception("assembler pass failed; retrying")
                self._stop.wait(self._stability.poll_interval_s)
        finally:
            conn.close()

    def due(self, conn: sqlite3.Connection, now: float) -> list[tuple[str, int, float]]:
        """Receiving studies whose quiet time is over: (uid, version, last_received_at)."""
        quiet_since = now - self._stability.stable_after_s
        after_release = self._stability.after_release_s
        if after_release is None:
            rows = conn.execute(
                "SELECT study_instance_uid, version, last_received_at FROM studies "
                "WHERE state = 'receiving' AND last_received_at <= ?",
                (quiet_since,),
            )
        else:
            rows = conn.execute(
                "SELECT study_instance_uid, version, last_received_at FROM studies "
                "WHERE state = 'receiving' AND (last_received_at <= ? OR "
                "(released_at IS NOT NULL AND released_at <= ?))",
                (quiet_since, now - after_release),
            )
        return [(row[0], row[1], row[2]) for row in rows]

    def run_once(self, conn: sqlite3.Connection, now: float | None = None) -> list[StableVersion]:
        """Record every study that is due; return the versions recorded by this pass."""
        now = time.time() if now is None else now
        recorded = []
        for study_uid, version, last_received_at in self.due(conn, now):
            stable = self._make_stable(conn, study_uid, version, last_received_at, now)
            if stable is not None:
                recorded.append(stable)
                LOGGER.info(
                    "study %s version %d stable with %d instances",
                    study_uid,
                    version,
                    stable.instance_count,
                )
        return recorded

    @staticmethod
    def _make_stable(
        conn: sqlite3.Connection,
        study_uid: str,
        version: int,
        last_received_at: float,
        now: float,
    ) -> StableVersion | None:
        with transaction(conn):
            # Guarded by what we read: an instance that arrived meanwhile wins.
            changed = conn.execute(
                "UPDATE studies SET state = 'stable' WHERE study_instance_uid = ? "
                "AND state = 'receiving' AND version = ? AND last_received_at = ?",
                (study_uid, version, last_received_at),
            ).rowcount
            if not changed:
                return None
            count = conn.execute(
                "SELECT COUNT(*) FROM instances WHERE study_instance_uid = ?", (study_uid,)
            ).fetchone()[0]
            cursor = conn.execute(
                "INSERT INTO study_versions (study_instance_uid, version, stable_at, "
                "instance_count) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (study_instance_uid, version) DO NOTHING",
                (study_uid, version, now, count),
            )
            if not cursor.rowcount:
                return None
            return StableVersion(
                id=int(cursor.lastrowid or 0),
                study_instance_uid=study_uid,
                version=version,
                stable_at=now,
                instance_count=count,
            )
