"""``ainode worker``: one Celery worker process (one GPU slot, or the CPU) that runs the jobs
of the plugins installed here, warm, one at a time.

The pool is prefork with one child: the child keeps the plugins loaded between jobs, and the
parent can kill it when a job passes its time limit (the node sets it per message) or is
revoked, and start a fresh one. The worker owns only its data folder: series files come from
the node over HTTP (or a shared mount), result files go back the same way, and the node
alone writes the job table.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import traceback
from pathlib import Path

from celery import Celery
from celery.signals import worker_process_init

from models.discovery import discover
from node.config import DeviceConfig, JobsConfig, NodeConfig, StorageConfig
from node.jobs.remote.broker import celery_app, plugin_queue
from node.jobs.remote.client import AttemptGone, NodeClient, NodeUnreachable
from node.jobs.remote.protocol import (
    TASK_NAME,
    Finished,
    Heartbeat,
    JobTicket,
    ResultUpload,
    Started,
    manifest_digest,
)
from node.jobs.remote.settings import Transfer, WorkerConfig
from node.jobs.work import WorkItem
from node.output_settings import OutputsConfig

LOG = logging.getLogger(__name__)

_CONFIG: WorkerConfig | None = None  # set before the pool forks
_RUNTIME: WorkerRuntime | None = None  # one per child process, built on its first job


def node_config_for(config: WorkerConfig, ticket: JobTicket | None = None) -> NodeConfig:
    """The node settings the job pipeline reads, as this worker has them; how results are
    built comes from the node with each ticket, so every worker builds them alike."""
    update = {}
    if ticket is not None:
        update = {
            "outputs": OutputsConfig.model_validate(ticket.outputs),
            "jobs": JobsConfig(timeout_s=ticket.timeout_s),
        }
    return NodeConfig(
        storage=StorageConfig(data_dir=config.data_dir),
        plugin_dirs=config.plugin_dirs,
        devices=DeviceConfig(gpus=config.devices.gpus, slots_per_gpu=config.devices.slots_per_gpu),
        containers=config.containers,
    ).model_copy(update=update)


class WorkerRuntime:
    """Runs tickets in this process with plugins kept warm."""

    def __init__(self, config: WorkerConfig) -> None:
        from node.jobs.worker import PipelineRunner

        self.config = config
        self.client = NodeClient(config.node_url, config.token(), config.ca_file)
        self.runner = PipelineRunner(node_config_for(config), record_shadow=False)

    def run(self, ticket: JobTicket) -> str:
        base = f"/jobs/{ticket.job_id}/attempts/{ticket.attempt}"
        try:
            self.client.post(f"{base}/started", Started(worker=self.config.name))
        except AttemptGone as exc:
            LOG.info("job %d attempt %d: the node no longer wants it (%s)", ticket.job_id,
                     ticket.attempt, exc)  # fmt: skip
            return "dropped"
        refusal = self._refusal(ticket)
        if refusal is not None:
            return self._finish(base, Finished(worker=self.config.name, error=refusal))
        work = self.config.data_dir / "jobs" / f"job-{ticket.job_id}-attempt-{ticket.attempt}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            return self._run(ticket, base, work)
        except AttemptGone:
            return "dropped"
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def report_crash(self, ticket: JobTicket, trace: str) -> str:
        """Tell the node the attempt crashed here, with the traceback, so it is retried now
        rather than when the node's deadline passes."""
        base = f"/jobs/{ticket.job_id}/attempts/{ticket.attempt}"
        error = f"runner error on {self.config.name}: {trace[-4000:]}"
        try:
            return self._finish(
                base, Finished(worker=self.config.name, error=error, retryable=True)
            )
        except NodeUnreachable:
            return "unreachable"

    def _refusal(self, ticket: JobTicket) -> str | None:
        catalog = self.runner.host.catalog
        mine = [m for m in catalog.versions(ticket.plugin) if m.version == ticket.plugin_version]
        if not mine:
            have = ", ".join(m.version for m in catalog.versions(ticket.plugin)) or "none"
            return (
                f"worker {self.config.name} has no {ticket.plugin} {ticket.plugin_version} "
                f"(installed: {have}): install the node's version on the worker"
            )
        if manifest_digest(mine[0].directory, mine[0].version) != ticket.manifest_sha256:
            return (
                f"worker {self.config.name}: {ticket.plugin} {ticket.plugin_version} differs "
                "from the node's manifest (plugin.yaml): install the same files on both"
            )
        return None

    def _run(self, ticket: JobTicket, base: str, work: Path) -> str:
        series = self._series(ticket, work)
        if self.config.transfer is Transfer.SHARED:
            assert self.config.shared is not None
            outputs_root = self.config.shared.outputs_dir
        else:
            outputs_root = work / "outputs"
        output_dir = outputs_root / f"job-{ticket.job_id}" / f"attempt-{ticket.attempt}"
        output_dir.mkdir(parents=True, exist_ok=True)
        item = WorkItem(
            job_id=ticket.job_id,
            job_key=ticket.job_key,
            attempt=ticket.attempt,
            study_instance_uid=ticket.study_instance_uid,
            study_version=ticket.study_version,
            series_instance_uid=ticket.series_instance_uid,
            plugin=ticket.plugin,
            plugin_version=ticket.plugin_version,
            files=series,
            output_dir=output_dir,
            outputs_root=outputs_root,
            output_kinds=ticket.output_kinds,
            predecessor_sr=ticket.predecessor_sr,
        )
        self.runner.config = node_config_for(self.config, ticket)
        result = self.runner.run(item)
        if not result.ok:
            finished = Finished(
                worker=self.config.name,
                timings=dict(result.timings),
                error=result.error,
                retryable=result.retryable,
            )
            return self._finish(base, finished)
        uploads = []
        for file in result.results:
            path = outputs_root / file.path
            if self.config.transfer is Transfer.HTTP:
                self.client.upload(ticket.job_id, ticket.attempt, path.name, path)
            uploads.append(
                ResultUpload(
                    name=path.name,
                    sop_instance_uid=file.sop_instance_uid,
                    sop_class_uid=file.sop_class_uid,
                    kind=file.kind,
                )
            )
        finished = Finished(
            worker=self.config.name, results=tuple(uploads), timings=dict(result.timings)
        )
        return self._finish(base, finished)

    def _series(self, ticket: JobTicket, work: Path) -> tuple[Path, ...]:
        if self.config.transfer is Transfer.SHARED:
            assert self.config.shared is not None
            return tuple(self.config.shared.spool_dir / str(f.path) for f in ticket.files)
        folder = work / "series"
        folder.mkdir(parents=True)
        started = time.monotonic()
        paths = []
        for file in ticket.files:
            target = folder / f"{file.index:06d}.dcm"
            self.client.fetch(ticket.job_id, ticket.attempt, file, target)
            paths.append(target)
        LOG.info("job %d: %d series file(s) fetched in %.2fs", ticket.job_id, len(paths),
                 time.monotonic() - started)  # fmt: skip
        return tuple(paths)

    def _finish(self, base: str, finished: Finished) -> str:
        try:
            answer = self.client.post(f"{base}/finished", finished)
        except AttemptGone:
            return "dropped"
        return str(answer.get("state", "?"))


def _runtime() -> WorkerRuntime:
    global _RUNTIME
    if _RUNTIME is None:
        assert _CONFIG is not None, "the worker's configuration is set before jobs run"
        _RUNTIME = WorkerRuntime(_CONFIG)
    return _RUNTIME


@worker_process_init.connect
def _fresh_child(**_: object) -> None:
    """A new pool child (a killed one's replacement too) builds its own plugins."""
    global _RUNTIME
    _RUNTIME = None


def worker_app(config: WorkerConfig) -> tuple[Celery, list[str]]:
    """The Celery app with the one task, and the queues of the plugins installed here."""
    global _CONFIG
    _CONFIG = config
    app = celery_app(config.broker_url(), config.queue_type)

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
    def run_job(ticket: dict) -> str:
        parsed = JobTicket.model_validate(ticket)
        LOG.info("job %d attempt %d: %s %s", parsed.job_id, parsed.attempt, parsed.plugin,
                 parsed.plugin_version)  # fmt: skip
        try:
            return _runtime().run(parsed)
        except NodeUnreachable as exc:  # the node times the attempt out and publishes it again
            LOG.error("job %d: the node is unreachable: %s", parsed.job_id, exc)
            return "unreachable"
        except Exception:  # a bug in the runner: the job's error carries it, and it is retried
            LOG.exception("job %d: the runner crashed", parsed.job_id)
            return _runtime().report_crash(parsed, traceback.format_exc())

    names = sorted({m.name for m in discover(config.plugin_dirs).manifests})
    app.conf.task_queues = [plugin_queue(name, config.queue_type) for name in names]
    return app, names


def _devices(config: WorkerConfig) -> tuple[str, ...]:
    return tuple(f"cuda:{gpu}" for gpu in config.devices.gpus) or ("cpu",)


def _heartbeats(config: WorkerConfig, queues: list[str], stop: threading.Event) -> None:
    client = NodeClient(config.node_url, config.token(), config.ca_file, deadline_s=5)
    catalog = discover(config.plugin_dirs)
    beat = Heartbeat(
        worker=config.name,
        queues=tuple(queues),
        devices=_devices(config),
        plugins=tuple(m.key for m in catalog.manifests),
        started_at=time.time(),
    )
    while not stop.is_set():
        try:
            client.post("/heartbeat", beat)
        except Exception as exc:  # the node may be restarting: say so, keep beating
            LOG.warning("heartbeat to %s failed: %s", config.node_url, exc)
        stop.wait(config.heartbeat_s)


def serve(config: WorkerConfig) -> int:
    """Run the worker until SIGTERM (Celery's warm shutdown: the running job finishes)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    app, names = worker_app(config)
    if not names:
        LOG.error("no plugins under %s: this worker would serve no queue", config.plugin_dirs)
        return 2
    queues = [plugin_queue(name, config.queue_type).name for name in names]
    stop = threading.Event()
    beating = threading.Thread(
        target=_heartbeats, args=(config, queues, stop), name="heartbeat", daemon=True
    )
    beating.start()
    LOG.info("worker %s: queues %s, devices %s", config.name, ", ".join(queues),
             ", ".join(_devices(config)))  # fmt: skip
    try:
        worker = app.Worker(
            hostname=config.name,
            queues=queues,
            concurrency=1,
            pool="prefork",
            prefetch_multiplier=1,
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            loglevel="WARNING",
        )
        worker.start()
        return int(worker.exitcode or 0)
    finally:
        stop.set()
