"""The local executor: the ``jobs`` stage, running jobs in worker processes.

Models run in separate processes (spawned, niced) so that a busy CPU, a hung plugin or a
crashing native library never slows or stops the SCP. One scheduler thread in the node turns
route matches into jobs, hands due jobs to idle workers, and enforces the per-job timeout by
killing the worker (a plugin stuck in native code cannot be interrupted any other way); a
killed or crashed worker is replaced and its job counts a failed attempt. Only this thread
writes job state; results, outbox rows and SUCCEEDED commit in one transaction. Jobs are
claimed in ``table.claim_next``'s order (urgency first) under the plugins' limits on jobs
running at once (``node.jobs.limits``), and record ``local/<host>/<worker pid>`` as their worker.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import socket
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from node.audit.trail import DISABLED, AuditTrail
from node.config import NodeConfig
from node.db import connect
from node.jobs import table
from node.jobs.limits import PluginLimits
from node.jobs.results import store_results, work_item_for
from node.jobs.table import Job, JobState
from node.jobs.work import JobRunner, WorkResult
from node.shared_types import RetryPolicy
from node.vendors.inbox import record_sent

__all__ = ["DEFAULT_RUNNER", "LocalExecutor"]

LOG = logging.getLogger(__name__)

DEFAULT_RUNNER = "node.jobs.worker:PipelineRunner"
WORKER_NICE = 19  # the SCP (nice 0) wins every contest for the CPU against models
POLL_S = 0.5
READY = "ready"  # a worker's first message: its runner is built, it takes work now
RESPAWN_DELAY_S = 5.0  # a worker that dies before it is ready is not restarted in a tight loop
STOP_GRACE_S = 3.0


def kill_grace_s(timeout_s: float) -> float:
    """How long past the job timeout the executor waits before it kills the worker: the
    worker's own deadline stops a container or isolated plugin cleanly first."""
    return min(15.0, max(2.0, 0.1 * timeout_s))


def _load_factory(path: str) -> Callable[[NodeConfig], JobRunner]:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"runner {path!r} must look like 'package.module:factory'")
    return getattr(importlib.import_module(module_name), attribute)


def worker_main(channel: Connection, runner_path: str, config: NodeConfig, nice: int) -> None:
    """A worker process: build the runner once (models stay warm), then run items until told
    to stop or until the node goes away."""
    if nice:
        os.nice(nice)  # before any thread starts, so the model's threads inherit it
    runner = _load_factory(runner_path)(config)
    channel.send(READY)
    try:
        _serve(channel, runner)
    finally:
        runner.close()


def crashed(job_id: int, exc: Exception) -> WorkResult:
    """A runner's own bug as the job's error, with the traceback that finds it (the worker's
    log is not where an operator reading ``ainode jobs`` looks); tried again, as a crash."""
    trace = "".join(traceback.format_exception(exc)).rstrip()
    return WorkResult(job_id, error=f"runner error: {exc!r}\n{trace}", retryable=True)


def _serve(channel: Connection, runner: JobRunner) -> None:
    while True:
        try:
            item = channel.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        try:
            result = runner.run(item)
        except Exception as exc:  # the runner's own bug: report it, keep the process
            LOG.exception("job %d: runner failed", item.job_id)
            result = crashed(item.job_id, exc)
        try:
            channel.send(result)
        except (BrokenPipeError, OSError):
            return


@dataclass
class _Worker:
    process: BaseProcess
    channel: Connection
    job: Job | None = None
    deadline: float | None = None  # monotonic
    ready: bool = False
    born: float = 0.0  # monotonic


class LocalExecutor:
    """Runs the job table's due jobs on ``config.jobs.workers`` worker processes."""

    name = "jobs"

    def __init__(
        self,
        config: NodeConfig,
        runner: str = DEFAULT_RUNNER,
        on_results: Callable[[], None] | None = None,
        audit: AuditTrail = DISABLED,
    ) -> None:
        self.config = config
        self.runner = runner
        self.on_results = on_results
        self.audit = audit
        self.policy = RetryPolicy(
            max_attempts=config.jobs.max_attempts,
            backoff_s=config.jobs.backoff_s,
            backoff_max_s=config.jobs.backoff_max_s,
        )
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._stop = threading.Event()
        self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._run, name="jobs", daemon=True)
        self._limits = PluginLimits(config.plugin_dirs)  # resources.max_concurrent_jobs
        self._host = socket.gethostname()

    # -- stage -----------------------------------------------------------------------------
    def start(self) -> None:
        conn = connect(self.config.storage.database_path)
        try:
            touched = table.reconcile(conn, self.policy)
        finally:
            conn.close()
        if touched:
            LOG.warning("re-queued %d job(s) left running by an earlier stop or crash", touched)
        self._thread.start()

    def wake(self) -> None:
        """New route matches or a retry: look at the table now rather than at the next poll."""
        with contextlib.suppress(OSError):
            self._wake_writer.send_bytes(b"!")

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        self._thread.join(STOP_GRACE_S + 30)
        for worker in self._workers:
            self._retire(worker)
        self._workers = []

    # -- workers -----------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        # A job allocates and frees hundreds of MB (pixels, masks, the SEG). numpy asks the
        # kernel for huge pages on such arrays, and a huge page that is not at hand costs a
        # compaction, or on a VM whose free memory goes back to the host, host faults: 0.3 to
        # 0.8 s per 300 MB first touched on the development VM, against a steady 0.12 s with
        # 4 KiB pages. Workers start with it off, unless the operator's environment says.
        os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            args=(child, self.runner, self.config, WORKER_NICE),
            name="ainode-worker",
            daemon=True,
        )
        process.start()
        child.close()
        return _Worker(process, parent, born=time.monotonic())

    def _retire(self, worker: _Worker, kill: bool = False) -> None:
        """Stop a worker process we started: politely, then by its PID."""
        if not kill:
            with contextlib.suppress(OSError):
                worker.channel.send(None)
            worker.process.join(STOP_GRACE_S if worker.job is None else 0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(STOP_GRACE_S)
        worker.channel.close()

    def _discard(self, worker: _Worker) -> None:
        """Kill a worker (hung, crashed or cancelled); demand starts a fresh one."""
        self._retire(worker, kill=True)
        self._workers.remove(worker)

    def _scale(self, conn: sqlite3.Connection) -> None:
        """Start workers when due jobs wait for them, up to ``jobs.workers``. A node that
        never gets a job never starts one; once started, a worker stays (models warm)."""
        idle = sum(1 for w in self._workers if w.job is None)
        room = self.config.jobs.workers - len(self._workers)
        if room <= 0:
            return
        due = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'QUEUED' AND next_attempt_at <= ?",
            (time.time(),),
        ).fetchone()[0]
        for _ in range(min(room, due - idle)):
            self._workers.append(self._spawn())

    # -- scheduling ------------------------------------------------------------------------
    def _run(self) -> None:
        conn = connect(self.config.storage.database_path)
        try:
            while not self._stop.is_set():
                try:
                    self._step(conn)
                except Exception:  # the scheduler must outlive any one bad step
                    LOG.exception("job scheduler: step failed; retrying")
                    self._stop.wait(POLL_S)
        finally:
            conn.close()

    def _step(self, conn: sqlite3.Connection) -> None:
        if table.create_jobs(conn):
            LOG.debug("new jobs queued")
        self._stop_cancelled(conn)
        self._scale(conn)
        for worker in list(self._workers):
            if worker.ready and worker.job is None and not self._stop.is_set():
                self._assign(conn, worker)
        busy = [w for w in self._workers if w.job is not None]
        starting = [w for w in self._workers if not w.ready]
        waitables: list = [self._wake_reader]
        for worker in busy + starting:
            waitables.append(worker.channel)
            if worker.process.is_alive():
                waitables.append(worker.process.sentinel)
        timeout = POLL_S
        deadlines = [w.deadline for w in busy if w.deadline is not None]
        if deadlines:
            timeout = max(0.0, min(timeout, min(deadlines) - time.monotonic()))
        ready = wait(waitables, timeout)
        if self._wake_reader in ready:
            while self._wake_reader.poll():
                self._wake_reader.recv_bytes()
        for worker in busy:
            self._collect(conn, worker)
        for worker in starting:
            self._check_starting(worker)

    def _check_starting(self, worker: _Worker) -> None:
        """A new worker says READY once its runner is built; one that dies first is logged
        and replaced, no sooner than RESPAWN_DELAY_S after it was started."""
        if worker.channel.poll():
            try:
                worker.ready = worker.channel.recv() == READY
            except (EOFError, OSError):
                worker.ready = False
            if worker.ready:
                return
        if not worker.process.is_alive():
            if time.monotonic() - worker.born < RESPAWN_DELAY_S:
                return
            LOG.error(
                "a worker process exited (code %s) before it was ready",
                worker.process.exitcode,
            )
            self._discard(worker)

    def _assign(self, conn: sqlite3.Connection, worker: _Worker) -> None:
        while True:
            job = table.claim_next(
                conn,
                limits=self._limits.current(),
                worker=f"local/{self._host}/{worker.process.pid}",
            )
            if job is None:
                return
            try:
                item = work_item_for(conn, job, self.config)
            except ValueError as exc:
                table.fail(conn, job.id, str(exc), retryable=False, policy=self.policy)
                LOG.error("job %d failed before it ran: %s", job.id, exc)
                continue
            break
        LOG.info(
            "job %d: %s on series %s (attempt %d)",
            job.id,
            job.plugin,
            job.series_instance_uid,
            job.attempts,
        )
        try:
            worker.channel.send(item)
        except OSError:
            table.fail(conn, job.id, "worker process gone", retryable=True, policy=self.policy)
            self._discard(worker)
            return
        worker.job = job
        # the worker's own deadline (jobs.timeout_s from the hand-off) comes first and stops a
        # container or isolated plugin cleanly; killing the worker is for code that hangs it
        timeout = self.config.jobs.timeout_s
        worker.deadline = time.monotonic() + timeout + kill_grace_s(timeout)

    def _collect(self, conn: sqlite3.Connection, worker: _Worker) -> None:
        job = worker.job
        assert job is not None
        if worker.channel.poll():
            try:
                result = worker.channel.recv()
            except (EOFError, OSError):
                result = None
            if isinstance(result, WorkResult):
                worker.job = worker.deadline = None
                self._finish(conn, job, result)
                return
        if not worker.process.is_alive():
            code = worker.process.exitcode
            self._fail(conn, job, f"worker process died (exit code {code})", retryable=True)
            self._discard(worker)
        elif worker.deadline is not None and time.monotonic() >= worker.deadline:
            timeout = self.config.jobs.timeout_s
            self._fail(conn, job, f"timed out after {timeout:g}s", retryable=True)
            self._discard(worker)

    def _fail(self, conn: sqlite3.Connection, job: Job, error: str, retryable: bool) -> None:
        state = table.fail(conn, job.id, error, retryable=retryable, policy=self.policy)
        LOG.error("job %d (%s): %s -> %s", job.id, job.plugin, error, state.value)

    def _finish(self, conn: sqlite3.Connection, job: Job, result: WorkResult) -> None:
        for event in result.audit:
            self.audit.record(event)
        if not result.ok:
            state = table.fail(
                conn,
                job.id,
                result.error or "failed",
                retryable=result.retryable,
                policy=self.policy,
                timings=result.timings,
            )
            LOG.error("job %d (%s): %s -> %s", job.id, job.plugin, result.error, state.value)
            return
        if result.vendor is not None:
            if record_sent(conn, job.id, result.vendor, dict(result.timings)):
                LOG.info("job %d (%s): awaiting the vendor's results", job.id, job.plugin)
            return
        if store_results(conn, job, result, self.config):
            LOG.info("job %d (%s) succeeded: %d result(s)", job.id, job.plugin, len(result.results))
            if self.on_results is not None:
                self.on_results()
        else:
            LOG.info("job %d finished after it was cancelled; results discarded", job.id)

    def _stop_cancelled(self, conn: sqlite3.Connection) -> None:
        running = {w.job.id: w for w in self._workers if w.job is not None}
        if not running:
            return
        marks = ",".join("?" * len(running))
        cancelled = conn.execute(
            f"SELECT id FROM jobs WHERE state = ? AND id IN ({marks})",
            (JobState.CANCELLED.value, *running),
        ).fetchall()
        for record in cancelled:
            worker = running[record["id"]]
            LOG.info("job %d cancelled while running: stopping its worker", record["id"])
            worker.job = worker.deadline = None
            self._discard(worker)
