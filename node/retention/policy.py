"""Which studies may go: one query over the pipeline's tables, one verdict per study.

A study is deletable only when nothing still depends on it: it is stable, its latest
version was routed, no route match waits for its job, no job of any version is QUEUED or
RUNNING, no vendor request is still awaited, and every outbox row of its results is SENT.
A DEAD outbox row (the dead letter) counts as undelivered: an operator may still ``ainode
outbox retry`` it, so the study and its results stay until the row is retried and sent
(``ainode purge`` lists such studies).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["StudyRetention", "Verdict", "assess", "assess_one"]


class Verdict(StrEnum):
    """Why a study stays, or DELETABLE."""

    DELETABLE = "deletable"
    YOUNG = "kept: delivered, not old enough"
    RECEIVING = "kept: still receiving"
    NOT_ROUTED = "kept: not routed yet"
    RUNNING = "kept: jobs to start, queued or running"
    AWAITING_VENDOR = "kept: vendor results awaited"
    UNDELIVERED = "kept: results not yet delivered"
    DEAD_LETTER = "kept: dead-lettered results (retry or resolve them)"


@dataclass(frozen=True)
class StudyRetention:
    """A study's verdict, when it settled (last delivery, else routing/stability) and size."""

    study_instance_uid: str
    verdict: Verdict
    settled_at: float | None
    spool_bytes: int

    @property
    def finished(self) -> bool:
        """Nothing depends on it: deletable now by age, or in an emergency regardless."""
        return self.verdict in (Verdict.DELETABLE, Verdict.YOUNG)


def _query(one_study: bool) -> str:
    """Every column a verdict needs, grouped per study in one pass over each table; for one
    study (``:uid``) each pass starts from that study's rows."""
    only = "AND sv.study_instance_uid = :uid" if one_study else ""
    return f"""
WITH jobs_by_study AS (
    SELECT sv.study_instance_uid AS uid, MAX(j.finished_at) AS finished_at,
           SUM(j.state IN ('QUEUED', 'RUNNING')) AS running, SUM(j.id IS NULL) AS unjobbed
    FROM route_matches m JOIN study_versions sv ON sv.id = m.study_version_id
    LEFT JOIN jobs j ON j.route_match_id = m.id
    WHERE 1 {only} GROUP BY sv.study_instance_uid),
vendor_by_study AS (
    SELECT sv.study_instance_uid AS uid, COUNT(*) AS awaiting
    FROM vendor_requests vr JOIN jobs j ON j.id = vr.job_id
    JOIN route_matches m ON m.id = j.route_match_id
    JOIN study_versions sv ON sv.id = m.study_version_id
    WHERE vr.expires_at > :now {only} GROUP BY sv.study_instance_uid),
outbox_by_study AS (
    SELECT sv.study_instance_uid AS uid, MAX(o.sent_at) AS sent_at,
           SUM(o.state = 'PENDING') AS pending, SUM(o.state = 'DEAD') AS dead
    FROM outbox o JOIN results r ON r.sop_instance_uid = o.sop_instance_uid
    JOIN jobs j ON j.id = r.job_id JOIN route_matches m ON m.id = j.route_match_id
    JOIN study_versions sv ON sv.id = m.study_version_id
    WHERE 1 {only} GROUP BY sv.study_instance_uid),
bytes_by_study AS (
    SELECT study_instance_uid AS uid, SUM(size_bytes) AS spool_bytes FROM instances
    WHERE 1 {only.replace("sv.", "")} GROUP BY study_instance_uid)
SELECT s.study_instance_uid AS uid, s.state AS state, v.stable_at AS stable_at,
       v.routed_at AS routed_at, jb.finished_at AS finished_at,
       COALESCE(jb.running, 0) AS running, COALESCE(jb.unjobbed, 0) AS unjobbed,
       COALESCE(vb.awaiting, 0) AS awaiting, ob.sent_at AS sent_at,
       COALESCE(ob.pending, 0) AS pending, COALESCE(ob.dead, 0) AS dead,
       COALESCE(bb.spool_bytes, 0) AS spool_bytes
FROM studies s
LEFT JOIN study_versions v
       ON v.study_instance_uid = s.study_instance_uid AND v.version = s.version
LEFT JOIN jobs_by_study jb ON jb.uid = s.study_instance_uid
LEFT JOIN vendor_by_study vb ON vb.uid = s.study_instance_uid
LEFT JOIN outbox_by_study ob ON ob.uid = s.study_instance_uid
LEFT JOIN bytes_by_study bb ON bb.uid = s.study_instance_uid
{"WHERE s.study_instance_uid = :uid" if one_study else ""}
"""


_ALL = _query(one_study=False)
#: Inside the purge's write transaction: ``results`` has no index on ``job_id``, so this
#: still reads that table once (about 50 ms per 100,000 results).
_ONE = _query(one_study=True)


def _verdict(row: sqlite3.Row, now: float, max_age_s: float) -> Verdict:
    if row["state"] != "stable":
        return Verdict.RECEIVING
    if row["stable_at"] is None or row["routed_at"] is None:
        return Verdict.NOT_ROUTED
    if row["running"] or row["unjobbed"]:  # a match the executor has yet to make a job of
        return Verdict.RUNNING
    if row["awaiting"]:
        return Verdict.AWAITING_VENDOR
    if row["pending"]:
        return Verdict.UNDELIVERED
    if row["dead"]:
        return Verdict.DEAD_LETTER
    if _settled_at(row) > now - max_age_s:
        return Verdict.YOUNG
    return Verdict.DELETABLE


def _settled_at(row: sqlite3.Row) -> float:
    times: Iterable[float | None] = (
        row["stable_at"],
        row["routed_at"],
        row["finished_at"],
        row["sent_at"],
    )
    return max(t for t in times if t is not None)


def _retention(row: sqlite3.Row, now: float, max_age_s: float) -> StudyRetention:
    verdict = _verdict(row, now, max_age_s)
    settled = _settled_at(row) if row["stable_at"] is not None else None
    return StudyRetention(row["uid"], verdict, settled, int(row["spool_bytes"]))


def assess(conn: sqlite3.Connection, now: float, max_age_s: float) -> list[StudyRetention]:
    """Every study's verdict, the longest settled first (the order an emergency deletes in)."""
    rows = conn.execute(_ALL, {"now": now}).fetchall()
    verdicts = [_retention(row, now, max_age_s) for row in rows]
    return sorted(verdicts, key=lambda r: (r.settled_at is None, r.settled_at or 0.0))


def assess_one(
    conn: sqlite3.Connection, study_uid: str, now: float, max_age_s: float
) -> StudyRetention | None:
    """One study's verdict now (None when it is gone): re-checked inside the purge's
    transaction, so a late arrival or a new job since the listing keeps the study."""
    row = conn.execute(_ONE, {"now": now, "uid": study_uid}).fetchone()
    return None if row is None else _retention(row, now, max_age_s)
