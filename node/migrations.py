"""Numbered schema migrations, and the backup taken before they run.

``PRAGMA user_version`` is the schema version of a database file. Migration N turns version
N-1 into version N; ``node.db.upgrade`` runs every pending one, in order, in one transaction,
after copying the file with SQLite's online backup API. A migration's SQL is history: once
released it never changes, while ``node.db.SCHEMA`` (what a new database gets) is always the
newest shape, so a new file and a migrated one must end up alike (the tests compare them).

To change the schema: write ``_vN(conn)`` below, append ``Migration(N, "what", _vN)`` to
``MIGRATIONS`` and make ``node.db.SCHEMA`` the same shape. A migration runs inside a
transaction: no ``executescript`` (it commits) and no ``PRAGMA foreign_keys`` (a no-op there).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.durable import fsync_dir

LOGGER = logging.getLogger(__name__)


class SchemaTooNew(Exception):
    """The database was written by a newer ainode: this one must not touch it."""

    def __init__(self, path: Path, found: int, known: int) -> None:
        super().__init__(
            f"database {path} has schema version {found}, newer than version {known} that "
            f"this ainode knows: run the newer ainode, or restore a backup made for version "
            f"{known} or older"
        )
        self.found = found
        self.known = known


@dataclass(frozen=True)
class Migration:
    """Turns schema version ``version - 1`` into ``version``."""

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def execute_statements(conn: sqlite3.Connection, script: str) -> None:
    """Each ``;``-separated statement of ``script`` in the open transaction."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v2(conn: sqlite3.Connection) -> None:
    execute_statements(
        conn,
        """
CREATE TABLE IF NOT EXISTS vendor_requests (
    job_id              INTEGER PRIMARY KEY REFERENCES jobs(id),
    vendor              TEXT NOT NULL,
    results_from        TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    deidentified        INTEGER NOT NULL,
    instances_sent      INTEGER NOT NULL,
    sent_at             REAL NOT NULL,
    expires_at          REAL NOT NULL,
    quiet_s             REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vendor_inbox (
    sop_instance_uid    TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    path                TEXT NOT NULL,
    calling_ae          TEXT NOT NULL,
    received_at         REAL NOT NULL,
    job_id              INTEGER REFERENCES jobs(id),
    state               TEXT NOT NULL DEFAULT 'NEW'
);
CREATE INDEX IF NOT EXISTS vendor_inbox_study ON vendor_inbox(calling_ae, study_instance_uid);
CREATE TABLE IF NOT EXISTS pseudonyms (
    job_key             TEXT NOT NULL,
    kind                TEXT NOT NULL,
    original            TEXT NOT NULL,
    pseudonym           TEXT NOT NULL,
    created_at          REAL NOT NULL,
    UNIQUE (job_key, kind, original),
    UNIQUE (job_key, kind, pseudonym)
);
""",
    )


def _v3(conn: sqlite3.Connection) -> None:
    # retention re-checks a study's results inside the write transaction that deletes it:
    # without this index that read walked the whole results table while C-STOREs waited
    conn.execute("CREATE INDEX IF NOT EXISTS results_job ON results(job_id)")


def _v4(conn: sqlite3.Connection) -> None:
    # a second executor (Celery workers on other machines) shares the job table: which worker
    # ran a job, how urgent its route is, and the workers' heartbeats
    execute_statements(
        conn,
        """
ALTER TABLE route_matches ADD COLUMN urgency INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN worker TEXT;
ALTER TABLE jobs ADD COLUMN urgency INTEGER NOT NULL DEFAULT 1;
CREATE TABLE IF NOT EXISTS workers (
    name                TEXT PRIMARY KEY,
    queues              TEXT NOT NULL,
    devices             TEXT NOT NULL,
    plugins             TEXT NOT NULL,
    current_job         INTEGER,
    started_at          REAL NOT NULL,
    last_seen           REAL NOT NULL,
    jobs_succeeded      INTEGER NOT NULL DEFAULT 0,
    jobs_failed         INTEGER NOT NULL DEFAULT 0
);
""",
    )


def _v5(conn: sqlite3.Connection) -> None:
    # node.ingest.checkpoint: a start after a crash lists only the spool folders written
    # since this time; a migrated database has none yet, so its first such start walks all
    conn.execute(
        "CREATE TABLE IF NOT EXISTS spool_checkpoint ("
        "id INTEGER PRIMARY KEY CHECK (id = 1), indexed_before REAL NOT NULL)"
    )
    # node.retention.purge: journal records of a purged study are never filed back
    conn.execute(
        "CREATE TABLE IF NOT EXISTS purged_studies ("
        "study_instance_uid TEXT PRIMARY KEY, purged_at REAL NOT NULL)"
    )


#: Version 1 is the first release's schema; each entry's version is one more than the last.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "vendor_requests, vendor_inbox, pseudonyms", _v2),
    Migration(3, "results(job_id) index, for retention", _v3),
    Migration(4, "jobs.worker, jobs.urgency, route_matches.urgency, workers", _v4),
    Migration(5, "spool_checkpoint (start after a crash), purged_studies (journal)", _v5),
)


def pending(current: int, chain: Sequence[Migration]) -> list[Migration]:
    """The migrations that take version ``current`` to the chain's last, checked in order."""
    steps = [migration for migration in chain if migration.version > current]
    expected = list(range(current + 1, current + 1 + len(steps)))
    if [step.version for step in steps] != expected:
        raise RuntimeError(f"migrations are not numbered {expected}: a gap or a duplicate")
    return steps


def backup(path: Path, version: int) -> Path:
    """Copy the database at ``path`` to ``<db>.v<version>.bak``, durably.

    Called while the migrating connection holds the write lock, which blocks a backup on
    that same connection; a second connection reads (WAL lets it) the state the migration
    starts from, with the online backup API. The copy is renamed into place once on disk.
    """
    target = path.with_name(f"{path.name}.v{version}.bak")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(path)
    copy = sqlite3.connect(partial)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        copy.close()
        source.close()
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, target)
    fsync_dir(target.parent)
    LOGGER.warning("database %s (schema version %d) backed up to %s", path, version, target)
    return target
