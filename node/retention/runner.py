"""One retention pass: aged studies, result copies, and the emergency below the watermark.

Used by the node's background stage and by ``ainode purge``. The clock and the free-space
reading are injectable, so tests age rows and fill disks without waiting or writing.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.audit.events import StudyDeleted, StudyRef
from node.audit.trail import DISABLED, AuditTrail
from node.config import NodeConfig
from node.durable import fsync_dir
from node.retention.policy import StudyRetention, Verdict, assess
from node.retention.purge import (
    Purged,
    PurgeHook,
    PurgePaths,
    finish_interrupted,
    purge_lock,
    purge_study,
)
from node.retention.settings import RetentionSettings
from node.retention.trash import folder_bytes
from node.vendors.inbox import inbox_dir

LOGGER = logging.getLogger(__name__)
_JOB_FOLDER = re.compile(r"^job-([0-9]+)$")
MIB = 1024 * 1024
#: Asked between two studies: True ends the pass (the node is stopping).
Stopping = Callable[[], bool]


def _never() -> bool:
    return False


__all__ = ["ResultFolder", "Retention", "disk_free"]


def disk_free(path: Path) -> int:
    """Bytes free to an unprivileged writer on ``path``'s file system."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@dataclass(frozen=True)
class ResultFolder:
    """A job's result copies that ``results_days`` lets go."""

    path: Path
    size_bytes: int


class Retention:
    """The retention rules of one node, applied to its database and folders."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        clock: Callable[[], float] = time.time,
        free_bytes: Callable[[Path], int] = disk_free,
        hook: PurgeHook | None = None,
        audit: AuditTrail = DISABLED,
    ) -> None:
        storage = config.storage
        self._audit = audit
        self.settings: RetentionSettings = storage.retention
        self.paths = PurgePaths(
            storage.data_dir,
            storage.spool_dir,
            storage.outputs_dir,
            inbox_dir(config),
        )
        self.watermark_bytes = storage.min_free_mb * MIB
        self._clock = clock
        self._free_bytes = free_bytes
        self._hook = hook
        self._starved = False  # the last emergency found nothing to delete

    def plan(self, conn: sqlite3.Connection) -> list[StudyRetention]:
        """Every study's verdict now, the longest settled first."""
        return assess(conn, self._clock(), self.settings.max_age_s)

    def finish_interrupted(self, conn: sqlite3.Connection) -> list[Purged]:
        with purge_lock(self.paths.data_dir):
            done = finish_interrupted(conn, self.paths, self._clock())
        for purged in done:
            self._record(purged, "retention: an interrupted purge finished")
        return done

    def _record(self, purged: Purged, reason: str) -> None:
        study = StudyRef(purged.study_instance_uid, purged.patient_id, ())
        self._audit.record(StudyDeleted(study=study, reason=reason))

    def purge_aged(self, conn: sqlite3.Connection, stopping: Stopping = _never) -> list[Purged]:
        """Delete every study past its retention period (a backlog of months can take a
        while: ``stopping`` ends it between two studies)."""
        due = [s for s in self.plan(conn) if s.verdict is Verdict.DELETABLE]
        return self._purge(conn, due, emergency=False, until_free=None, stopping=stopping)

    def needs_emergency(self) -> bool:
        return self.settings.emergency and self.free_bytes() < self.watermark_bytes

    def purge_emergency(
        self, conn: sqlite3.Connection, stopping: Stopping = _never
    ) -> list[Purged]:
        """Below the watermark: the longest-delivered studies first, regardless of age, until
        the watermark plus the margin is free (or nothing finished is left)."""
        target = self.watermark_bytes + self.settings.emergency_margin_mb * MIB
        finished = [s for s in self.plan(conn) if s.finished]
        purged = self._purge(conn, finished, emergency=True, until_free=target, stopping=stopping)
        free = self.free_bytes()
        freed = sum(p.bytes_freed for p in purged)
        starved = free < target and not purged
        if starved and self._starved:
            return purged  # said once already; checked again every free_check_s
        self._starved = starved
        log = LOGGER.warning if free >= target else LOGGER.error
        log(
            "emergency purge: %d studies, %d bytes freed; %d bytes free (target %d)%s",
            len(purged),
            freed,
            free,
            target,
            "" if free >= target else ": nothing more is delivered, C-STOREs stay refused",
        )
        return purged

    def free_bytes(self) -> int:
        """Free disk where the spool is, as the injected reading says."""
        return self._free_bytes(self.paths.spool_dir)

    def _purge(
        self,
        conn: sqlite3.Connection,
        studies: list[StudyRetention],
        *,
        emergency: bool,
        until_free: int | None,
        stopping: Stopping,
    ) -> list[Purged]:
        purged: list[Purged] = []
        for study in studies:
            if stopping() or (until_free is not None and self.free_bytes() >= until_free):
                break
            with purge_lock(self.paths.data_dir):
                done = purge_study(
                    conn,
                    self.paths,
                    study.study_instance_uid,
                    now=self._clock(),
                    max_age_s=self.settings.max_age_s,
                    emergency=emergency,
                    hook=self._hook,
                )
            if done is not None:
                purged.append(done)
                why = "the disk below storage.min_free_mb" if emergency else "retention period"
                self._record(done, f"retention: {why}")
                LOGGER.info(
                    "purged study %s (%d bytes)%s",
                    done.study_instance_uid,
                    done.bytes_freed,
                    " in an emergency" if emergency else "",
                )
        return purged

    def expired_results(self, conn: sqlite3.Connection) -> list[ResultFolder]:
        """Job result folders whose deliveries all succeeded ``results_days`` ago, or, with
        no job row, that were last written to that long ago."""
        if not self.paths.outputs_dir.is_dir():
            return []
        cutoff = self._clock() - self.settings.results_max_age_s
        expired: list[ResultFolder] = []
        for entry in sorted(self.paths.outputs_dir.iterdir()):
            match = _JOB_FOLDER.match(entry.name)
            if match and entry.is_dir() and _results_expired(conn, entry, int(match[1]), cutoff):
                expired.append(ResultFolder(entry, folder_bytes(entry)))
        return expired

    def purge_results(self, conn: sqlite3.Connection) -> list[ResultFolder]:
        """Delete the expired result folders (their rows stay until the study goes; nothing
        re-reads a delivered result's file)."""
        expired = self.expired_results(conn)
        for folder in expired:
            shutil.rmtree(folder.path, ignore_errors=True)
            LOGGER.info("deleted result copies %s (%d bytes)", folder.path.name, folder.size_bytes)
        if expired:
            fsync_dir(self.paths.outputs_dir)
        return expired


def _results_expired(conn: sqlite3.Connection, folder: Path, job_id: int, cutoff: float) -> bool:
    row = conn.execute(
        """
        SELECT j.state, j.finished_at,
               (SELECT MAX(o.sent_at) FROM outbox o JOIN results r
                    ON r.sop_instance_uid = o.sop_instance_uid WHERE r.job_id = j.id) AS sent_at,
               (SELECT COUNT(*) FROM outbox o JOIN results r
                    ON r.sop_instance_uid = o.sop_instance_uid
                    WHERE r.job_id = j.id AND o.state != 'SENT') AS owed
        FROM jobs j WHERE j.id = ?
        """,
        (job_id,),
    ).fetchone()
    if row is None:  # no row names it (a database made anew, say): by the folder's age
        return folder.stat().st_mtime <= cutoff
    if row["state"] in ("QUEUED", "RUNNING") or row["owed"] or row["finished_at"] is None:
        return False
    return max(row["finished_at"], row["sent_at"] or 0.0) <= cutoff
