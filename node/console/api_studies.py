"""Studies: the list, one study with its series and routed versions, its timeline, re-routing.

Patient name and ID are read only when ``http.console.show_patient_names`` is set; otherwise
they are null in every answer (the SQL does not even select them).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from node.console.api_common import Limit, refuse
from node.console.auth import Admin, Context, Viewer
from node.console.timeline import TimelineEvent, study_timeline
from node.db import transaction
from node.jobs.table import JobState

router = APIRouter(prefix="/api", tags=["studies"])

#: the longest a re-route request waits for the routing stage (it polls every
#: ``stability.poll_interval_s``; the wait is ten polls, within these bounds)
REROUTE_WAIT_S = (5.0, 30.0)


class Study(BaseModel):
    """A study as the index holds it: where it is in assembly, and what was received."""

    study_instance_uid: str
    state: Literal["receiving", "stable"]
    version: int = Field(description="the version being collected, or the last stable one")
    first_received_at: float
    last_received_at: float
    instances: int
    modalities: list[str]
    study_date: str | None
    study_description: str | None
    patient_name: str | None = Field(None, description="only with show_patient_names")
    patient_id: str | None = Field(None, description="only with show_patient_names")


class Series(BaseModel):
    series_instance_uid: str
    modality: str | None
    body_part_examined: str | None
    series_description: str | None
    series_number: int | None
    instances: int


class RouteMatch(BaseModel):
    """What the routes chose for a version, and the job that runs it."""

    route: str
    plugin: str
    plugin_version: str | None
    mode: Literal["production", "shadow"]
    series_instance_uid: str
    destinations: list[str]
    job_id: int | None
    job_state: JobState | None


class StudyVersion(BaseModel):
    version: int
    stable_at: float
    instance_count: int
    routed_at: float | None = Field(description="null: waiting for the routing stage")
    matches: list[RouteMatch]


class StudyDetail(Study):
    series: list[Series]
    versions: list[StudyVersion]


class RerouteRequest(BaseModel):
    version: int | None = Field(None, ge=1, description="default: the latest stable version")


class Rerouted(BaseModel):
    study_instance_uid: str
    version: int
    routed: bool = Field(description="false: the routing stage had not routed it yet")
    matches_added: int | None = Field(description="new route matches (each gets a job)")
    detail: str


_STUDIES = """
SELECT s.study_instance_uid, s.state, s.version, s.first_received_at, s.last_received_at,
       s.study_date, s.study_description, {patient},
       (SELECT COUNT(*) FROM instances i WHERE i.study_instance_uid = s.study_instance_uid)
           AS instances,
       (SELECT GROUP_CONCAT(se.modality, '\\') FROM series se
        WHERE se.study_instance_uid = s.study_instance_uid) AS modalities
FROM (SELECT * FROM studies {where} ORDER BY last_received_at DESC LIMIT ?) s
ORDER BY s.last_received_at DESC
"""


def _select(show_patient: bool, where: str = "") -> str:
    """The studies query; ``where`` and the limit pick the rows before anything is counted."""
    patient = "s.patient_name, s.patient_id"
    if not show_patient:
        patient = "NULL AS patient_name, NULL AS patient_id"
    return _STUDIES.format(patient=patient, where=where)


def _study(row: sqlite3.Row) -> Study:
    fields = dict(row)
    modalities = fields.pop("modalities")
    return Study(**fields, modalities=sorted(set(modalities.split("\\"))) if modalities else [])


@router.get("/studies", response_model=list[Study], summary="studies, newest first")
def list_studies(
    context: Context,
    who: Viewer,
    state: Literal["receiving", "stable"] | None = None,
    limit: Limit = 100,
) -> list[Study]:
    where = "WHERE state = ?" if state else ""
    sql = _select(context.config.http.console.show_patient_names, where)
    with context.database() as conn:
        rows = conn.execute(sql, (state, limit) if state else (limit,))
        return [_study(row) for row in rows]


@router.get("/studies/{uid}", response_model=StudyDetail, summary="a study, its series, versions")
def get_study(uid: str, context: Context, who: Viewer) -> StudyDetail:
    sql = _select(context.config.http.console.show_patient_names, "WHERE study_instance_uid = ?")
    with context.database() as conn:
        row = conn.execute(sql, (uid, 1)).fetchone()
        if row is None:
            raise HTTPException(404, f"no study {uid} in the index (GET /api/studies lists them)")
        series = [
            Series(**dict(record))
            for record in conn.execute(
                "SELECT se.series_instance_uid, se.modality, se.body_part_examined, "
                "se.series_description, se.series_number, (SELECT COUNT(*) FROM instances i "
                "WHERE i.series_instance_uid = se.series_instance_uid) AS instances "
                "FROM series se WHERE se.study_instance_uid = ? "
                "ORDER BY se.series_number, se.series_instance_uid",
                (uid,),
            )
        ]
        versions = _versions(conn, uid)
    return StudyDetail(**_study(row).model_dump(), series=series, versions=versions)


def _versions(conn: sqlite3.Connection, uid: str) -> list[StudyVersion]:
    matches: dict[int, list[RouteMatch]] = {}
    for m in conn.execute(
        "SELECT m.study_version_id, m.route_name, m.plugin, m.plugin_version, m.mode, "
        "m.series_instance_uid, m.destinations, j.id AS job_id, j.state AS job_state "
        "FROM route_matches m JOIN study_versions v ON v.id = m.study_version_id "
        "LEFT JOIN jobs j ON j.route_match_id = m.id WHERE v.study_instance_uid = ? "
        "ORDER BY m.id",
        (uid,),
    ):
        matches.setdefault(m["study_version_id"], []).append(
            RouteMatch(
                route=m["route_name"],
                plugin=m["plugin"],
                plugin_version=m["plugin_version"],
                mode=m["mode"],
                series_instance_uid=m["series_instance_uid"],
                destinations=json.loads(m["destinations"] or "[]"),
                job_id=m["job_id"],
                job_state=m["job_state"],
            )
        )
    return [
        StudyVersion(
            version=v["version"],
            stable_at=v["stable_at"],
            instance_count=v["instance_count"],
            routed_at=v["routed_at"],
            matches=matches.get(v["id"], []),
        )
        for v in conn.execute(
            "SELECT id, version, stable_at, instance_count, routed_at FROM study_versions "
            "WHERE study_instance_uid = ? ORDER BY version",
            (uid,),
        )
    ]


@router.get(
    "/studies/{uid}/timeline",
    response_model=list[TimelineEvent],
    summary="what happened to a study, sorted by time",
)
def get_timeline(uid: str, context: Context, who: Viewer) -> list[TimelineEvent]:
    with context.database() as conn:
        events = study_timeline(conn, uid)
    if events is None:
        raise HTTPException(404, f"no study {uid} in the index (GET /api/studies lists them)")
    return events


@router.post("/studies/{uid}/reroute", response_model=Rerouted, summary="route a version again")
def reroute(uid: str, context: Context, who: Admin, body: RerouteRequest | None = None) -> Rerouted:
    """Clear the version's ``routed_at`` and let the routing stage route it again.

    The routing stage polls ``study_versions`` for ``routed_at`` NULL every
    ``stability.poll_interval_s`` with the route table it keeps current (routes.yaml reloads
    on change and on SIGHUP), so clearing the stamp is all a re-route needs: the same code
    routes it as routed it first, nothing here loads routes or plugins, and no reload is
    asked for (that is for a changed file). A match the version already has is kept (its
    route, plugin pair is unique per version), so its job stays; a new match gets a new job.
    The request waits up to ten polls (``REROUTE_WAIT_S`` bounds it) for the stamp to come
    back, to answer what was added; when the stage is slower the answer says it is pending.
    """
    action = "study.reroute"
    with context.database() as conn:
        known = conn.execute("SELECT 1 FROM studies WHERE study_instance_uid = ?", (uid,))
        if known.fetchone() is None:
            refuse(context, who, action, uid, 404, f"no study {uid} in the index")
        versions = conn.execute(
            "SELECT id, version, routed_at FROM study_versions WHERE study_instance_uid = ? "
            "ORDER BY version",
            (uid,),
        ).fetchall()
        if not versions:
            reason = f"study {uid} has no stable version yet; it is routed once it is stable"
            refuse(context, who, action, uid, 409, reason)
        wanted = body.version if body and body.version else versions[-1]["version"]
        target = f"{uid} v{wanted}"
        chosen = next((v for v in versions if v["version"] == wanted), None)
        if chosen is None:
            have = ", ".join(str(v["version"]) for v in versions)
            reason = f"study {uid} has no stable version {wanted}; its versions: {have}"
            refuse(context, who, action, target, 404, reason)
        if context.reload_routes is None:
            reason = (
                f"this node has no routing stage (routes file {context.config.routes_file} not "
                "found at start): nothing would route the version; add the file and restart"
            )
            refuse(context, who, action, target, 409, reason)
        before = _match_count(conn, chosen["id"])
        with transaction(conn):
            cleared = conn.execute(
                "UPDATE study_versions SET routed_at = NULL WHERE id = ? AND routed_at IS NOT NULL",
                (chosen["id"],),
            ).rowcount
        if not cleared:
            reason = f"version {wanted} is waiting for the routing stage already; try again later"
            refuse(context, who, action, target, 409, reason)
        routed_at = _wait_routed(conn, chosen["id"], context.config.stability.poll_interval_s)
        after = _match_count(conn, chosen["id"]) if routed_at is not None else None
    added = None if after is None else after - before
    if routed_at is None:
        detail = "the routing stage has not routed it yet; it will at its next poll"
    else:
        detail = f"routed again with the current routes: {added} new match(es)"
    context.actions.record(
        who.name,
        action,
        target,
        before={"routed_at": chosen["routed_at"], "matches": before},
        after={"routed_at": routed_at, "matches": after},
    )
    return Rerouted(
        study_instance_uid=uid,
        version=wanted,
        routed=routed_at is not None,
        matches_added=added,
        detail=detail,
    )


def _match_count(conn: sqlite3.Connection, version_id: int) -> int:
    query = "SELECT COUNT(*) FROM route_matches WHERE study_version_id = ?"
    return conn.execute(query, (version_id,)).fetchone()[0]


def _wait_routed(conn: sqlite3.Connection, version_id: int, poll_s: float) -> float | None:
    """The version's new ``routed_at`` once the routing stage wrote it; None after the wait."""
    low, high = REROUTE_WAIT_S
    deadline = time.monotonic() + min(high, max(low, 10 * poll_s))
    while True:
        row = conn.execute("SELECT routed_at FROM study_versions WHERE id = ?", (version_id,))
        routed_at = row.fetchone()[0]
        if routed_at is not None or time.monotonic() >= deadline:
            return routed_at
        time.sleep(min(0.05, poll_s / 4))
