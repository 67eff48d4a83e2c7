"""The outbox: one row per (result instance, destination), the record of what is owed to whom.

A row is PENDING until its destination acknowledges it (SENT) or it has failed
``max_attempts`` times (DEAD, the dead letter). Every change is a single UPDATE in a
transaction, so a ``kill -9`` while sending leaves the row PENDING and it is sent again on
restart; deterministic result UIDs make that re-send replace, not duplicate, at the peer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from node.db import transaction
from node.shared_types import RetryPolicy

__all__ = [
    "OutboxRow",
    "OutboxState",
    "due_rows",
    "enqueue",
    "list_rows",
    "mark_failed",
    "mark_sent",
    "next_due_at",
    "retry_dead",
]


class OutboxState(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    DEAD = "DEAD"


@dataclass(frozen=True)
class OutboxRow:
    """One delivery owed: which result file goes to which destination, and how it went so far."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    kind: str
    path: Path  # absolute path of the result file
    destination: str
    state: OutboxState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    sent_at: float | None
    job_id: int


_SELECT = """
SELECT o.id, o.sop_instance_uid, r.sop_class_uid, r.kind, r.path, o.destination, o.state,
       o.attempts, o.next_attempt_at, o.last_error, o.sent_at, r.job_id
FROM outbox o JOIN results r ON r.sop_instance_uid = o.sop_instance_uid
"""


def _row(record: sqlite3.Row, outputs_dir: Path) -> OutboxRow:
    return OutboxRow(
        id=record["id"],
        sop_instance_uid=record["sop_instance_uid"],
        sop_class_uid=record["sop_class_uid"],
        kind=record["kind"],
        path=outputs_dir / record["path"],
        destination=record["destination"],
        state=OutboxState(record["state"]),
        attempts=record["attempts"],
        next_attempt_at=record["next_attempt_at"],
        last_error=record["last_error"],
        sent_at=record["sent_at"],
        job_id=record["job_id"],
    )


def enqueue(conn: sqlite3.Connection, sop_instance_uid: str, destination: str, now: float) -> None:
    """Owe ``sop_instance_uid`` to ``destination`` (call inside the job's commit transaction).

    A re-run job produces the same UIDs; its row goes back to PENDING with fresh attempts so
    the replaced file is delivered again (the peer replaces its copy).
    """
    conn.execute(
        """
        INSERT INTO outbox (sop_instance_uid, destination, state, attempts, next_attempt_at)
        VALUES (?, ?, 'PENDING', 0, ?)
        ON CONFLICT (sop_instance_uid, destination) DO UPDATE SET
            state = 'PENDING', attempts = 0, next_attempt_at = excluded.next_attempt_at,
            last_error = NULL, sent_at = NULL
        """,
        (sop_instance_uid, destination, now),
    )


def due_rows(
    conn: sqlite3.Connection, destination: str, outputs_dir: Path, now: float, limit: int
) -> list[OutboxRow]:
    """PENDING rows of ``destination`` whose next attempt is due, oldest first."""
    records = conn.execute(
        _SELECT + " WHERE o.destination = ? AND o.state = 'PENDING' AND o.next_attempt_at <= ?"
        " ORDER BY o.next_attempt_at, o.id LIMIT ?",
        (destination, now, limit),
    ).fetchall()
    return [_row(r, outputs_dir) for r in records]


def next_due_at(conn: sqlite3.Connection, destination: str) -> float | None:
    """When the earliest PENDING row of ``destination`` becomes due (None if none is pending)."""
    value = conn.execute(
        "SELECT MIN(next_attempt_at) FROM outbox WHERE destination = ? AND state = 'PENDING'",
        (destination,),
    ).fetchone()[0]
    return None if value is None else float(value)


def mark_sent(conn: sqlite3.Connection, row_ids: Sequence[int], now: float) -> None:
    """Record the peer's acknowledgement; also stamp the send time on jobs now fully delivered."""
    if not row_ids:
        return
    with transaction(conn):
        conn.executemany(
            "UPDATE outbox SET state = 'SENT', sent_at = ?, last_error = NULL, "
            "attempts = attempts + 1 WHERE id = ? AND state = 'PENDING'",
            [(now, row_id) for row_id in row_ids],
        )
        _stamp_delivered_jobs(conn, row_ids)


def _stamp_delivered_jobs(conn: sqlite3.Connection, row_ids: Sequence[int]) -> None:
    """Put the send time (last delivery minus job finish) into the timings of finished jobs."""
    marks = ",".join("?" * len(row_ids))
    conn.execute(
        f"""
        UPDATE jobs SET timings = json_set(timings, '$.send', (
            SELECT MAX(o.sent_at) FROM outbox o JOIN results r USING (sop_instance_uid)
            WHERE r.job_id = jobs.id) - jobs.finished_at)
        WHERE jobs.finished_at IS NOT NULL
          AND id IN (SELECT r.job_id FROM outbox o JOIN results r USING (sop_instance_uid)
                     WHERE o.id IN ({marks}))
          AND NOT EXISTS (SELECT 1 FROM outbox o JOIN results r USING (sop_instance_uid)
                          WHERE r.job_id = jobs.id AND o.state != 'SENT')
        """,
        tuple(row_ids),
    )


def mark_failed(
    conn: sqlite3.Connection,
    rows: Iterable[OutboxRow],
    error: str,
    policy: RetryPolicy,
    now: float,
) -> list[OutboxRow]:
    """Count a failed attempt for each row; back off, or dead-letter it. Returns the dead ones."""
    dead: list[OutboxRow] = []
    with transaction(conn):
        for row in rows:
            attempts = row.attempts + 1
            if attempts >= policy.max_attempts:
                conn.execute(
                    "UPDATE outbox SET state = 'DEAD', attempts = ?, last_error = ? "
                    "WHERE id = ? AND state = 'PENDING'",
                    (attempts, error, row.id),
                )
                dead.append(row)
            else:
                conn.execute(
                    "UPDATE outbox SET attempts = ?, last_error = ?, next_attempt_at = ? "
                    "WHERE id = ? AND state = 'PENDING'",
                    (attempts, error, now + policy.delay_after(attempts), row.id),
                )
    return dead


def retry_dead(
    conn: sqlite3.Connection, now: float | None = None, destination: str | None = None
) -> int:
    """Put every dead-lettered row (of ``destination``, when given) back to PENDING with fresh
    attempts; returns how many."""
    now = time.time() if now is None else now
    which = "" if destination is None else " AND destination = ?"
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE outbox SET state = 'PENDING', attempts = 0, next_attempt_at = ? "
            "WHERE state = 'DEAD'" + which,
            (now,) if destination is None else (now, destination),
        )
    return cursor.rowcount


def list_rows(
    conn: sqlite3.Connection,
    outputs_dir: Path,
    state: OutboxState | None = None,
    limit: int | None = None,
) -> list[OutboxRow]:
    """Every outbox row (or those in ``state``), newest first; at most ``limit`` when given."""
    where, params = ("", ()) if state is None else (" WHERE o.state = ?", (state.value,))
    records = conn.execute(
        _SELECT + where + " ORDER BY o.id DESC LIMIT ?", (*params, -1 if limit is None else limit)
    ).fetchall()
    return [_row(r, outputs_dir) for r in records]
