"""The node's HTTP endpoints for its workers: a job's series files out, its result files in.

A worker proves itself with the token of ``jobs.celery.worker_token_file``. Every call names
the job and the attempt it works on; only the attempt the node published and still waits for
is served or accepted (409 otherwise), so a redelivered or outdated message can never store
results twice. Results are checked before they count: each file must be a DICOM instance of
the SOP instance and class the worker names, of a kind the node produces or relays; then the
results, their outbox rows and SUCCEEDED commit in one transaction, as for a local job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Annotated

import pydicom
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse

from node.console.auth import Context
from node.console.context import ConsoleContext
from node.db import transaction
from node.jobs import table
from node.jobs.remote.protocol import Finished, Heartbeat, Started
from node.jobs.results import series_files, store_results
from node.jobs.table import Job, JobState
from node.jobs.work import ResultFile, WorkResult
from node.shared_types import KIND_BY_SOP_CLASS, RetryPolicy

LOG = logging.getLogger(__name__)
MAX_RESULT_BYTES = 4 * 2**30
CHUNK = 1 << 20

router = APIRouter(prefix="/api/worker", tags=["workers"])


def _worker(request: Request, context: Context) -> None:
    token_file = context.config.jobs.celery.worker_token_file
    header = request.headers.get("authorization", "")
    if token_file is None or not header.lower().startswith("bearer "):
        raise HTTPException(401, "workers present the node's worker token (Bearer)")
    expected = hashlib.sha256(token_file.read_text().strip().encode()).digest()
    given = hashlib.sha256(header[7:].strip().encode()).digest()
    if not hmac.compare_digest(expected, given):
        raise HTTPException(401, "wrong worker token")


Worker = Annotated[None, Depends(_worker)]


def _running(conn: sqlite3.Connection, job_id: int, attempt: int) -> Job:
    job = table.get_job(conn, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    if job.state is not JobState.RUNNING or job.attempts != attempt:
        raise HTTPException(
            409, f"job {job_id} attempt {attempt} is not running (now {job.state}, "
            f"attempt {job.attempts}): drop it"
        )  # fmt: skip
    return job


def attempt_folder(context: ConsoleContext, job_id: int, attempt: int) -> Path:
    return context.config.storage.outputs_dir / f"job-{job_id}" / f"attempt-{attempt}"


@router.get("/jobs/{job_id}/attempts/{attempt}/files/{index}")
def series_file(job_id: int, attempt: int, index: int, context: Context, _: Worker):
    with context.database() as conn:
        job = _running(conn, job_id, attempt)
        files = series_files(conn, job, context.config.storage.spool_dir)
    if not 0 <= index < len(files):
        raise HTTPException(404, f"job {job_id} has {len(files)} series files")
    return FileResponse(files[index], media_type="application/dicom")


@router.post("/jobs/{job_id}/attempts/{attempt}/started")
def started(job_id: int, attempt: int, body: Started, context: Context, _: Worker) -> dict:
    """The worker begins: the job's timeout runs from now, and the job names its worker."""
    now = time.time()
    with context.database() as conn:
        _running(conn, job_id, attempt)
        with transaction(conn):
            conn.execute(
                "UPDATE jobs SET started_at = ?, worker = ? WHERE id = ? AND attempts = ?",
                (now, body.worker, job_id, attempt),
            )
            conn.execute(
                "UPDATE workers SET current_job = ?, last_seen = ? WHERE name = ?",
                (job_id, now, body.worker),
            )
    return {"job_id": job_id, "attempt": attempt}


@router.put("/jobs/{job_id}/attempts/{attempt}/results/{name}", status_code=201)
async def upload_result(
    job_id: int, attempt: int, name: str, request: Request, context: Context, _: Worker
) -> dict:
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name[0] == ".":
        raise HTTPException(422, "a result name is letters, digits, '-', '_' and '.'")
    with context.database() as conn:
        _running(conn, job_id, attempt)
    folder = attempt_folder(context, job_id, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.part"
    size = 0
    with temporary.open("wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_RESULT_BYTES:
                out.close()
                temporary.unlink(missing_ok=True)
                raise HTTPException(413, f"a result file is at most {MAX_RESULT_BYTES} bytes")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, folder / name)
    return {"name": name, "size": size}


def _checked(folder: Path, body: Finished, outputs_root: Path) -> tuple[ResultFile, ...]:
    files = []
    for result in body.results:
        path = folder / result.name
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise HTTPException(422, f"result {result.name} is not readable DICOM: {exc}") from exc
        uid, sop_class = str(header.get("SOPInstanceUID", "")), str(header.get("SOPClassUID", ""))
        if (uid, sop_class) != (result.sop_instance_uid, result.sop_class_uid):
            raise HTTPException(
                422, f"result {result.name} holds {uid} of class {sop_class}, not what was named"
            )
        if KIND_BY_SOP_CLASS.get(sop_class) is None:
            raise HTTPException(422, f"result {result.name}: SOP class {sop_class} is no result")
        relative = str(path.relative_to(outputs_root))
        files.append(ResultFile(uid, sop_class, result.kind, relative))
    return tuple(files)


@router.post("/jobs/{job_id}/attempts/{attempt}/finished")
def finished(job_id: int, attempt: int, body: Finished, context: Context, _: Worker) -> dict:
    config = context.config
    jobs = config.jobs
    policy = RetryPolicy(jobs.max_attempts, jobs.backoff_s, jobs.backoff_max_s)
    with context.database() as conn:
        job = _running(conn, job_id, attempt)
        outcome = "failed"
        if body.error is None:
            folder = attempt_folder(context, job_id, attempt)
            result = WorkResult(
                job_id, _checked(folder, body, config.storage.outputs_dir), body.timings
            )
            stored = store_results(conn, job, result, config, attempt=attempt)
            if not stored:
                raise HTTPException(409, f"job {job_id} attempt {attempt} ended meanwhile")
            outcome = "succeeded"
            LOG.info("job %d (%s) succeeded on %s: %d result(s)", job_id, job.plugin,
                     body.worker, len(result.results))  # fmt: skip
            if context.wake_dispatcher is not None:
                context.wake_dispatcher()
        else:
            state = table.fail(
                conn, job_id, body.error, retryable=body.retryable, policy=policy,
                timings=body.timings,
            )  # fmt: skip
            LOG.error("job %d (%s) on %s: %s -> %s", job_id, job.plugin, body.worker,
                      body.error, state.value)  # fmt: skip
        column = "jobs_succeeded" if outcome == "succeeded" else "jobs_failed"
        with transaction(conn):
            conn.execute(
                f"UPDATE workers SET current_job = NULL, last_seen = ?, {column} = {column} + 1 "
                "WHERE name = ?",
                (time.time(), body.worker),
            )
        state = table.get_job(conn, job_id)
    return {"job_id": job_id, "state": state.state.value if state else "gone"}


@router.post("/heartbeat")
def heartbeat(body: Heartbeat, context: Context, _: Worker) -> dict:
    now = time.time()
    with context.database() as conn, transaction(conn):
        conn.execute(
            """
            INSERT INTO workers (name, queues, devices, plugins, started_at, last_seen)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (name) DO UPDATE SET queues = excluded.queues,
                devices = excluded.devices, plugins = excluded.plugins,
                started_at = excluded.started_at, last_seen = excluded.last_seen
            """,
            (
                body.worker,
                json.dumps(list(body.queues)),
                json.dumps(list(body.devices)),
                json.dumps(list(body.plugins)),
                body.started_at,
                now,
            ),
        )
    return {"worker": body.worker, "seen": now}
