"""The node's SQLite database: the record every stage reads and writes.

One file, WAL mode, one schema. Each stage owns its tables (named in the comments) and talks
to the next stage only through rows. A connection is per thread; ``transaction`` wraps the
``BEGIN IMMEDIATE … COMMIT`` that every state change goes through, so a ``kill -9`` leaves
either the old state or the new one, never half of both.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from node.migrations import (
    MIGRATIONS,
    Migration,
    SchemaTooNew,
    backup,
    execute_statements,
    pending,
)

LOGGER = logging.getLogger(__name__)

#: The newest schema version: ``SCHEMA`` below has its shape (``node.migrations``).
SCHEMA_VERSION = MIGRATIONS[-1].version

SCHEMA = """
-- node.ingest.index: one row per stored instance, series and study -------------------------
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid  TEXT PRIMARY KEY,
    patient_id          TEXT,            -- never logged
    patient_name        TEXT,            -- never logged or printed by the CLI
    study_date          TEXT,
    study_description   TEXT,
    accession_number    TEXT,
    first_received_at   REAL NOT NULL,
    last_received_at    REAL NOT NULL,
    -- node.assembler: 'receiving' until quiet long enough, then 'stable'
    state               TEXT NOT NULL DEFAULT 'receiving',
    version             INTEGER NOT NULL DEFAULT 1,   -- version being collected or last stable
    released_at         REAL,            -- release of the association that last delivered to it
    changed_at          REAL             -- last time an instance was replaced (duplicate)
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);

CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL REFERENCES studies(study_instance_uid),
    modality            TEXT,
    body_part_examined  TEXT,
    series_description  TEXT,
    protocol_name       TEXT,
    series_number       INTEGER,
    frame_of_reference_uid TEXT
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_instance_uid);

CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid    TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL REFERENCES series(series_instance_uid),
    study_instance_uid  TEXT NOT NULL REFERENCES studies(study_instance_uid),
    sop_class_uid       TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path                TEXT NOT NULL,   -- relative to the spool folder
    size_bytes          INTEGER NOT NULL,
    calling_ae          TEXT,
    called_ae           TEXT,
    peer_address        TEXT,
    received_at         REAL NOT NULL,
    study_version       INTEGER NOT NULL, -- studies.version when it arrived
    instance_number     INTEGER,
    image_type          TEXT,            -- values joined with '\\'
    image_orientation   TEXT,            -- 6 numbers joined with '\\'
    image_position      TEXT,            -- 3 numbers joined with '\\'
    slice_thickness     REAL,
    number_of_frames    INTEGER,
    rows                INTEGER,
    columns             INTEGER,
    attributes          TEXT NOT NULL DEFAULT '{}'  -- JSON: header keyword -> value, for routing
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_instance_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_instance_uid);
-- one row: every spool file created before indexed_before has its instance row
-- (node.ingest.checkpoint: a start after a crash lists only folders written since)
CREATE TABLE IF NOT EXISTS spool_checkpoint (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_before      REAL NOT NULL
);
-- node.retention.purge: when a study was purged, so that the journal never files an instance
-- received before then (a record not yet retired at a crash) back into the spool
CREATE TABLE IF NOT EXISTS purged_studies (
    study_instance_uid  TEXT PRIMARY KEY,
    purged_at           REAL NOT NULL
);

-- node.assembler: each stable version of a study, recorded once ------------------------------
CREATE TABLE IF NOT EXISTS study_versions (
    id                  INTEGER PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL REFERENCES studies(study_instance_uid),
    version             INTEGER NOT NULL,
    stable_at           REAL NOT NULL,
    instance_count      INTEGER NOT NULL,
    routed_at           REAL,            -- set by routers once its matches are written
    UNIQUE (study_instance_uid, version)
);

-- node.routing: what each stable version should run (routers decides) -----------------------
CREATE TABLE IF NOT EXISTS route_matches (
    id                  INTEGER PRIMARY KEY,
    study_version_id    INTEGER NOT NULL REFERENCES study_versions(id),
    route_name          TEXT NOT NULL,
    plugin              TEXT NOT NULL,   -- name of the (last) plugin to run
    plugin_version      TEXT,            -- pinned version, or NULL for the newest installed
    series_instance_uid TEXT NOT NULL,   -- the selected series
    destinations        TEXT NOT NULL,   -- JSON list of destination names
    mode                TEXT NOT NULL,   -- 'production' | 'shadow'
    created_at          REAL NOT NULL,
    urgency             INTEGER NOT NULL DEFAULT 1,  -- the route's: 0 urgent 1 normal 2 background
    UNIQUE (study_version_id, route_name, plugin)
);

-- node.jobs: one job per route match -----------------------------------------------------------
CREATE TABLE IF NOT EXISTS jobs (
    id                  INTEGER PRIMARY KEY,
    route_match_id      INTEGER NOT NULL UNIQUE REFERENCES route_matches(id),
    state               TEXT NOT NULL DEFAULT 'QUEUED', -- QUEUED RUNNING SUCCEEDED FAILED CANCELLED
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     REAL NOT NULL,
    created_at          REAL NOT NULL,
    started_at          REAL,
    finished_at         REAL,
    error               TEXT,
    timings             TEXT NOT NULL DEFAULT '{}', -- JSON: stage -> seconds
    worker              TEXT,            -- who ran the latest attempt: local/<host>/<pid> or
                                         -- a Celery worker's name
    urgency             INTEGER NOT NULL DEFAULT 1  -- route_matches.urgency: claimed in this order
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_attempt_at);

-- node.jobs.remote: the Celery workers, as their heartbeats last described them --------------
CREATE TABLE IF NOT EXISTS workers (
    name                TEXT PRIMARY KEY,  -- the Celery worker's name
    queues              TEXT NOT NULL,   -- JSON list of queue names
    devices             TEXT NOT NULL,   -- JSON list of devices
    plugins             TEXT NOT NULL,   -- JSON list of name@version
    current_job         INTEGER,         -- jobs.id it runs now, or NULL when idle
    started_at          REAL NOT NULL,
    last_seen           REAL NOT NULL,   -- its last heartbeat
    jobs_succeeded      INTEGER NOT NULL DEFAULT 0,
    jobs_failed         INTEGER NOT NULL DEFAULT 0
);

-- node.outputs: result instances built by a job --------------------------------------------------
CREATE TABLE IF NOT EXISTS results (
    sop_instance_uid    TEXT PRIMARY KEY,
    job_id              INTEGER NOT NULL REFERENCES jobs(id),
    kind                TEXT NOT NULL,   -- seg | sr | text_sr | burned_in_sc
    sop_class_uid       TEXT NOT NULL,
    path                TEXT NOT NULL,   -- relative to the outputs folder
    created_at          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_job ON results(job_id);

-- node.dispatch: one row per (result instance, destination) ----------------------------------
CREATE TABLE IF NOT EXISTS outbox (
    id                  INTEGER PRIMARY KEY,
    sop_instance_uid    TEXT NOT NULL REFERENCES results(sop_instance_uid),
    destination         TEXT NOT NULL,
    state               TEXT NOT NULL DEFAULT 'PENDING', -- PENDING SENT DEAD
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     REAL NOT NULL,
    last_error          TEXT,
    sent_at             REAL,
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(destination, state, next_attempt_at);

-- node.shadow: findings kept for production/shadow agreement reports --------------------------
CREATE TABLE IF NOT EXISTS shadow_findings (
    id                  INTEGER PRIMARY KEY,
    job_id              INTEGER NOT NULL REFERENCES jobs(id),
    series_instance_uid TEXT NOT NULL,
    plugin              TEXT NOT NULL,
    plugin_version      TEXT NOT NULL,
    mode                TEXT NOT NULL,
    summary             TEXT NOT NULL,   -- JSON: measurements and segment masks' file
    created_at          REAL NOT NULL
);

-- node.vendors: a series sent to a vendor's AI node, and what came back -----------------------
CREATE TABLE IF NOT EXISTS vendor_requests (
    job_id              INTEGER PRIMARY KEY REFERENCES jobs(id),
    vendor              TEXT NOT NULL,   -- the plugin (name@version) standing for the vendor
    results_from        TEXT NOT NULL,   -- calling AE title its results come back with
    study_instance_uid  TEXT NOT NULL,   -- as sent (the pseudonym when de-identified)
    series_instance_uid TEXT NOT NULL,   -- as sent: its results reference this series
    deidentified        INTEGER NOT NULL,
    instances_sent      INTEGER NOT NULL,
    sent_at             REAL NOT NULL,
    expires_at          REAL NOT NULL,
    quiet_s             REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vendor_inbox (
    sop_instance_uid    TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,   -- as the vendor wrote it
    series_instance_uid TEXT NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    path                TEXT NOT NULL,   -- relative to the vendor inbox folder
    calling_ae          TEXT NOT NULL,
    received_at         REAL NOT NULL,
    job_id              INTEGER REFERENCES jobs(id),  -- set when relayed (or refused) for a job
    state               TEXT NOT NULL DEFAULT 'NEW'   -- NEW RELAYED REFUSED
);
CREATE INDEX IF NOT EXISTS vendor_inbox_study ON vendor_inbox(calling_ae, study_instance_uid);

-- node.pseudonym: what a de-identified copy replaced, so results can be re-identified -------
CREATE TABLE IF NOT EXISTS pseudonyms (
    job_key             TEXT NOT NULL,   -- the sending job: pseudonyms are per job
    kind                TEXT NOT NULL,   -- 'uid' | 'patient'
    original            TEXT NOT NULL,   -- never logged
    pseudonym           TEXT NOT NULL,
    created_at          REAL NOT NULL,
    UNIQUE (job_key, kind, original),    -- a retry reuses the pseudonym
    UNIQUE (job_key, kind, pseudonym)    -- a pseudonym names one original
);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open the database (creating it and its schema if needed) in WAL mode.

    ``isolation_level=None`` leaves transactions to ``transaction``; ``synchronous=FULL``
    makes a commit durable before it returns (``node.ingest.index.Index`` relaxes it for new
    instances, whose spool files are the durable record).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    try:
        if _version(conn) != SCHEMA_VERSION:
            upgrade(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def upgrade(conn: sqlite3.Connection, path: Path, chain: Sequence[Migration] = MIGRATIONS) -> None:
    """Bring the database to the chain's last version, or refuse one newer than that.

    Every stage and process connects, so the version is read again under ``BEGIN
    IMMEDIATE``: the first connection migrates, the others find it done. A new file gets
    ``SCHEMA``; an older one is backed up, then migrated in the same transaction, so a
    failed migration leaves it as it was.
    """
    latest = chain[-1].version
    found = _version(conn)
    if found > latest:
        raise SchemaTooNew(path, found, latest)
    with transaction(conn):
        found = _version(conn)
        if found > latest:
            raise SchemaTooNew(path, found, latest)
        if found == latest:
            return
        if found == 0:
            execute_statements(conn, SCHEMA)
        else:
            backup(path, found)
            for migration in pending(found, chain):
                LOGGER.warning(
                    "migrating %s to schema version %d: %s",
                    path,
                    migration.version,
                    migration.summary,
                )
                migration.apply(conn)
        conn.execute(f"PRAGMA user_version={latest}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
