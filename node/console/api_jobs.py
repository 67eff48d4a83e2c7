"""Jobs and the outbox: what ran, what it produced, what is owed where; retry and cancel.

The actions are the ones ``ainode jobs`` and ``ainode outbox`` take (``node.jobs.table``,
``node.dispatch.outbox``): a running node's executor and senders pick the changed rows up at
their next poll, as they do after the CLI.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from node.console.api_common import Limit, refuse
from node.console.auth import Admin, Context, Viewer
from node.console.context import ConsoleContext
from node.console.credentials import Principal
from node.dispatch import outbox
from node.dispatch.outbox import OutboxState
from node.jobs import table
from node.jobs.table import Job, JobState
from routers.schema import Urgency

router = APIRouter(prefix="/api", tags=["jobs"])


class JobOut(BaseModel):
    """A job and the route match it runs."""

    id: int
    state: JobState
    attempts: int
    plugin: str
    plugin_version: str | None = Field(description="null: the newest installed")
    mode: str = Field(description="production or shadow")
    route: str
    study_instance_uid: str
    study_version: int
    series_instance_uid: str
    destinations: list[str]
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    timings: dict[str, float] = Field(description="seconds per stage, in the order they ran")
    worker: str | None = Field(description="who ran the latest attempt (local/... or a worker)")
    urgency: Urgency = Field(description="the route's: claimed urgent first, background last")


class Delivery(BaseModel):
    destination: str
    state: OutboxState
    attempts: int
    sent_at: float | None
    last_error: str | None


class Result(BaseModel):
    sop_instance_uid: str
    kind: str = Field(description="seg, sr, text_sr or burned_in_sc")
    sop_class_uid: str
    created_at: float
    deliveries: list[Delivery]


class JobDetail(JobOut):
    results: list[Result]


class JobChanged(BaseModel):
    id: int
    state: JobState


class OutboxRow(BaseModel):
    id: int
    sop_instance_uid: str
    destination: str
    state: OutboxState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    sent_at: float | None
    job_id: int


class Outbox(BaseModel):
    destinations: dict[str, dict[str, int]] = Field(
        description="rows per state for every destination (configured ones with none: {})"
    )
    rows: list[OutboxRow] = Field(description="PENDING and DEAD rows, newest first")


class RetryDeadRequest(BaseModel):
    destination: str | None = Field(None, description="default: every destination")


class RetryDeadAnswer(BaseModel):
    retried: int


def _job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        state=job.state,
        attempts=job.attempts,
        plugin=job.plugin,
        plugin_version=job.plugin_version,
        mode=job.mode,
        route=job.route_name,
        study_instance_uid=job.study_instance_uid,
        study_version=job.study_version,
        series_instance_uid=job.series_instance_uid,
        destinations=list(job.destinations),
        worker=job.worker,
        urgency=Urgency.of_rank(job.urgency),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        timings={k: v for k, v in job.timings.items() if isinstance(v, int | float)},
    )


@router.get("/jobs", response_model=list[JobOut], summary="jobs, newest first")
def list_jobs(
    context: Context, who: Viewer, state: JobState | None = None, limit: Limit = 100
) -> list[JobOut]:
    with context.database() as conn:
        return [_job_out(job) for job in table.list_jobs(conn, state, limit)]


@router.get("/jobs/{job_id}", response_model=JobDetail, summary="a job, its results, deliveries")
def get_job(job_id: int, context: Context, who: Viewer) -> JobDetail:
    with context.database() as conn:
        job = table.get_job(conn, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id} (GET /api/jobs lists them)")
        results = _results(conn, job_id)
    return JobDetail(**_job_out(job).model_dump(), results=results)


def _results(conn: sqlite3.Connection, job_id: int) -> list[Result]:
    deliveries: dict[str, list[Delivery]] = {}
    for row in conn.execute(
        "SELECT o.sop_instance_uid, o.destination, o.state, o.attempts, o.sent_at, o.last_error "
        "FROM outbox o JOIN results r ON r.sop_instance_uid = o.sop_instance_uid "
        "WHERE r.job_id = ? ORDER BY o.destination",
        (job_id,),
    ):
        uid = row["sop_instance_uid"]
        deliveries.setdefault(uid, []).append(
            Delivery(**{k: row[k] for k in Delivery.model_fields})
        )
    return [
        Result(**dict(row), deliveries=deliveries.get(row["sop_instance_uid"], []))
        for row in conn.execute(
            "SELECT sop_instance_uid, kind, sop_class_uid, created_at FROM results "
            "WHERE job_id = ? ORDER BY created_at, sop_instance_uid",
            (job_id,),
        )
    ]


@router.post("/jobs/{job_id}/retry", response_model=JobChanged, summary="queue a job again")
def retry_job(job_id: int, context: Context, who: Admin) -> JobChanged:
    """A FAILED or CANCELLED job back to QUEUED with fresh attempts (``ainode jobs retry``)."""
    only = "only a FAILED or CANCELLED job can be retried"
    return _change(context, who, job_id, "job.retry", table.retry, only)


@router.post("/jobs/{job_id}/cancel", response_model=JobChanged, summary="cancel a job")
def cancel_job(job_id: int, context: Context, who: Admin) -> JobChanged:
    """A QUEUED, RUNNING or AWAITING_VENDOR job to CANCELLED (``ainode jobs cancel``); the
    executor stops a running one."""
    only = "only a QUEUED, RUNNING or AWAITING_VENDOR job can be cancelled"
    return _change(context, who, job_id, "job.cancel", table.cancel, only)


def _change(
    context: ConsoleContext,
    who: Principal,
    job_id: int,
    action: str,
    change: Callable[[sqlite3.Connection, int], bool],
    only: str,
) -> JobChanged:
    """Apply the table's own transition (the CLI's), and record it or why it was refused."""
    target = f"job {job_id}"
    with context.database() as conn:
        before = table.get_job(conn, job_id)
        if before is None:
            refuse(context, who, action, target, 404, f"no job {job_id} (GET /api/jobs lists them)")
        changed = change(conn, job_id)
        after = table.get_job(conn, job_id)
    if after is None:  # purged with its study meanwhile
        refuse(context, who, action, target, 404, f"job {job_id} was purged with its study")
    if not changed:
        reason = f"job {job_id} is {after.state.value}; {only}"
        refuse(context, who, action, target, 409, reason, before={"state": after.state.value})
    context.actions.record(
        who.name,
        action,
        target,
        before={"state": before.state.value, "attempts": before.attempts},
        after={"state": after.state.value, "attempts": after.attempts},
    )
    return JobChanged(id=job_id, state=after.state)


@router.get("/outbox", response_model=Outbox, summary="deliveries owed and dead-lettered")
def get_outbox(context: Context, who: Viewer, limit: Limit = 100) -> Outbox:
    counts: dict[str, dict[str, int]] = {name: {} for name in context.config.destinations}
    outputs = context.config.storage.outputs_dir
    with context.database() as conn:
        for destination, state, count in conn.execute(
            "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state"
        ):
            counts.setdefault(destination, {})[state] = count
        rows = outbox.list_rows(conn, outputs, OutboxState.PENDING, limit)
        rows += outbox.list_rows(conn, outputs, OutboxState.DEAD, limit)
    rows = sorted(rows, key=lambda row: row.id, reverse=True)[:limit]
    return Outbox(
        destinations=counts,
        rows=[OutboxRow(**{k: getattr(row, k) for k in OutboxRow.model_fields}) for row in rows],
    )


@router.post("/outbox/retry-dead", response_model=RetryDeadAnswer, summary="send dead rows again")
def retry_dead(
    context: Context, who: Admin, body: RetryDeadRequest | None = None
) -> RetryDeadAnswer:
    """Dead-lettered rows back to PENDING with fresh attempts (``ainode outbox retry``)."""
    action = "outbox.retry-dead"
    destination = body.destination if body else None
    target = destination or "every destination"
    with context.database() as conn:
        if destination is not None and destination not in context.config.destinations:
            exists = conn.execute(
                "SELECT 1 FROM outbox WHERE destination = ? LIMIT 1", (destination,)
            )
            if exists.fetchone() is None:
                names = ", ".join(sorted(context.config.destinations)) or "none"
                reason = f"no destination {destination!r}; node.yaml names: {names}"
                refuse(context, who, action, target, 404, reason)
        retried = outbox.retry_dead(conn, destination=destination)
    context.actions.record(who.name, action, target, after={"retried": retried})
    return RetryDeadAnswer(retried=retried)
