"""The job table: one job per route match, and every transition of its state machine.

QUEUED → RUNNING → SUCCEEDED | FAILED, or CANCELLED by an operator. A job whose product is a
vendor's own node goes RUNNING → AWAITING_VENDOR once the series is sent, and from there to
SUCCEEDED when its results came back (``node.vendors``) or FAILED when they did not in time.
A failure that may pass (a timeout, a crashed worker, a plugin error) goes back to QUEUED
with an exponential backoff until ``max_attempts``; a failure that cannot (an undecodable
series, a missing plugin) is FAILED at once. A job left RUNNING by a crash is re-queued at
start-up by ``reconcile``; a finished job is never re-run, and a re-opened study brings new
route matches, so new jobs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from node.db import transaction
from node.shared_types import RetryPolicy

__all__ = [
    "Job",
    "JobState",
    "cancel",
    "claim_next",
    "create_jobs",
    "fail",
    "get_job",
    "list_jobs",
    "mark_awaiting_vendor",
    "mark_succeeded",
    "next_due_at",
    "reconcile",
    "retry",
    "retry_failed",
    "running_by_plugin",
]


class JobState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    AWAITING_VENDOR = "AWAITING_VENDOR"  # sent to a vendor's node; its results not yet back
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Job:
    """A job with the route match it runs: what to run on which series, and where results go."""

    id: int
    route_match_id: int
    state: JobState
    attempts: int
    next_attempt_at: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    timings: Mapping[str, float]
    study_instance_uid: str
    study_version: int
    series_instance_uid: str
    route_name: str
    plugin: str
    plugin_version: str | None
    destinations: tuple[str, ...]
    mode: str
    urgency: int = 1  # 0 urgent, 1 normal, 2 background (routers.schema.Urgency.rank)
    worker: str | None = None  # who ran the latest attempt: local/<host>/<pid>, a Celery name


_SELECT = """
SELECT j.*, v.study_instance_uid, v.version AS study_version, m.series_instance_uid,
       m.route_name, m.plugin, m.plugin_version, m.destinations, m.mode
FROM jobs j
JOIN route_matches m ON m.id = j.route_match_id
JOIN study_versions v ON v.id = m.study_version_id
"""


def _job(record: sqlite3.Row) -> Job:
    return Job(
        id=record["id"],
        route_match_id=record["route_match_id"],
        state=JobState(record["state"]),
        attempts=record["attempts"],
        next_attempt_at=record["next_attempt_at"],
        created_at=record["created_at"],
        started_at=record["started_at"],
        finished_at=record["finished_at"],
        error=record["error"],
        timings=json.loads(record["timings"] or "{}"),
        study_instance_uid=record["study_instance_uid"],
        study_version=record["study_version"],
        series_instance_uid=record["series_instance_uid"],
        route_name=record["route_name"],
        plugin=record["plugin"],
        plugin_version=record["plugin_version"],
        destinations=tuple(json.loads(record["destinations"] or "[]")),
        mode=record["mode"],
        urgency=record["urgency"],
        worker=record["worker"],
    )


def create_jobs(conn: sqlite3.Connection, now: float | None = None) -> int:
    """Make a QUEUED job for every route match that has none yet; returns how many."""
    now = time.time() if now is None else now
    # Read first: the scheduler polls, and a write lock taken for nothing would make the
    # SCP's index commits wait.
    missing = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM route_matches m "
        "WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.route_match_id = m.id))"
    ).fetchone()[0]
    if not missing:
        return 0
    with transaction(conn):
        cursor = conn.execute(
            """
            INSERT INTO jobs (route_match_id, state, attempts, next_attempt_at, created_at,
                              urgency)
            SELECT m.id, 'QUEUED', 0, ?, ?, m.urgency FROM route_matches m
            WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.route_match_id = m.id)
            ORDER BY m.id
            """,
            (now, now),
        )
    return cursor.rowcount


def reconcile(conn: sqlite3.Connection, policy: RetryPolicy, now: float | None = None) -> int:
    """At start-up: jobs left RUNNING by a crash go back to QUEUED (or FAILED when that
    crash used up their last attempt). Returns how many were touched."""
    now = time.time() if now is None else now
    with transaction(conn):
        failed = conn.execute(
            "UPDATE jobs SET state = 'FAILED', finished_at = ?, "
            "error = 'interrupted by a node restart on its last attempt' "
            "WHERE state = 'RUNNING' AND attempts >= ?",
            (now, policy.max_attempts),
        ).rowcount
        queued = conn.execute(
            "UPDATE jobs SET state = 'QUEUED', next_attempt_at = ?, "
            "error = 'interrupted by a node restart; re-queued' WHERE state = 'RUNNING'",
            (now,),
        ).rowcount
    return failed + queued


def claim_next(
    conn: sqlite3.Connection,
    now: float | None = None,
    limits: Mapping[str, int] | None = None,
    *,
    worker: str | None = None,
) -> Job | None:
    """Take the next due QUEUED job: RUNNING, one more attempt, started now, run by ``worker``.

    Every executor claims through here, so the order is the same for all: the most urgent
    first, then the one due longest, then the oldest. ``limits`` (plugin name → most jobs
    RUNNING at once, from the manifests' ``resources.max_concurrent_jobs``) passes over a
    plugin that has that many RUNNING already, on any executor, so its jobs wait and the
    others' go ahead.
    """
    now = time.time() if now is None else now
    limits = limits or {}
    if _next_due(conn, now, limits) is None:  # read first, as in create_jobs
        return None
    with transaction(conn):
        job_id = _next_due(conn, now, limits)
        if job_id is None:
            return None
        conn.execute(
            "UPDATE jobs SET state = 'RUNNING', attempts = attempts + 1, started_at = ?, "
            "finished_at = NULL, worker = ? WHERE id = ?",
            (now, worker, job_id),
        )
        return _job(conn.execute(_SELECT + " WHERE j.id = ?", (job_id,)).fetchone())


def running_by_plugin(conn: sqlite3.Connection) -> dict[str, int]:
    """How many jobs of each plugin are RUNNING now, on every executor."""
    return {
        record[0]: record[1]
        for record in conn.execute(
            "SELECT m.plugin, COUNT(*) FROM jobs j JOIN route_matches m ON m.id = j.route_match_id"
            " WHERE j.state = 'RUNNING' GROUP BY m.plugin"
        )
    }


def _next_due(conn: sqlite3.Connection, now: float, limits: Mapping[str, int]) -> int | None:
    """The id of the job ``claim_next`` takes now, or None."""
    running = running_by_plugin(conn) if limits else {}
    full = sorted(name for name, limit in limits.items() if running.get(name, 0) >= limit)
    skip = f" AND m.plugin NOT IN ({','.join('?' * len(full))})" if full else ""
    record = conn.execute(
        "SELECT j.id FROM jobs j JOIN route_matches m ON m.id = j.route_match_id "
        f"WHERE j.state = 'QUEUED' AND j.next_attempt_at <= ?{skip} "
        "ORDER BY j.urgency, j.next_attempt_at, j.id LIMIT 1",
        (now, *full),
    ).fetchone()
    return None if record is None else int(record[0])


def next_due_at(conn: sqlite3.Connection) -> float | None:
    value = conn.execute("SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'QUEUED'").fetchone()
    return None if value[0] is None else float(value[0])


def fail(
    conn: sqlite3.Connection,
    job_id: int,
    error: str,
    *,
    retryable: bool,
    policy: RetryPolicy,
    timings: Mapping[str, float] | None = None,
    now: float | None = None,
) -> JobState:
    """Record a failed attempt: QUEUED again after a backoff, or FAILED for good."""
    now = time.time() if now is None else now
    with transaction(conn):
        record = conn.execute("SELECT attempts, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if record is None or record["state"] not in (JobState.RUNNING, JobState.AWAITING_VENDOR):
            return JobState(record["state"]) if record else JobState.FAILED
        attempts = record["attempts"]
        again = retryable and attempts < policy.max_attempts
        state = JobState.QUEUED if again else JobState.FAILED
        conn.execute(
            "UPDATE jobs SET state = ?, error = ?, next_attempt_at = ?, finished_at = ?, "
            "timings = ? WHERE id = ?",
            (
                state.value,
                error,
                now + policy.delay_after(attempts) if again else now,
                None if again else now,
                json.dumps(dict(timings or {})),
                job_id,
            ),
        )
    return state


def mark_succeeded(
    conn: sqlite3.Connection,
    job_id: int,
    timings: Mapping[str, float],
    now: float,
    attempt: int | None = None,
) -> bool:
    """RUNNING (or AWAITING_VENDOR) → SUCCEEDED. Call inside the transaction that stores the
    job's results, so the results, their outbox rows and the state change commit together.
    False if the job is no longer running (cancelled meanwhile), or (``attempt`` given) runs
    another attempt now: the caller must roll back."""
    sql = (
        "UPDATE jobs SET state = 'SUCCEEDED', finished_at = ?, error = NULL, timings = ? "
        "WHERE id = ? AND state IN ('RUNNING', 'AWAITING_VENDOR')"
    )
    values: tuple = (now, json.dumps(dict(timings)), job_id)
    if attempt is not None:
        sql += " AND attempts = ?"
        values += (attempt,)
    return conn.execute(sql, values).rowcount == 1


def mark_awaiting_vendor(
    conn: sqlite3.Connection, job_id: int, timings: Mapping[str, float]
) -> bool:
    """RUNNING → AWAITING_VENDOR, inside the transaction that records what was sent."""
    cursor = conn.execute(
        "UPDATE jobs SET state = 'AWAITING_VENDOR', timings = ? WHERE id = ? AND state = 'RUNNING'",
        (json.dumps(dict(timings)), job_id),
    )
    return cursor.rowcount == 1


def get_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    record = conn.execute(_SELECT + " WHERE j.id = ?", (job_id,)).fetchone()
    return None if record is None else _job(record)


def list_jobs(
    conn: sqlite3.Connection, state: JobState | None = None, limit: int | None = None
) -> list[Job]:
    """Jobs (all, or in ``state``), newest first; at most ``limit`` of them when given."""
    where, params = ("", ()) if state is None else (" WHERE j.state = ?", (state.value,))
    records = conn.execute(
        _SELECT + where + " ORDER BY j.id DESC LIMIT ?", (*params, -1 if limit is None else limit)
    ).fetchall()
    return [_job(r) for r in records]


def cancel(conn: sqlite3.Connection, job_id: int, now: float | None = None) -> bool:
    """Cancel a QUEUED, RUNNING or AWAITING_VENDOR job (a running one is stopped by its
    executor; a vendor's late results are then kept, not relayed)."""
    now = time.time() if now is None else now
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE jobs SET state = 'CANCELLED', finished_at = ?, error = 'cancelled by operator' "
            "WHERE id = ? AND state IN ('QUEUED', 'RUNNING', 'AWAITING_VENDOR')",
            (now, job_id),
        )
    return cursor.rowcount == 1


def retry(conn: sqlite3.Connection, job_id: int, now: float | None = None) -> bool:
    """Queue a FAILED or CANCELLED job again with fresh attempts."""
    now = time.time() if now is None else now
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE jobs SET state = 'QUEUED', attempts = 0, next_attempt_at = ?, error = NULL, "
            "finished_at = NULL WHERE id = ? AND state IN ('FAILED', 'CANCELLED')",
            (now, job_id),
        )
    return cursor.rowcount == 1


def retry_failed(conn: sqlite3.Connection, now: float | None = None) -> int:
    """Queue every FAILED job again; returns how many."""
    now = time.time() if now is None else now
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE jobs SET state = 'QUEUED', attempts = 0, next_attempt_at = ?, error = NULL, "
            "finished_at = NULL WHERE state = 'FAILED'",
            (now,),
        )
    return cursor.rowcount
