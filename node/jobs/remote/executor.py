"""The ``celery`` executor: the ``jobs`` stage when jobs run on ``ainode worker``s.

The job table stays the record and this thread its only scheduler: it claims due jobs (in
urgency order, within each plugin's concurrency limit), publishes one ticket per attempt on
the plugin's queue, and watches the attempts in flight. Workers report over the node's HTTP
API (``node_api``): started (the timeout runs from then), finished (results committed there).
Here, a started attempt past ``jobs.timeout_s`` is revoked and fails (retried per
``max_attempts``); a cancelled one is revoked; one no worker started within
``queue_timeout_s`` is published again. At start-up every attempt left RUNNING is published
again under the same task id: a copy may run twice, but only one can commit.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from models.discovery import Catalog, discover
from models.errors import PluginError
from models.manifest import PluginManifest, RunnerKind
from node.audit.trail import DISABLED, AuditTrail
from node.config import NodeConfig
from node.db import connect, transaction
from node.jobs import table
from node.jobs.executor import kill_grace_s
from node.jobs.limits import PluginLimits
from node.jobs.remote.broker import celery_app, plugin_queue
from node.jobs.remote.protocol import (
    TASK_NAME,
    JobTicket,
    SeriesFile,
    manifest_digest,
    queue_for,
    task_id_for,
)
from node.jobs.results import work_item_for
from node.jobs.table import Job, JobState
from node.shared_types import RetryPolicy
from node.vendors.inbox import record_sent
from node.vendors.send import send_to_vendor

LOG = logging.getLogger(__name__)
POLL_S = 0.5


class CeleryExecutor:
    name = "jobs"

    def __init__(
        self,
        config: NodeConfig,
        on_results: Callable[[], None] | None = None,
        audit: AuditTrail = DISABLED,
    ) -> None:
        self.config = config
        self.on_results = on_results  # results commit in node_api, which wakes the dispatcher
        self.audit = audit
        jobs = config.jobs
        self.policy = RetryPolicy(jobs.max_attempts, jobs.backoff_s, jobs.backoff_max_s)
        self._app = celery_app(jobs.celery.broker_url(), jobs.celery.queue_type)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobs-celery", daemon=True)
        self._catalog: Catalog | None = None
        self._limits = PluginLimits(config.plugin_dirs)  # resources.max_concurrent_jobs
        self._revoked: set[tuple[int, int]] = set()
        self._vendor_sends = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vendor-send")

    def start(self) -> None:
        self._catalog = discover(self.config.plugin_dirs)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(30)
        self._vendor_sends.shutdown(wait=True, cancel_futures=True)
        self._app.close()

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        conn = connect(self.config.storage.database_path)
        try:
            self._republish_running(conn)
            while not self._stop.is_set():
                try:
                    self._step(conn)
                except Exception:  # the scheduler must outlive any one bad step
                    LOG.exception("job scheduler (celery): step failed; retrying")
                self._wake.wait(POLL_S)
                self._wake.clear()
        finally:
            conn.close()

    def _step(self, conn: sqlite3.Connection) -> None:
        table.create_jobs(conn)
        now = time.time()
        self._revoke_cancelled(conn)
        self._expire(conn, now)
        while not self._stop.is_set():
            job = table.claim_next(conn, limits=self._limits.current())
            if job is None:
                return
            self._publish(conn, job)

    # -- publishing ----------------------------------------------------------------------------
    def _ticket(self, conn: sqlite3.Connection, job: Job) -> JobTicket:
        assert self._catalog is not None
        item = work_item_for(conn, job, self.config)
        manifest = self._catalog.get(job.plugin, job.plugin_version)
        spool = self.config.storage.spool_dir
        files = tuple(
            SeriesFile(
                index=index,
                size=path.stat().st_size,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                path=str(path.relative_to(spool)),
            )
            for index, path in enumerate(item.files)
        )
        return JobTicket(
            job_id=job.id,
            job_key=item.job_key,
            attempt=job.attempts,
            study_instance_uid=job.study_instance_uid,
            study_version=job.study_version,
            series_instance_uid=job.series_instance_uid,
            plugin=job.plugin,
            plugin_version=manifest.version,
            manifest_sha256=manifest_digest(manifest.directory, manifest.version),
            output_kinds=item.output_kinds,
            predecessor_sr=item.predecessor_sr,
            outputs=self.config.outputs.model_dump(mode="json"),
            timeout_s=self.config.jobs.timeout_s,
            files=files,
        )

    def _publish(self, conn: sqlite3.Connection, job: Job) -> None:
        assert self._catalog is not None
        try:
            manifest = self._catalog.get(job.plugin, job.plugin_version)
        except KeyError as exc:
            state = table.fail(conn, job.id, str(exc), retryable=False, policy=self.policy)
            LOG.error("job %d cannot run: %s -> %s", job.id, exc, state.value)
            return
        if manifest.runner is RunnerKind.DICOM_NODE:  # a network send, no GPU: the node does it
            self._vendor_sends.submit(self._send_to_vendor, job, manifest)
            return
        try:
            ticket = self._ticket(conn, job)
        except (ValueError, KeyError, PluginError, OSError) as exc:
            state = table.fail(conn, job.id, str(exc), retryable=False, policy=self.policy)
            LOG.error("job %d cannot be published: %s -> %s", job.id, exc, state.value)
            return
        with transaction(conn):  # no worker yet: the timeout starts when one reports
            conn.execute("UPDATE jobs SET worker = NULL WHERE id = ?", (job.id,))
        try:
            self._send(ticket)
        except Exception as exc:  # broker down: the attempt never left, give it back
            with transaction(conn):
                conn.execute(
                    "UPDATE jobs SET state = 'QUEUED', attempts = attempts - 1, "
                    "next_attempt_at = ?, error = ? WHERE id = ? AND state = 'RUNNING'",
                    (time.time() + max(1.0, self.policy.backoff_s), f"broker: {exc}", job.id),
                )
            LOG.error("job %d: cannot publish to the broker (%s); trying again", job.id, exc)
            return
        LOG.info("job %d: %s published to %s (attempt %d)", job.id, job.plugin,
                 queue_for(job.plugin), job.attempts)  # fmt: skip

    def _send(self, ticket: JobTicket) -> None:
        self._app.send_task(
            TASK_NAME,
            args=[ticket.model_dump(mode="json")],
            task_id=task_id_for(ticket.job_id, ticket.attempt),
            queue=plugin_queue(ticket.plugin, self.config.jobs.celery.queue_type),
            # the worker's pool kills a job's child past this; the node's own deadline follows
            time_limit=ticket.timeout_s + kill_grace_s(ticket.timeout_s),
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.5, "interval_step": 1},
        )

    def _republish_running(self, conn: sqlite3.Connection) -> None:
        running = table.list_jobs(conn, JobState.RUNNING)
        for job in running:
            try:
                self._send(self._ticket(conn, job))
            except Exception as exc:
                LOG.error("job %d: cannot publish again after a restart: %s", job.id, exc)
        if running:
            LOG.warning("published %d job(s) left running by an earlier stop again", len(running))

    def _send_to_vendor(self, job: Job, manifest: PluginManifest) -> None:
        """A vendor's own node runs this product: send it the series from here, as the local
        executor's worker would, and let ``node.vendors`` wait for what comes back."""
        conn = connect(self.config.storage.database_path)
        try:
            result = send_to_vendor(work_item_for(conn, job, self.config), manifest, self.config)
            for event in result.audit:
                self.audit.record(event)
            if result.vendor is not None and result.ok:
                record_sent(conn, job.id, result.vendor, dict(result.timings))
                LOG.info("job %d (%s): awaiting the vendor's results", job.id, job.plugin)
            else:
                state = table.fail(
                    conn, job.id, result.error or "vendor send failed",
                    retryable=result.retryable, policy=self.policy,
                )  # fmt: skip
                LOG.error("job %d (%s): %s -> %s", job.id, job.plugin, result.error, state.value)
        except Exception:
            LOG.exception("job %d: sending to the vendor failed", job.id)
            table.fail(conn, job.id, "vendor send crashed", retryable=True, policy=self.policy)
        finally:
            conn.close()

    # -- attempts in flight --------------------------------------------------------------------
    def _expire(self, conn: sqlite3.Connection, now: float) -> None:
        timeout = self.config.jobs.timeout_s
        for record in conn.execute(
            "SELECT id, attempts, started_at, worker FROM jobs WHERE state = 'RUNNING'"
        ).fetchall():
            started = record["started_at"] or now
            if record["worker"] is not None and now > started + timeout + kill_grace_s(timeout):
                self._revoke(record["id"], record["attempts"])
                state = table.fail(
                    conn, record["id"], f"timed out after {timeout:g}s on {record['worker']}",
                    retryable=True, policy=self.policy,
                )  # fmt: skip
                LOG.error("job %d timed out on %s -> %s", record["id"], record["worker"], state)
            elif (
                record["worker"] is None and now > started + self.config.jobs.celery.queue_timeout_s
            ):
                job = table.get_job(conn, record["id"])
                if job is not None:
                    LOG.warning("job %d: no worker took it in time; publishing again", job.id)
                    with transaction(conn):
                        conn.execute("UPDATE jobs SET started_at = ? WHERE id = ?", (now, job.id))
                    self._send(self._ticket(conn, job))

    def _revoke_cancelled(self, conn: sqlite3.Connection) -> None:
        for record in conn.execute(
            "SELECT id, attempts FROM jobs WHERE state = 'CANCELLED' AND worker IS NOT NULL "
            "AND finished_at > ?",
            (time.time() - 60,),
        ).fetchall():
            if (record["id"], record["attempts"]) not in self._revoked:
                self._revoke(record["id"], record["attempts"])

    def _revoke(self, job_id: int, attempt: int) -> None:
        self._revoked.add((job_id, attempt))
        try:
            self._app.control.revoke(task_id_for(job_id, attempt), terminate=True, signal="SIGKILL")
        except Exception as exc:
            LOG.warning("job %d: cannot revoke attempt %d: %s", job_id, attempt, exc)
