"""Deleting a study: its folders into the trash, its rows in one transaction, then the trash.

Every row that names the study goes (instances, series, versions, route matches, jobs,
results, outbox, shadow findings, vendor requests and inbox rows, pseudonyms): nothing is
kept as history, so no foreign key dangles and no patient data outlives the retention
period. The audit trail (``node.audit``) is the record of what was received and sent.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from node.db import transaction
from node.ingest.spool import uid_component
from node.retention.policy import StudyRetention, Verdict, assess_one
from node.retention.trash import StudyTrash, interrupted
from node.shadow import masks_dir_for

LOGGER = logging.getLogger(__name__)
LOCK_FILE = "purge.lock"

#: Called with "moved" (folders in the trash, rows still there) and "deleted" (rows gone,
#: trash not yet emptied): the points a crash test stops the process at.
PurgeHook = Callable[[str], None]

__all__ = ["PurgeHook", "PurgePaths", "Purged", "finish_interrupted", "purge_lock", "purge_study"]


@dataclass(frozen=True)
class PurgePaths:
    """The folders a purge touches (``storage`` in node.yaml)."""

    data_dir: Path
    spool_dir: Path
    outputs_dir: Path
    vendor_inbox_dir: Path


@dataclass(frozen=True)
class Purged:
    """What one purged study freed (logged: UID and bytes, never patient data)."""

    study_instance_uid: str
    bytes_freed: int
    patient_id: str | None = None  # for the audit trail only; never logged


@contextmanager
def purge_lock(data_dir: Path) -> Iterator[None]:
    """One purge at a time on this data folder: the node's stage and ``ainode purge``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_STUDY_JOBS = """SELECT j.id FROM jobs j JOIN route_matches m ON m.id = j.route_match_id
    JOIN study_versions sv ON sv.id = m.study_version_id WHERE sv.study_instance_uid = :uid"""

_DELETE_ROWS = (
    f"""DELETE FROM outbox WHERE sop_instance_uid IN
        (SELECT sop_instance_uid FROM results WHERE job_id IN ({_STUDY_JOBS}))""",
    f"DELETE FROM results WHERE job_id IN ({_STUDY_JOBS})",
    f"DELETE FROM shadow_findings WHERE job_id IN ({_STUDY_JOBS})",
    f"DELETE FROM vendor_inbox WHERE job_id IN ({_STUDY_JOBS})",
    f"DELETE FROM vendor_requests WHERE job_id IN ({_STUDY_JOBS})",
    "DELETE FROM pseudonyms WHERE substr(job_key, 1, length(:uid) + 1) = :uid || '/'",
    f"DELETE FROM jobs WHERE id IN ({_STUDY_JOBS})",
    """DELETE FROM route_matches WHERE study_version_id IN
        (SELECT id FROM study_versions WHERE study_instance_uid = :uid)""",
    "DELETE FROM study_versions WHERE study_instance_uid = :uid",
    "DELETE FROM instances WHERE study_instance_uid = :uid",
    "DELETE FROM series WHERE study_instance_uid = :uid",
    "DELETE FROM studies WHERE study_instance_uid = :uid",
    # the journal's records of the study (not yet retired at a crash) must not file it back
    """INSERT INTO purged_studies (study_instance_uid, purged_at) VALUES (:uid, :now)
        ON CONFLICT (study_instance_uid) DO UPDATE SET purged_at = excluded.purged_at""",
    "DELETE FROM purged_studies WHERE purged_at < :now - :tombstone_s",
)
#: How long a purge's mark is kept: a journal record retires within seconds of being filed,
#: so a week covers every record a running node can still hold of the study.
TOMBSTONE_S = 7 * 86400


def _delete_rows(
    conn: sqlite3.Connection, paths: PurgePaths, study_uid: str, now: float
) -> list[Path]:
    """Delete every row of the study and mark it purged at ``now`` (inside the caller's
    transaction); return the files outside the study's folders that its rows named: vendor
    inbox files, shadow masks."""
    files = [
        paths.vendor_inbox_dir / row[0]
        for row in conn.execute(
            f"SELECT path FROM vendor_inbox WHERE job_id IN ({_STUDY_JOBS})", {"uid": study_uid}
        )
    ]
    files += [
        masks_dir_for(paths.data_dir) / f"{name}.npz" for name in _job_folders(conn, study_uid)
    ]
    values = {"uid": study_uid, "now": now, "tombstone_s": TOMBSTONE_S}
    for statement in _DELETE_ROWS:
        conn.execute(statement, values)
    return files


def _patient_id(conn: sqlite3.Connection, study_uid: str) -> str | None:
    row = conn.execute(
        "SELECT patient_id FROM studies WHERE study_instance_uid = ?", (study_uid,)
    ).fetchone()
    return None if row is None else row[0]


def _job_folders(conn: sqlite3.Connection, study_uid: str) -> list[str]:
    return [f"job-{row[0]}" for row in conn.execute(_STUDY_JOBS, {"uid": study_uid})]


def _remove(files: list[Path]) -> None:
    """After the commit: a crash before this leaves files no row names, never the reverse."""
    for path in files:
        path.unlink(missing_ok=True)


def _still_goes(found: StudyRetention | None, *, emergency: bool) -> bool:
    if found is None:
        return False
    return found.finished if emergency else found.verdict is Verdict.DELETABLE


def purge_study(
    conn: sqlite3.Connection,
    paths: PurgePaths,
    study_uid: str,
    *,
    now: float,
    max_age_s: float,
    emergency: bool = False,
    hook: PurgeHook | None = None,
) -> Purged | None:
    """Delete one study if it may still go (None when it may not: nothing changed).

    Call under ``purge_lock``. The verdict is taken again inside the deleting transaction,
    and a trashed file without its row (a C-STORE between rename and commit) undoes it.
    """
    trash = StudyTrash(paths.spool_dir, paths.outputs_dir, uid_component(study_uid))
    if not _still_goes(assess_one(conn, study_uid, now, max_age_s), emergency=emergency):
        return None
    trash.move_in(_job_folders(conn, study_uid))
    if hook is not None:
        hook("moved")
    try:
        with transaction(conn):
            indexed = {
                row[0]
                for row in conn.execute(
                    "SELECT path FROM instances WHERE study_instance_uid = ?", (study_uid,)
                )
            }
            verdict = assess_one(conn, study_uid, now, max_age_s)
            keep = not _still_goes(verdict, emergency=emergency) or not trash.files() <= indexed
            patient_id = None if keep else _patient_id(conn, study_uid)
            leftovers = [] if keep else _delete_rows(conn, paths, study_uid, time.time())
    except BaseException:  # a row this module does not know references the study, say
        trash.move_back()
        raise
    if keep:
        trash.move_back()
        return None
    if hook is not None:
        hook("deleted")
    _remove(leftovers)
    return Purged(study_uid, trash.empty(), patient_id)


def finish_interrupted(conn: sqlite3.Connection, paths: PurgePaths, now: float) -> list[Purged]:
    """Complete, or undo, the purges a crash interrupted; run at start before
    ``recover_spool`` and under ``purge_lock``.

    A study still finished (nothing new depends on it) is deleted: rows if still there,
    then the trash. One that a late arrival or a new job reopened, or whose trash holds a
    file its rows do not name, goes back to the spool (``recover_spool`` then indexes it).
    """
    done: list[Purged] = []
    for trash in interrupted(paths.spool_dir, paths.outputs_dir):
        uids = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT study_instance_uid FROM instances "
                "WHERE substr(path, 1, length(:c) + 1) = :c || '/'",
                {"c": trash.component},
            )
        ]
        with transaction(conn):
            verdicts = [assess_one(conn, uid, now, 0.0) for uid in uids]
            keep = any(v is not None and not v.finished for v in verdicts)
            if uids and not keep:  # rows still there: a trashed file without one is newer
                indexed = {
                    row[0]
                    for row in conn.execute(
                        "SELECT path FROM instances WHERE substr(path, 1, length(:c) + 1) "
                        "= :c || '/'",
                        {"c": trash.component},
                    )
                }
                keep = not trash.files() <= indexed
            patients = {} if keep else {uid: _patient_id(conn, uid) for uid in uids}
            leftovers = (
                [f for uid in uids for f in _delete_rows(conn, paths, uid, time.time())]
                if not keep
                else []
            )
        if keep:
            LOGGER.warning("undid an interrupted purge of a study that is needed again")
            trash.move_back()
            continue
        _remove(leftovers)
        freed = trash.empty()
        for uid in uids or [trash.component]:
            done.append(Purged(uid, freed, patients.get(uid)))
            LOGGER.warning("finished an interrupted purge of study %s (%d bytes)", uid, freed)
    return done
