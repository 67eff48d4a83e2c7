"""A study's history from the record: received, stable, routed, each job's stages, sent.

Everything is read from the tables, so the timeline of a study received before a restart is
as complete as today's. A job records how long each of its stages took (``jobs.timings``, in
the order they ran) and when it started, not when each stage ended; the end of a stage is the
job's start plus the seconds of that stage and the ones before it. The ``send`` entry that
the dispatcher adds once every delivery is acknowledged is timed the same way; the ``sent``
events carry the acknowledgement times themselves.
"""

from __future__ import annotations

import json
import sqlite3

from pydantic import BaseModel, Field

__all__ = ["TimelineEvent", "study_timeline"]


class TimelineEvent(BaseModel):
    """One thing that happened to a study, a version of it, or one of its jobs."""

    at: float = Field(description="Unix seconds")
    event: str = Field(
        description="received, last received, stable, routed, job queued, job started, "
        "stage <name>, job succeeded / failed / cancelled, sent"
    )
    detail: str
    job_id: int | None = None


_JOBS = """
SELECT j.id, j.state, j.attempts, j.created_at, j.started_at, j.finished_at, j.error, j.timings,
       m.route_name, m.plugin, m.plugin_version, m.mode, m.series_instance_uid, v.version
FROM jobs j
JOIN route_matches m ON m.id = j.route_match_id
JOIN study_versions v ON v.id = m.study_version_id
WHERE v.study_instance_uid = ?
ORDER BY j.id
"""

_SENT = """
SELECT r.job_id, o.destination, COUNT(*) AS owed, SUM(o.state = 'SENT') AS sent,
       MAX(CASE WHEN o.state = 'SENT' THEN o.sent_at END) AS last_sent_at
FROM outbox o JOIN results r ON r.sop_instance_uid = o.sop_instance_uid
WHERE r.job_id IN (SELECT j.id FROM jobs j
                   JOIN route_matches m ON m.id = j.route_match_id
                   JOIN study_versions v ON v.id = m.study_version_id
                   WHERE v.study_instance_uid = ?)
GROUP BY r.job_id, o.destination
"""


def study_timeline(conn: sqlite3.Connection, study_uid: str) -> list[TimelineEvent] | None:
    """The study's events sorted by time (ties keep the pipeline's order); None: no study."""
    study = conn.execute(
        "SELECT first_received_at FROM studies WHERE study_instance_uid = ?", (study_uid,)
    ).fetchone()
    if study is None:
        return None
    events = [*_arrivals(conn, study_uid, study["first_received_at"])]
    events += _versions(conn, study_uid)
    for job in conn.execute(_JOBS, (study_uid,)):
        events += _job_events(job)
    for row in conn.execute(_SENT, (study_uid,)):
        if row["last_sent_at"] is not None:
            detail = f"to {row['destination']}: {row['sent']} of {row['owed']} result(s)"
            sent = TimelineEvent(
                at=row["last_sent_at"], event="sent", detail=detail, job_id=row["job_id"]
            )
            events.append(sent)
    order = {id(event): index for index, event in enumerate(events)}
    return sorted(events, key=lambda e: (e.at, order[id(e)]))


def _arrivals(conn: sqlite3.Connection, study_uid: str, first_at: float) -> list[TimelineEvent]:
    first = conn.execute(
        "SELECT calling_ae FROM instances WHERE study_instance_uid = ? "
        "ORDER BY received_at LIMIT 1",
        (study_uid,),
    ).fetchone()
    sender = f" from {first['calling_ae']}" if first and first["calling_ae"] else ""
    events = [TimelineEvent(at=first_at, event="received", detail=f"first instance{sender}")]
    for row in conn.execute(
        "SELECT study_version, COUNT(*) AS n, MAX(received_at) AS last_at FROM instances "
        "WHERE study_instance_uid = ? GROUP BY study_version ORDER BY study_version",
        (study_uid,),
    ):
        detail = f"version {row['study_version']}: {row['n']} instance(s)"
        events.append(TimelineEvent(at=row["last_at"], event="last received", detail=detail))
    return events


def _versions(conn: sqlite3.Connection, study_uid: str) -> list[TimelineEvent]:
    events = []
    for version in conn.execute(
        "SELECT id, version, stable_at, instance_count, routed_at FROM study_versions "
        "WHERE study_instance_uid = ? ORDER BY version",
        (study_uid,),
    ):
        label = f"version {version['version']}"
        events.append(
            TimelineEvent(
                at=version["stable_at"],
                event="stable",
                detail=f"{label}: {version['instance_count']} instance(s)",
            )
        )
        if version["routed_at"] is None:
            continue
        matches = [
            f"{m['route_name']} → {m['plugin']}" + (" (shadow)" if m["mode"] == "shadow" else "")
            for m in conn.execute(
                "SELECT route_name, plugin, mode FROM route_matches WHERE study_version_id = ? "
                "ORDER BY id",
                (version["id"],),
            )
        ]
        what = "; ".join(matches) if matches else "no route matched"
        routed = f"{label}: {what}"
        events.append(TimelineEvent(at=version["routed_at"], event="routed", detail=routed))
    return events


def _job_events(job: sqlite3.Row) -> list[TimelineEvent]:
    job_id = job["id"]
    plugin = job["plugin"] + (f"@{job['plugin_version']}" if job["plugin_version"] else "")
    shadow = ", shadow" if job["mode"] == "shadow" else ""
    queued = (
        f"{plugin} on series {job['series_instance_uid']} (route {job['route_name']}{shadow}, "
        f"version {job['version']})"
    )
    events = [TimelineEvent(at=job["created_at"], event="job queued", detail=queued, job_id=job_id)]
    started = job["started_at"]
    if started is not None:
        attempt = f"attempt {job['attempts']}"
        events.append(TimelineEvent(at=started, event="job started", detail=attempt, job_id=job_id))
        elapsed = 0.0
        for stage, seconds in json.loads(job["timings"] or "{}").items():
            if not isinstance(seconds, int | float):
                continue
            elapsed += seconds
            events.append(
                TimelineEvent(
                    at=started + elapsed,
                    event=f"stage {stage}",
                    detail=f"{seconds:.3f} s",
                    job_id=job_id,
                )
            )
    if job["finished_at"] is not None:
        events.append(
            TimelineEvent(
                at=job["finished_at"],
                event=f"job {job['state'].lower()}",
                detail=job["error"] or "",
                job_id=job_id,
            )
        )
    return events
